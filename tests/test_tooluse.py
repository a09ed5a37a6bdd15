"""The built-in tool-use set (minimind/data/tooluse.py): valid SFT records with real results, both languages,
multi-turn chats and no-tool answers, phrasings and questions held out from training; the agent RL prompts; the
tool-use evaluation (minimind/eval/tooluse.py) in-process, through a real server, and on the command line."""

import json
import re

import pytest

from minimind.cli import main
from minimind.data.messages import parse_conversation
from minimind.data.tooluse import (
    SEEN,
    SEEN_PROBLEMS,
    UNSEEN,
    UNSEEN_PROBLEMS,
    agent_prompts,
    eval_questions,
    in_val,
    tool_conversations,
)
from minimind.tools import run_tool


def pattern(template: str) -> re.Pattern:
    """A template as a regex that matches every question made from it."""
    parts = re.split(r"\{[qab]\}", template)
    return re.compile(".+".join(re.escape(p) for p in parts) + r"\Z", re.S)


def matches(question: str, templates: dict, problems: dict) -> bool:
    every = [t for lang in templates for t in templates[lang]] + [t for lang in problems for t, _ in problems[lang]]
    return any(pattern(t).match(question) for t in every)


TRAIN = tool_conversations("train", 3000)


def test_records_are_valid_conversations_with_real_results():
    assert TRAIN[:300] == tool_conversations("train", 300)  # deterministic
    names, kinds, langs = set(), set(), set()
    for i, record in enumerate(TRAIN):
        messages = parse_conversation(record, f"tooluse:{i}")
        offered = {t["function"]["name"] for t in record["tools"]}
        if len(messages) == 2:  # no tool needed: answered directly
            kinds.add("no tool")
            assert "tool_calls" not in messages[1]
            continue
        kinds.add("multi-turn" if len(messages) == 8 else "one question")
        needed = {m["tool_calls"][0]["function"]["name"] for m in messages if m.get("tool_calls")}
        assert needed <= offered and len(offered) <= len(needed) + 1  # what is needed, perhaps one other
        for user, call, result, answer in zip(*[iter(messages)] * 4):
            assert not in_val(user["content"])
            langs.add("zh" if re.search(r"[\u4e00-\u9fff]", user["content"]) else "en")
            fn = call["tool_calls"][0]["function"]
            names.add(fn["name"])
            assert result["content"] == run_tool(fn["name"], fn["arguments"])
            assert not result["content"].startswith("error")
            assert result["content"] in answer["content"]
    assert names == {"calculator", "convert_units", "days_between", "add_days", "weekday"}
    assert kinds == {"no tool", "one question", "multi-turn"} and langs == {"en", "zh"}


def test_arithmetic_covers_the_operations_numbers_and_words():
    calls = [m["tool_calls"][0]["function"] for r in TRAIN for m in r["messages"] if m.get("tool_calls")]
    expressions = [json.loads(c["arguments"])["expression"] for c in calls if c["name"] == "calculator"]
    questions = [r["messages"][0]["content"] for r in TRAIN]
    for op in "+-*/":
        assert any(f" {op} " in e for e in expressions)
    assert any("(" in e for e in expressions) and any("." in e for e in expressions)
    assert any(re.search(r"(^|[ (])-\d", e) for e in expressions)  # a negative number
    assert {len(n) for e in expressions for n in re.findall(r"\d+", e)} >= {1, 2, 3, 4}
    for word in ("times", "plus", "乘以", "减去"):
        assert any(word in q for q in questions)


def test_unseen_phrasings_and_held_out_questions_never_appear_in_training():
    questions = [m["content"] for r in TRAIN for m in r["messages"] if m["role"] == "user"]
    assert sum(matches(q, SEEN, SEEN_PROBLEMS) for q in questions) > len(questions) / 2
    assert not any(matches(q, UNSEEN, UNSEEN_PROBLEMS) for q in questions)
    held_out = eval_questions(200)
    assert len({q["question"] for q in held_out}) == 200 and not {q["question"] for q in held_out} & set(questions)
    for q in held_out:
        assert in_val(q["question"]) and q["answer"] == run_tool("calculator", {"expression": q["expression"]})
        assert all(2 <= len(n) <= 3 for n in re.findall(r"\d+", q["expression"]))
        kind = (UNSEEN, UNSEEN_PROBLEMS) if q["phrasing"] == "unseen" else (SEEN, SEEN_PROBLEMS)
        assert matches(q["question"], *kind)
    assert [sum(q["phrasing"] == p and q["lang"] == lang for q in held_out) for p in ("seen", "unseen")
            for lang in ("en", "zh")] == [50, 50, 50, 50]


def test_agent_prompts_are_training_phrasings_with_their_answers():
    prompts = agent_prompts(200)
    assert prompts == agent_prompts(200)
    for p in prompts:
        assert not in_val(p["prompt"]) and matches(p["prompt"], SEEN, SEEN_PROBLEMS)
        assert float(p["answer"]) == float(p["answer"]) and not p["answer"].startswith("error")


def test_cli_writes_the_set_and_the_prompts(tmp_path, capsys):
    out = tmp_path / "tooluse.jsonl"
    main(["data", "tooluse", "--out", str(out), "--n", "50"])
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 50 and json.loads(lines[0]) == tool_conversations("train", 1)[0]
    assert "50 tool-use conversations" in capsys.readouterr().out
    main(["data", "tooluse", "--out", str(out), "--n", "5", "--prompts"])
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == agent_prompts(5)


# --- the evaluation ------------------------------------------------------------------------------------------------

SIX_NINE = {"question": "What is 6 * 9?", "answer": "54", "lang": "en", "phrasing": "seen", "expression": "6 * 9"}


def test_the_engine_runs_the_calculator_between_turns(one_thread):
    """The test model calls the calculator for "What is 6 * 9?" and, given 54, answers "6 * 9 = 54."."""
    from helpers import tool_model

    from minimind.eval.tooluse import agent_turns, score
    from minimind.tokenizer import load_tokenizer

    (turns,) = agent_turns(tool_model(), load_tokenizer(), [SIX_NINE["question"]])
    assert turns["calls"] == [{"name": "calculator", "arguments": {"expression": "6 * 9"}, "result": "54"}]
    assert turns["final"] == "6 * 9 = 54." and turns["first_calls"] == 1
    report = score([SIX_NINE, {**SIX_NINE, "answer": "55", "phrasing": "unseen"}], [turns, turns])
    assert report["all"] == {"questions": 2, "well_formed": 1.0, "right_call": 0.5, "exact": 0.5}
    assert report["seen"]["exact"] == 1.0 and report["unseen"]["exact"] == 0.0
    assert report["failures"] == [{"question": "What is 6 * 9?", "answer": "55", "call": {"expression": "6 * 9"},
                                   "final": "6 * 9 = 54."}]


def test_score_reads_what_a_model_wrote():
    from minimind.eval.tooluse import score

    no_call = {"calls": [], "first_text": "54", "first_calls": 0, "final": "54"}
    bad_call = {"calls": [], "first_text": "<tool_call>\n{not json\n</tool_call>", "first_calls": 0, "final": ""}
    wrong = {"calls": [{"name": "calculator", "arguments": {"expression": "6 * 8"}, "result": "48"}],
             "first_text": "", "first_calls": 1, "final": "6 * 8 = 48, so 54?"}
    report = score([SIX_NINE] * 3, [no_call, bad_call, wrong])
    assert report["all"] == {"questions": 3, "well_formed": pytest.approx(1 / 3, abs=1e-4), "right_call": 0.0,
                             "exact": pytest.approx(2 / 3, abs=1e-4)}  # the last number counts, even without a call


def test_the_served_model_through_the_openai_client(tmp_path, capsys, one_thread):
    """--base_url: the same questions through a real server, the client running the calculator."""
    from helpers import tool_model
    from test_serve import start_server

    from minimind.eval.tooluse import served_turns
    from minimind.serve.app import create_app
    from minimind.tokenizer import load_tokenizer

    server, thread, url = start_server(create_app(tool_model(), load_tokenizer(), model_name="tools"))
    try:
        (turns,) = served_turns(url + "/v1", [SIX_NINE["question"]], model="tools")
        assert turns["calls"] == [{"name": "calculator", "arguments": {"expression": "6 * 9"}, "result": "54"}]
        assert turns["final"] == "6 * 9 = 54." and turns["first_calls"] == 1
        out = tmp_path / "served.json"
        main(["eval", "tools", "--tasks", "tooluse", "--limit", "4", "--base_url", url + "/v1",
              "--output_path", str(out)])
        table = capsys.readouterr().out
        assert "held-out arithmetic questions" in table and "unseen" in table
        saved = json.loads(out.read_text(encoding="utf-8"))
        assert saved["base_url"] == url + "/v1" and saved["tooluse"]["all"]["questions"] == 4
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_eval_tasks_tooluse_prints_the_report(tmp_path, capsys, one_thread):
    """`minimind eval MODEL --tasks tooluse` loads the model and reports on the held-out questions; a random model
    gets none right."""
    from helpers import tiny_model

    from minimind.tokenizer import load_tokenizer, save_tokenizer

    model = tiny_model(max_position_embeddings=512)
    model.save_pretrained(tmp_path)
    save_tokenizer(load_tokenizer(), tmp_path)
    main(["eval", str(tmp_path), "--tasks", "tooluse", "--limit", "4", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tooluse"]
    assert out["all"]["questions"] == 4 and out["all"]["right_call"] == 0.0 and out["all"]["exact"] == 0.0
    assert out["seen"]["questions"] == out["unseen"]["questions"] == 2
