"""One chat format for training data and the server (`minimind.data.messages`): the same messages read the same way
by the SFT/DPO reader and by the server's request model, and the same mistakes refused with the same words, each
side naming its own place (`path:line: conversations[0]...`, param `messages[0]...`)."""

import json

import pytest

from minimind.data.datasets import SFTDataset
from minimind.data.files import DataError
from minimind.data.messages import parse_conversation, parse_pair
from minimind.serve.protocol import APIError, ChatCompletionRequest, read_request
from minimind.tokenizer import load_tokenizer

PARTS = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in English."}]

OPENAI_STYLE = [  # developer role, list-of-parts content, a name
    {"role": "developer", "content": PARTS},
    {"role": "user", "content": "Hello", "name": "ann"},
    {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]},
]

READ = [
    {"role": "system", "content": "Be brief.\nAnswer in English."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi."},
]


def server_reads(messages):
    return read_request(ChatCompletionRequest, {"messages": messages}).messages


def test_data_and_server_read_messages_alike():
    assert parse_conversation({"messages": OPENAI_STYLE}, "x.jsonl:1") == READ
    assert parse_conversation({"conversations": OPENAI_STYLE}, "x.jsonl:1") == READ
    assert server_reads(OPENAI_STYLE) == READ
    chosen, rejected = parse_pair({"prompt": OPENAI_STYLE[:2], "chosen": "Hi.", "rejected": OPENAI_STYLE[2:]}, "x:1")
    assert chosen == rejected == READ
    assert server_reads([{"role": "user", "content": []}]) == [{"role": "user", "content": ""}]


def test_sft_tokens_are_what_the_server_renders(tmp_path):
    tok = load_tokenizer()
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"messages": OPENAI_STYLE}) + "\n" + json.dumps({"messages": READ}) + "\n")
    trained = SFTDataset(path, tok, 256)[0]["input_ids"].tolist()
    served = tok.apply_chat_template(server_reads(OPENAI_STYLE[:2]), tokenize=False, add_generation_prompt=True)
    assert tok.decode(trained).startswith(served)
    assert "<|im_start|>system\nBe brief.\nAnswer in English.<|im_end|>" in served


@pytest.mark.parametrize("message, at, words", [
    ({"role": "robot", "content": "hi"}, "[0].role", 'is "robot", not a known role'),
    ({"role": "user"}, "[0].content", "is missing; expected a string or a list"),
    ({"role": "user", "content": 5}, "[0].content", "is a number"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, "[0].content[0]",
     'is a "image_url" part: only text parts are supported'),
    ({"role": "user", "content": [{"type": "text", "text": None}]}, "[0].content[0].text", "is null"),
    ({"role": "assistant", "content": "", "weight": 1}, "[0].weight", "is not supported"),
    ({"role": "user", "content": "", "tool_calls": []}, "[0].tool_calls", "is not supported in a user message"),
    ({"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
        "name": "calculator", "arguments": '{"expression": 1+'}}]}, "[0].tool_calls[0].function.arguments",
     "is not valid JSON"),
    ({"role": "assistant", "content": None, "tool_calls": [{"function": {"arguments": {}}}]},
     "[0].tool_calls[0].function.name", "is missing"),
    ({"role": "assistant", "content": None, "tool_calls": [{"name": "calculator", "arguments": [1]}]},
     "[0].tool_calls[0].arguments", "is a list"),
    ({"role": "assistant", "content": "", "reasoning_content": 3}, "[0].reasoning_content", "is a number"),
    ({"role": "tool", "content": "84"}, "[0].role", '"tool" does not follow an assistant message with tool_calls'),
    ("hi", "[0]", "is a string, not a message"),
])
def test_the_same_mistake_gets_the_same_words_on_both_sides(message, at, words):
    with pytest.raises(DataError) as data:
        parse_conversation({"conversations": [message]}, "x.jsonl:3")
    with pytest.raises(APIError) as server:
        server_reads([message])
    assert str(data.value) == f"x.jsonl:3: conversations{server.value.message.removeprefix('messages')}"
    assert server.value.param == f"messages{at}" and server.value.status == 400
    assert server.value.message.startswith(f"messages{at} {words}")
