"""The chat format, as records and as tokens: the one place that reads a conversation, for the training data
(SFT conversations, DPO pairs) and the server (`minimind.serve.protocol`) alike, so that a model is served the same
text it was trained on.

Messages, one rule everywhere (OpenAI's shapes): a message is `{"role", "content"}`, with an optional `name`.
- role: system, user, assistant or tool; developer (OpenAI's newer name for system) is read as system.
- content: a string, or a list of text parts `{"type": "text", "text": ...}` joined with "\\n" (as vLLM does).
  Other parts (images, audio, files) are refused: the model reads text only. An assistant message with tool
  calls may have null content.
- assistant `tool_calls`: OpenAI's `[{"id", "type": "function", "function": {"name", "arguments"}}]`, arguments a
  JSON object or its JSON text (MiniMind's `{"name", "arguments"}` without the "function" wrapper is read too);
  read as `{"id", "type", "function": {"name", "arguments": dict}}`. A call that is not of this shape is refused,
  naming the call and the key.
- assistant `reasoning_content`: its thinking, a string (also read from a content that starts with
  `<think>...</think>`, the way some datasets write it).
- a `tool` message answers the assistant's tool calls before it (`tool_call_id` is accepted and dropped: results
  are read in the order of the calls).
- name: accepted and dropped. OpenAI clients and datasets send it, and the chat template has no place for it;
  training and serving both drop it, so nothing differs between them.
- any other key (weight, audio, ...) is refused rather than dropped: dropping it would train on, or answer,
  something else than what the conversation says.
`parse_messages` applies the rule; a message that breaks it raises `MessageError`, which says where in the list
(`[2].content[1]`), and each reader puts its own place in front: the data reader `path:line: conversations[2]...`,
the server the param `messages[2].content[1]`.

Records: SFT conversations are MiniMind's `{"conversations": [messages]}` or OpenAI's `{"messages": [messages]}`,
with an optional `"tools"` list (OpenAI's function schemas, rendered into the system turn);
DPO pairs are `{"chosen": [messages], "rejected": [messages]}` (both ending with the assistant response) or
`{"prompt": "...", "chosen": "...", "rejected": "..."}` strings.

Tokens: conversations are rendered with the tokenizer's chat template. Labels are -100 everywhere except what the
assistant writes: its thinking, content and tool calls, and its closing `<|im_end|>` (SFT: every assistant turn;
DPO: the final response); never the system turn, the tools, the user's turns or the tool results. A
conversation longer than `seq_len` loses whole turns (SFT: from the end; DPO: the oldest exchanges) before any
turn is cut.
"""

import json

from .files import DataError, data_error
from .parse import THINK_CLOSE, THINK_OPEN

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
         "tool": "tool"}  # read -> rendered


KEYS = {"system": ("role", "content", "name"), "user": ("role", "content", "name"),
        "assistant": ("role", "content", "name", "tool_calls", "reasoning_content"),
        "tool": ("role", "content", "name", "tool_call_id")}  # name and tool_call_id are accepted and dropped


EXPECTED = {"role": "system, developer, user, assistant or tool",
            "content": 'a string or a list of {"type": "text", "text": "..."} parts',
            "tool_call": '{"id": "...", "type": "function", "function": {"name": "...", "arguments": {...}}}'}


class Conversation(list):
    """A conversation's messages (a list, as parse_messages gives them) and the `tools` it offers (OpenAI's list
    of function schemas; None when it offers none)."""

    def __init__(self, messages, tools: list | None = None):
        super().__init__(messages)
        self.tools = tools or None


class MessageError(ValueError):
    """A conversation that breaks the chat format. `at`: where in the list, as a path to put after the list's own
    name (`[2].content[1]`; "" for the list itself); `problem`: what is wrong; `expected`: what would do."""

    def __init__(self, at: str, problem: str, expected: str):
        super().__init__(f"{at} {problem}; expected {expected}")
        self.at, self.problem, self.expected = at, problem, expected

    def message(self, field: str) -> str:
        """The error as one line about the list called `field`: `messages[2].role is "bot", not a known role; ...`."""
        return f"{field}{self.at} {self.problem}; expected {self.expected}"


def _kind(value) -> str:
    """A JSON value's kind, for errors: "a string", "an object", "null"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    names = {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return names.get(type(value), f"a {type(value).__name__}")


def message_content(content, at: str = "") -> str:
    """A message's content as text: a string, or a list of text parts joined with "\\n"; MessageError otherwise."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise MessageError(f"{at}.content", f"is {_kind(content)}", EXPECTED["content"])
    texts = []
    for j, part in enumerate(content):
        where = f"{at}.content[{j}]"
        if not isinstance(part, dict) or part.get("type") != "text":
            what = f"a {json.dumps(part.get('type'))} part" if isinstance(part, dict) else _kind(part)
            raise MessageError(where, f"is {what}: only text parts are supported", '{"type": "text", "text": "..."}')
        if not isinstance(part.get("text"), str):
            raise MessageError(f"{where}.text", f"is {_kind(part.get('text'))}", "a string")
        texts.append(part["text"])
    return "\n".join(texts)


def parse_tool_call(call, at: str) -> dict:
    """One assistant tool call as `{"id", "type": "function", "function": {"name", "arguments": dict}}`;
    MessageError naming the key at fault otherwise."""
    if not isinstance(call, dict):
        raise MessageError(at, f"is {_kind(call)}, not a tool call", EXPECTED["tool_call"])
    fn, where = (call.get("function"), f"{at}.function") if "function" in call else (call, at)
    if not isinstance(fn, dict):
        raise MessageError(where, f"is {_kind(fn)}", '{"name": "...", "arguments": {...}}')
    if call.get("type", "function") != "function":
        raise MessageError(f"{at}.type", f"is {json.dumps(call.get('type'))}", '"function"')
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        raise MessageError(f"{where}.name", "is missing" if name is None else f"is {_kind(name)}",
                           "the tool's name, a non-empty string")
    arguments = fn.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError as e:
            raise MessageError(f"{where}.arguments", f"is not valid JSON ({e})", "a JSON object") from None
    if not isinstance(arguments, dict):
        raise MessageError(f"{where}.arguments", f"is {_kind(arguments)}", "a JSON object")
    call_id = call.get("id")
    if call_id is not None and not isinstance(call_id, str):
        raise MessageError(f"{at}.id", f"is {_kind(call_id)}", "a string")
    return {"id": call_id, "type": "function", "function": {"name": name.strip(), "arguments": arguments}}


def parse_message(message, at: str = "") -> dict:
    """One message as the chat template takes it, `{"role", "content"}` plus an assistant's `reasoning_content`
    and `tool_calls` when it has them (see the module's rule); MessageError naming the key at fault otherwise, its
    path starting with `at`."""
    if not isinstance(message, dict):
        raise MessageError(at, f"is {_kind(message)}, not a message", '{"role": ..., "content": "..."}')
    if "role" not in message:
        raise MessageError(f"{at}.role", "is missing", EXPECTED["role"])
    role = message["role"]
    if not isinstance(role, str) or role not in ROLES:
        raise MessageError(f"{at}.role", f"is {json.dumps(role)}, not a known role", EXPECTED["role"])
    role = ROLES[role]
    for key in message:
        if key not in KEYS[role]:
            raise MessageError(f"{at}.{key}", "is not supported" + (f" in a {role} message" if role != "assistant"
                                                                     and key in KEYS["assistant"] else ""),
                               f"only {', '.join(KEYS[role])}")
    calls = message.get("tool_calls") or []
    if role == "assistant" and message.get("content") is None and calls:
        content = ""
    elif "content" not in message:
        raise MessageError(f"{at}.content", "is missing", EXPECTED["content"])
    else:
        content = message_content(message["content"], at)
    out = {"role": role, "content": content}
    if role != "assistant":
        return out
    reasoning = message.get("reasoning_content")
    if reasoning is not None and not isinstance(reasoning, str):
        raise MessageError(f"{at}.reasoning_content", f"is {_kind(reasoning)}", "a string")
    head = content.lstrip()
    if not reasoning and head.startswith(THINK_OPEN) and THINK_CLOSE in head:  # thinking written inline
        reasoning, _, content = head[len(THINK_OPEN):].partition(THINK_CLOSE)
        reasoning, out["content"] = reasoning.strip(), content.lstrip()
    if reasoning:
        out["reasoning_content"] = reasoning.strip("\n")
    if not isinstance(calls, list):
        raise MessageError(f"{at}.tool_calls", f"is {_kind(calls)}", f"a list of {EXPECTED['tool_call']}")
    if calls:
        out["tool_calls"] = [parse_tool_call(c, f"{at}.tool_calls[{j}]") for j, c in enumerate(calls)]
    return out


def parse_messages(value) -> list[dict]:
    """A non-empty list of messages as the chat template takes them, `[{"role", "content"}, ...]`; MessageError
    naming the message and key at fault otherwise (`[2].content[1]`). A tool message must follow an assistant
    message with tool calls (or another tool message)."""
    if not isinstance(value, list) or not value:
        raise MessageError("", "is not a non-empty list", '[{"role": ..., "content": "..."}, ...]')
    messages = [parse_message(m, f"[{i}]") for i, m in enumerate(value)]
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            before = messages[i - 1] if i else None
            if before is None or not (before["role"] == "tool" or before.get("tool_calls")):
                raise MessageError(f"[{i}].role", '"tool" does not follow an assistant message with tool_calls',
                                   "tool results right after the assistant message that called the tools")
    return messages


def parse_tools(value, at: str = "tools") -> list[dict] | None:
    """OpenAI's `tools` list (`[{"type": "function", "function": {"name", "description", "parameters"}}]`) as the
    chat template renders it; MessageError naming the entry at fault. None or [] gives None."""
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise MessageError(at, f"is {_kind(value)}", 'a list of {"type": "function", "function": {...}}')
    tools = []
    for j, tool in enumerate(value):
        where = f"{at}[{j}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or \
                not isinstance(tool.get("function"), dict):
            raise MessageError(where, "is not a function tool",
                               '{"type": "function", "function": {"name": ..., "parameters": {...}}}')
        fn = tool["function"]
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise MessageError(f"{where}.function.name", "is missing or not a string", "the function's name")
        for key, kind in (("description", str), ("parameters", dict)):
            if key in fn and not isinstance(fn[key], kind):
                raise MessageError(f"{where}.function.{key}", f"is {_kind(fn[key])}",
                                   "a string" if kind is str else "a JSON schema object")
        tools.append({"type": "function", "function": {k: fn[k] for k in ("name", "description", "parameters")
                                                        if k in fn}})
    return tools


def _messages(value, where: str, field: str) -> list[dict]:
    """The messages in a record's `field`; DataError naming the record and the message at fault."""
    try:
        return parse_messages(value)
    except MessageError as e:
        raise data_error(where, f"{field}{e.at} {e.problem}", e.expected) from None


def parse_conversation(record: dict, where: str) -> list[dict]:
    """The messages of an SFT record ({"conversations": [...]} or {"messages": [...]}, optional "tools") as a
    `Conversation`; DataError if invalid."""
    field = "conversations" if "conversations" in record else "messages" if "messages" in record else None
    if field is None:
        raise data_error(where, f'no "conversations" or "messages" field (keys: {", ".join(record) or "none"})',
                     '{"conversations": [{"role": ..., "content": ...}, ...]}')
    messages = _messages(record[field], where, field)
    if not any(m["role"] == "assistant" for m in messages):
        raise data_error(where, "no assistant message, nothing to learn", 'at least one {"role": "assistant", ...}')
    try:
        tools = parse_tools(record.get("tools"))
    except MessageError as e:
        raise data_error(where, f"{e.at} {e.problem}", e.expected) from None
    return Conversation(messages, tools)


def parse_pair(record: dict, where: str) -> tuple[list[dict], list[dict]]:
    """(chosen messages, rejected messages) of a DPO record, each ending with the assistant response."""
    if "chosen" not in record or "rejected" not in record:
        raise data_error(where, f'no "chosen" and "rejected" fields (keys: {", ".join(record) or "none"})',
                     '{"chosen": [messages], "rejected": [messages]} or {"prompt", "chosen", "rejected"}')
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    elif prompt is not None:
        prompt = _messages(prompt, where, "prompt")
    sides = []
    for field in ("chosen", "rejected"):
        value = record[field]
        if isinstance(value, str):
            if prompt is None:
                raise data_error(where, f'"{field}" is a string but there is no "prompt"',
                             '{"prompt": "...", "chosen": "...", "rejected": "..."}')
            messages = prompt + [{"role": "assistant", "content": value}]
        else:
            messages = (prompt or []) + _messages(value, where, field)
        if messages[-1]["role"] != "assistant":
            raise data_error(where, f'"{field}" does not end with an assistant message', "the response last")
        sides.append(messages)
    return sides[0], sides[1]


# --- rendering --------------------------------------------------------------------------------------------------

def render(tokenizer, messages: list[dict], tools: list | None = None, add_generation_prompt: bool = False,
           enable_thinking: bool | None = None) -> str:
    """The chat template's text of `messages` (and the `tools` offered; a `Conversation`'s own by default).
    `enable_thinking`: None leaves thinking to the model; True opens it; False writes an empty one."""
    if tools is None:
        tools = getattr(messages, "tools", None)
    extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return tokenizer.apply_chat_template(list(messages), tools=tools or None, tokenize=False,
                                         add_generation_prompt=add_generation_prompt, **extra)


def prompt_text(tokenizer, messages: list[dict], tools: list | None = None,
                enable_thinking: bool | None = None) -> str:
    """What the model continues to answer `messages`: the chat template's rendering with the assistant's turn opened
    (the same template `encode_chat` renders training conversations with)."""
    return render(tokenizer, messages, tools, add_generation_prompt=True, enable_thinking=enable_thinking)


def prompt_ids(tokenizer, messages: list[dict], tools: list | None = None,
               enable_thinking: bool | None = None) -> list[int]:
    """`prompt_text` as token ids (the template writes its own special tokens)."""
    return tokenizer.encode(prompt_text(tokenizer, messages, tools, enable_thinking), add_special_tokens=False)


def chat_texts(data, tokenizer, skip_bad_records: bool = False):
    """The texts of `data` to train a tokenizer on: a .txt/.parquet file's documents, a JSON line's "text", or a
    conversation record ({"messages"} / {"conversations"}, optional "tools") as `tokenizer`'s chat template renders
    it, so that the template's words and the tools' schemas get tokens of their own."""
    from .files import TEXT_SUFFIXES, BadRecords, jsonl_records, read_texts, resolve_files

    for path in resolve_files(data, TEXT_SUFFIXES):
        if path.suffix.lower() not in (".jsonl", ".json"):
            yield from read_texts(path, skip_bad_records)
            continue
        bad = BadRecords(path, skip_bad_records)
        for n, record in jsonl_records(path, bad):
            if isinstance(record.get("text"), str):
                yield record["text"]
                continue
            where = f"{path}:{n}"
            try:
                if "messages" not in record and "conversations" not in record:
                    raise data_error(where, f'no "text", "messages" or "conversations" field (keys: '
                                            f'{", ".join(record) or "none"})', '{"text": "..."} or {"messages": [...]}')
                yield render(tokenizer, parse_conversation(record, where))
            except DataError as e:
                bad(e)
        bad.report()


# --- SFT and DPO ------------------------------------------------------------------------------------------------

def _render(tokenizer, messages: list[dict], only_last: bool) -> tuple[list[int], list[int]]:
    """Token ids of the chat-template rendering, and labels: the ids of what the assistant writes (from after its
    turn's opening to its closing eos, thinking and tool calls included), -100 elsewhere. An assistant turn is
    found as the text the template adds after the conversation before it with the turn opened."""
    tools = getattr(messages, "tools", None)
    text = render(tokenizer, messages, tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    eos = tokenizer.eos_token or ""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    spans = []  # character spans [start, end) to learn, in order
    for i in turns[-1:] if only_last else turns:
        before = render(tokenizer, messages[:i], tools, add_generation_prompt=True)
        through = render(tokenizer, messages[:i + 1], tools)
        if not through.startswith(before) or not text.startswith(through):
            raise ValueError("the chat template renders a conversation differently from its beginning; cannot "
                             "locate the assistant turns")
        end = len(through.rstrip("\n"))
        if eos and not through[:end].endswith(eos):  # a template without eos: the turn's text alone
            end = len(through)
        spans.append((len(before), end))
    labels, s = [-100] * len(ids), 0
    for j, (a, b) in enumerate(offsets):  # a token is learnt when it overlaps a span
        while s < len(spans) and spans[s][1] <= a:
            s += 1
        if s < len(spans) and a < spans[s][1] and b > spans[s][0]:
            labels[j] = ids[j]
    return ids, labels


def encode_chat(tokenizer, messages: list[dict], seq_len: int, only_last: bool = False):
    """(input_ids, labels) of a conversation, at most seq_len tokens. Too long: whole turns go first (SFT, only_last
    False: turns after an assistant reply, from the end; DPO, only_last True: the oldest exchanges after any system
    message); if even the shortest such conversation does not fit, it is cut to seq_len tokens, keeping its start
    when that holds learnt tokens and its end otherwise."""
    ids, labels = _render(tokenizer, messages, only_last)
    if len(ids) <= seq_len:
        return ids, labels
    if only_last:
        system = [m for m in messages[:1] if m["role"] == "system"]
        starts = [k for k in range(len(system) + 1, len(messages)) if messages[k]["role"] == "user"]
        candidates = [Conversation(system + messages[k:], getattr(messages, "tools", None)) for k in starts]
    else:
        ends = [k + 1 for k in range(len(messages) - 1) if messages[k]["role"] == "assistant"
                and messages[k + 1]["role"] != "tool"]  # a turn that called tools goes with their results
        candidates = [Conversation(messages[:k], getattr(messages, "tools", None)) for k in reversed(ends)]
    for shorter in candidates:
        ids, labels = _render(tokenizer, shorter, only_last)
        if len(ids) <= seq_len:
            return ids, labels
    if any(x != -100 for x in labels[:seq_len]):
        return ids[:seq_len], labels[:seq_len]
    return ids[-seq_len:], labels[-seq_len:]
