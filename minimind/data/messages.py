"""The chat format, as records and as tokens: the one place that reads a conversation, for the training data
(SFT conversations, DPO pairs) and the server (`minimind.serve.protocol`) alike, so that a model is served the same
text it was trained on.

Messages, one rule everywhere (OpenAI's shapes): a message is `{"role", "content"}`, with an optional `name`.
- role: system, user or assistant; developer (OpenAI's newer name for system) is read as system.
- content: a string, or a list of text parts `{"type": "text", "text": ...}` joined with "\\n" (as vLLM does).
  Other parts (images, audio, files) are refused: the model reads text only.
- name: accepted and dropped. OpenAI clients and datasets send it, and the chat template has no place for it;
  training and serving both drop it, so nothing differs between them.
- any other key (tool_calls, weight, ...) is refused rather than dropped: dropping it would train on, or answer,
  something else than what the conversation says.
`parse_messages` applies the rule; a message that breaks it raises `MessageError`, which says where in the list
(`[2].content[1]`), and each reader puts its own place in front: the data reader `path:line: conversations[2]...`,
the server the param `messages[2].content[1]`.

Records: SFT conversations are MiniMind's `{"conversations": [messages]}` or OpenAI's `{"messages": [messages]}`;
DPO pairs are `{"chosen": [messages], "rejected": [messages]}` (both ending with the assistant response) or
`{"prompt": "...", "chosen": "...", "rejected": "..."}` strings.

Tokens: conversations are rendered with the tokenizer's chat template. Labels are -100 everywhere except the
assistant's content and its closing `<|im_end|>` (SFT: every assistant turn; DPO: the final response). A
conversation longer than `seq_len` loses whole turns (SFT: from the end; DPO: the oldest exchanges) before any
turn is cut.
"""

import json

from .files import _error

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}  # read -> rendered


KEYS = ("role", "content", "name")  # name is accepted and dropped


EXPECTED = {"role": "system, developer, user or assistant",
            "content": 'a string or a list of {"type": "text", "text": "..."} parts'}


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


def parse_message(message, at: str = "") -> dict:
    """One message as the chat template takes it, `{"role", "content"}` (see the module's rule); MessageError
    naming the key at fault otherwise, its path starting with `at`."""
    if not isinstance(message, dict):
        raise MessageError(at, f"is {_kind(message)}, not a message", '{"role": ..., "content": "..."}')
    for key in message:
        if key not in KEYS:
            raise MessageError(f"{at}.{key}", "is not supported", "only role, content and name (name is ignored)")
    for key in ("role", "content"):
        if key not in message:
            raise MessageError(f"{at}.{key}", "is missing", EXPECTED[key])
    role = message["role"]
    if not isinstance(role, str) or role not in ROLES:
        raise MessageError(f"{at}.role", f"is {json.dumps(role)}, not a known role", EXPECTED["role"])
    return {"role": ROLES[role], "content": message_content(message["content"], at)}


def parse_messages(value) -> list[dict]:
    """A non-empty list of messages as the chat template takes them, `[{"role", "content"}, ...]`; MessageError
    naming the message and key at fault otherwise (`[2].content[1]`)."""
    if not isinstance(value, list) or not value:
        raise MessageError("", "is not a non-empty list", '[{"role": ..., "content": "..."}, ...]')
    return [parse_message(m, f"[{i}]") for i, m in enumerate(value)]


def _messages(value, where: str, field: str) -> list[dict]:
    """The messages in a record's `field`; DataError naming the record and the message at fault."""
    try:
        return parse_messages(value)
    except MessageError as e:
        raise _error(where, f"{field}{e.at} {e.problem}", e.expected) from None


def parse_conversation(record: dict, where: str) -> list[dict]:
    """The messages of an SFT record ({"conversations": [...]} or {"messages": [...]}); DataError if invalid."""
    field = "conversations" if "conversations" in record else "messages" if "messages" in record else None
    if field is None:
        raise _error(where, f'no "conversations" or "messages" field (keys: {", ".join(record) or "none"})',
                     '{"conversations": [{"role": ..., "content": ...}, ...]}')
    messages = _messages(record[field], where, field)
    if not any(m["role"] == "assistant" for m in messages):
        raise _error(where, "no assistant message, nothing to learn", 'at least one {"role": "assistant", ...}')
    return messages


def parse_pair(record: dict, where: str) -> tuple[list[dict], list[dict]]:
    """(chosen messages, rejected messages) of a DPO record, each ending with the assistant response."""
    if "chosen" not in record or "rejected" not in record:
        raise _error(where, f'no "chosen" and "rejected" fields (keys: {", ".join(record) or "none"})',
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
                raise _error(where, f'"{field}" is a string but there is no "prompt"',
                             '{"prompt": "...", "chosen": "...", "rejected": "..."}')
            messages = prompt + [{"role": "assistant", "content": value}]
        else:
            messages = (prompt or []) + _messages(value, where, field)
        if messages[-1]["role"] != "assistant":
            raise _error(where, f'"{field}" does not end with an assistant message', "the response last")
        sides.append(messages)
    return sides[0], sides[1]


# --- rendering --------------------------------------------------------------------------------------------------

def prompt_text(tokenizer, messages: list[dict]) -> str:
    """What the model continues to answer `messages`: the chat template's rendering with the assistant's turn opened
    (the same template `encode_chat` renders training conversations with)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """`prompt_text` as token ids (the template writes its own special tokens)."""
    return tokenizer.encode(prompt_text(tokenizer, messages), add_special_tokens=False)


# --- SFT and DPO ------------------------------------------------------------------------------------------------

def _render(tokenizer, messages: list[dict], only_last: bool) -> tuple[list[int], list[int]]:
    """Token ids of the chat-template rendering, and labels: the ids on assistant content + closing eos, else -100."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    eos = tokenizer.eos_token or ""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    spans, pos = [], 0  # character spans [start, end) to learn, in order
    for i, m in enumerate(messages):
        start = text.find(m["content"], pos)
        if start < 0:
            raise ValueError("the chat template changes message contents; cannot locate the assistant turns")
        end = pos = start + len(m["content"])
        if m["role"] == "assistant" and (i == last or not only_last):
            if eos and text.startswith(eos, end):
                end += len(eos)
            spans.append((start, end))
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
        candidates = [system + messages[k:] for k in starts]
    else:
        ends = [k + 1 for k in range(len(messages) - 1) if messages[k]["role"] == "assistant"]
        candidates = [messages[:k] for k in reversed(ends)]
    for shorter in candidates:
        ids, labels = _render(tokenizer, shorter, only_last)
        if len(ids) <= seq_len:
            return ids, labels
    if any(x != -100 for x in labels[:seq_len]):
        return ids[:seq_len], labels[:seq_len]
    return ids[-seq_len:], labels[-seq_len:]
