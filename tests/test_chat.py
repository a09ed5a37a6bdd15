"""The chat loop: answers, history, /reset, /system, the context window, Ctrl-C, plain completion, and the
`minimind chat` command driven through piped stdin."""

import io
import json
import subprocess
import sys

import pytest
from helpers import TOOL_ANSWER, TOOL_QUESTION, TOOL_REASONING, tiny_model, tool_model, varied

from minimind.infer.chat import ChatSession, completion_reason, run_chat
from minimind.infer.generate import generate_text
from minimind.tokenizer import load_tokenizer, save_tokenizer

GREEDY = dict(max_new_tokens=8, temperature=0.0)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def model():
    m = varied(tiny_model(0, hidden=64, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=512).eval())
    return m


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, tokenizer):
    out = tmp_path_factory.mktemp("chatmodel")
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    return out


def expected_answer(model, tokenizer, messages, max_new_tokens=8):
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    return generate_text(model, tokenizer, [ids], max_new_tokens)[0]


def chat(session, lines, **kw):
    out = io.StringIO()
    run_chat(session, input=io.StringIO("".join(line + "\n" for line in lines)), output=out, **kw)
    return out.getvalue()  # an answer may hold newlines itself: compare whole transcripts


def test_chat_answers_keeps_history_and_resets(model, tokenizer):
    session = ChatSession(model, tokenizer, max_new_tokens=8)
    out = chat(session, ["Hello", "How are you?", "/reset", "Hello", "/exit", "never read"])
    a1 = expected_answer(model, tokenizer, [{"role": "user", "content": "Hello"}])
    a2 = expected_answer(model, tokenizer, [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": a1},
                                            {"role": "user", "content": "How are you?"}])
    assert out == f"{a1}\n{a2}\n(history cleared)\n{a1}\n"  # the second answer saw the first turn; /reset forgot it
    assert [m["role"] for m in session.history] == ["user", "assistant"]


def test_system_prompt_and_speed(model, tokenizer):
    session = ChatSession(model, tokenizer, max_new_tokens=8)
    out = chat(session, ["/system Answer in French.", "Hello", "/speed", "/reset", "Hello", "/bogus"])
    answer = expected_answer(model, tokenizer, [{"role": "system", "content": "Answer in French."},
                                                {"role": "user", "content": "Hello"}])
    assert out.startswith(f"(system prompt: Answer in French.)\n{answer}\n(tokens/s after each answer: on)\n"
                          f"(history cleared)\n{answer}\n[")  # /reset keeps the system prompt
    assert "tokens/s, prompt" in out and "(unknown command /bogus" in out


def test_oldest_turns_dropped_when_the_context_is_full(model, tokenizer):
    session = ChatSession(model, tokenizer, context=80, max_new_tokens=8)
    for i in range(8):
        for _ in session.reply(f"message number {i}, with some words to fill the window"):
            pass
    ids = session.prompt_ids("the last one")
    assert len(ids) + 8 <= 80
    assert session.dropped > 0
    assert session.history[0]["content"] != "message number 0, with some words to fill the window"
    assert session.history[-2]["content"].startswith("message number 7")  # the newest turns stay
    with pytest.raises(ValueError, match="too long"):
        session.prompt_ids("word " * 200)


def test_ctrl_c_stops_the_answer_not_the_session(model, tokenizer):
    class Interrupting(io.StringIO):
        """Raises KeyboardInterrupt on the 3rd write of the first answer, as Ctrl-C would."""
        writes = 0

        def write(self, s):
            self.writes += 1
            if self.writes == 3:
                raise KeyboardInterrupt
            return super().write(s)

    session = ChatSession(model, tokenizer, max_new_tokens=8)
    out = Interrupting()
    run_chat(session, input=io.StringIO("Hello\nHello again\n"), output=out)
    assert " [stopped]\n" in out.getvalue()
    assert len(session.history) == 4  # the session went on to the second message
    first = session.history[1]["content"]
    assert out.getvalue().startswith(first + " [stopped]\n")  # what was shown stays in the history


def test_plain_completion_for_pretrain_models_and_no_template(model, tokenizer, model_dir, tmp_path):
    assert completion_reason(model_dir, tokenizer) is None
    (tmp_path / "args.json").write_text(json.dumps({"stage": "pretrain"}))
    assert "pretrain-only" in completion_reason(tmp_path)
    no_template = tmp_path / "plain"
    save_tokenizer(tokenizer, no_template)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template")
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    assert "no chat template" in completion_reason(no_template)

    session = ChatSession(model, tokenizer, chat=False, max_new_tokens=8)
    out = chat(session, ["In the beginning", "In the beginning"])
    expected = generate_text(model, tokenizer, ["In the beginning"], 8)[0]
    assert out == f"{expected}\n{expected}\n" and session.history == []  # no history in completion mode


def test_chat_command_through_piped_stdin(model, tokenizer, model_dir):
    r = subprocess.run([sys.executable, "-m", "minimind", "chat", str(model_dir), "--temperature", "0",
                        "--max_new_tokens", "8", "--device", "cpu"],
                       input="Hello\nHow are you?\n/reset\nHello\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    a1 = expected_answer(model, tokenizer, [{"role": "user", "content": "Hello"}])
    a2 = expected_answer(model, tokenizer, [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": a1},
                                            {"role": "user", "content": "How are you?"}])
    banner, _, transcript = r.stdout.partition("\n")
    assert banner.startswith("minimind chat:") and "/reset" in banner
    assert transcript == f"{a1}\n{a2}\n(history cleared)\n{a1}\n"


def test_chat_shows_thinking_runs_tools_and_keeps_the_turn():
    model = tool_model()
    tokenizer = load_tokenizer()
    session = ChatSession(model, tokenizer, tools=["calculator"], max_new_tokens=60)
    out = chat(session, [TOOL_QUESTION, "/think", "What is 6 * 9?"])
    assert out == (f"[thinking] {TOOL_REASONING}\n"
                   '-> calculator({"expression": "12 * 7"}) = 84\n'
                   f"{TOOL_ANSWER}\n"
                   "(thinking: hidden)\n"
                   '-> calculator({"expression": "6 * 9"}) = 54\n'
                   "6 * 9 = 54.\n")
    assert [m["role"] for m in session.history] == ["user", "assistant", "tool", "assistant"] * 2
    call = session.history[1]
    assert call["reasoning_content"] == TOOL_REASONING and call["content"] == ""
    assert call["tool_calls"][0]["function"] == {"name": "calculator", "arguments": {"expression": "12 * 7"}}
    # without --tools nothing is offered: the calls are not read and nothing runs
    plain = ChatSession(model, tokenizer, max_new_tokens=30)
    assert "->" not in chat(plain, [TOOL_QUESTION]) and [m["role"] for m in plain.history] == ["user", "assistant"]
