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


# --- tools, tool calls, tool results, thinking ------------------------------------------------------------------

TOOL_RECORD = {
    "tools": [{"type": "function", "function": {"name": "calculator", "description": "Arithmetic.",
                                                "parameters": {"type": "object", "properties": {
                                                    "expression": {"type": "string"}}}}}],
    "messages": [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "12 times 7?"},
        {"role": "assistant", "content": None, "reasoning_content": "multiply",
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "calculator", "arguments": '{"expression": "12*7"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "84"},
        {"role": "assistant", "content": "It is 84."},
    ]}


def learnt(tok, ids, labels):
    return tok.decode([i for i, label in zip(ids, labels) if label != -100])


def test_tool_conversation_renders_and_learns_only_what_the_assistant_writes():
    from minimind.data.messages import encode_chat

    tok = load_tokenizer()
    conversation = parse_conversation(TOOL_RECORD, "x.jsonl:1")
    assert conversation.tools[0]["function"]["name"] == "calculator"
    ids, labels = encode_chat(tok, conversation, 512)
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\nUse tools.\n\n# Tools\n<tools>\n{\"type\": \"function\"")
    assert ('<|im_start|>assistant\n<think>\nmultiply\n</think>\n\n<tool_call>\n{"name": "calculator", '
            '"arguments": {"expression": "12*7"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n84\n'
            '</tool_response><|im_end|>\n<|im_start|>assistant\nIt is 84.<|im_end|>\n') in text
    assert learnt(tok, ids, labels) == ('<think>\nmultiply\n</think>\n\n<tool_call>\n{"name": "calculator", '
                                        '"arguments": {"expression": "12*7"}}\n</tool_call><|im_end|>'
                                        'It is 84.<|im_end|>')  # never the tools, the question or the result
    for marker in ("<think>", "</tool_call>", "<tool_response>"):  # one token each in the shipped tokenizer
        assert len(tok.encode(marker, add_special_tokens=False)) == 1
    # the server renders the same prompt, with the tools of the request
    served = read_request(ChatCompletionRequest, {"messages": TOOL_RECORD["messages"][:2],
                                                  "tools": TOOL_RECORD["tools"]})
    prompt = tok.apply_chat_template(served.messages, tools=served.tools, tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt)


def test_thinking_inline_and_the_enable_thinking_switch():
    from minimind.data.messages import prompt_text

    tok = load_tokenizer()
    inline = parse_conversation({"messages": [{"role": "user", "content": "hi"}, {
        "role": "assistant", "content": "<think>\nsay hello\n</think>\n\nHello."}]}, "x:1")
    assert inline[1] == {"role": "assistant", "content": "Hello.", "reasoning_content": "say hello"}
    question = [{"role": "user", "content": "hi"}]
    assert prompt_text(tok, question).endswith("<|im_start|>assistant\n")
    assert prompt_text(tok, question, enable_thinking=True).endswith("<|im_start|>assistant\n<think>\n")
    assert prompt_text(tok, question, enable_thinking=False).endswith("assistant\n<think>\n\n</think>\n\n")


def test_a_malformed_tool_call_in_data_is_refused_with_file_and_line(tmp_path):
    bad = json.loads(json.dumps(TOOL_RECORD))
    bad["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"expression": "12*7"'
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(TOOL_RECORD) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"tools\.jsonl:2: messages\[2\]\.tool_calls\[0\]\.function\.arguments is "
                                        r"not valid JSON"):
        SFTDataset(path, load_tokenizer(), 256)
    bad["messages"][2] = {"role": "assistant", "content": "I will compute it."}
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"tools\.jsonl:1: messages\[3\]\.role \"tool\" does not follow"):
        SFTDataset(path, load_tokenizer(), 256)
    bad = dict(TOOL_RECORD, tools=[{"type": "function", "function": {"description": "no name"}}])
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"tools\.jsonl:1: tools\[0\]\.function\.name is missing"):
        SFTDataset(path, load_tokenizer(), 256)


def test_a_tokenizer_without_the_markers_and_with_plain_chatml_still_renders_tools(tmp_path):
    """Older models: their tokenizer spells the markers with ordinary tokens and carries the plain ChatML template."""
    from minimind.data.messages import encode_chat
    from minimind.data.parse import parse_output
    from minimind.tokenizer import CHATML_TEMPLATE, MARKERS, SHIPPED

    spec = json.loads((SHIPPED / "tokenizer.json").read_text(encoding="utf-8"))
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in MARKERS]
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    config = json.loads((SHIPPED / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {k: v for k, v in config["added_tokens_decoder"].items() if int(k) < 3}
    config["chat_template"] = CHATML_TEMPLATE
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    old = load_tokenizer(tmp_path)
    assert len(old.encode("<tool_call>", add_special_tokens=False)) > 1
    ids, labels = encode_chat(old, parse_conversation(TOOL_RECORD, "x:1"), 512)
    assert learnt(old, ids, labels).endswith("</tool_call><|im_end|>It is 84.<|im_end|>")
    written = old.decode(old.encode('<tool_call>\n{"name": "calculator", "arguments": {}}\n</tool_call>'))
    assert parse_output(written).tool_calls == [{"name": "calculator", "arguments": {}}]
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert old.apply_chat_template(plain, tokenize=False) == \
        old.apply_chat_template(plain, tokenize=False, chat_template=CHATML_TEMPLATE)
