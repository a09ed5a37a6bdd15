"""The built-in tool-use set (minimind/data/tooluse.py): valid SFT records, real tool results, a fixed held-out
split, and `minimind data tooluse`."""

import json

from minimind.cli import main
from minimind.data.messages import parse_conversation
from minimind.data.tooluse import calculator_questions, in_val, tool_conversations
from minimind.tools import run_tool


def test_records_are_valid_conversations_with_real_results():
    records = tool_conversations("train", 300)
    assert records == tool_conversations("train", 300)  # deterministic
    names = set()
    for i, record in enumerate(records):
        messages = parse_conversation(record, f"tooluse:{i}")
        offered = {t["function"]["name"] for t in record["tools"]}
        if len(messages) == 2:  # a greeting: no tool needed
            continue
        user, call, result, answer = messages
        assert not in_val(user["content"])
        fn = call["tool_calls"][0]["function"]
        names.add(fn["name"])
        assert fn["name"] in offered and len(offered) == 2
        assert result["content"] == run_tool(fn["name"], fn["arguments"]) and not result["content"].startswith("error")
        assert result["content"] in answer["content"]
    assert names == {"calculator", "convert_units", "days_between", "add_days", "weekday"}


def test_held_out_questions_never_appear_in_training():
    train = {r["messages"][0]["content"] for r in tool_conversations("train", 3000)}
    val = [r["messages"][0]["content"] for r in tool_conversations("val", 100) if len(r["messages"]) > 2]
    assert val and all(in_val(q) and q not in train for q in val)
    questions = calculator_questions(20)
    assert len({q for q, _, _ in questions}) == 20 and not {q for q, _, _ in questions} & train


def test_cli_writes_the_set(tmp_path, capsys):
    out = tmp_path / "tooluse.jsonl"
    main(["data", "tooluse", "--out", str(out), "--n", "50"])
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 50 and json.loads(lines[0]) == tool_conversations("train", 1)[0]
    assert "50 tool-use conversations" in capsys.readouterr().out


def test_call_rate_reads_what_the_model_writes(one_thread):
    """A random model writes no call; the rate is measured on the held-out questions, greedily."""
    from helpers import tiny_model

    from minimind.eval.tooluse import calculator_call_rate
    from minimind.tokenizer import load_tokenizer

    rate = calculator_call_rate(tiny_model(max_position_embeddings=512).eval(), load_tokenizer(), n=4,
                                max_new_tokens=4)
    assert rate == {"questions": 4, "well_formed": 0.0, "correct": 0.0}


def test_eval_tasks_tooluse_prints_the_rate(tmp_path, capsys, one_thread):
    """`minimind eval MODEL --tasks tooluse` loads the model and prints its held-out calculator-call rate."""
    import json as json_module

    from helpers import tiny_model

    from minimind.cli import main
    from minimind.tokenizer import load_tokenizer, save_tokenizer

    model = tiny_model(max_position_embeddings=512)
    model.save_pretrained(tmp_path)
    save_tokenizer(load_tokenizer(), tmp_path)
    main(["eval", str(tmp_path), "--tasks", "tooluse", "--limit", "3", "--json"])
    out = json_module.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["tooluse"]["questions"] == 3 and 0.0 <= out["tooluse"]["correct"] <= out["tooluse"]["well_formed"]
