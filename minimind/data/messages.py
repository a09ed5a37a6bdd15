"""The chat format, as records and as tokens.

Records: SFT conversations are MiniMind's `{"conversations": [{"role", "content"}, ...]}` or OpenAI's
`{"messages": [...]}`, roles system / user / assistant; DPO pairs are `{"chosen": [messages], "rejected":
[messages]}` (both ending with the assistant response) or `{"prompt": "...", "chosen": "...", "rejected": "..."}`
strings.

Tokens: conversations are rendered with the tokenizer's chat template. Labels are -100 everywhere except the
assistant's content and its closing `<|im_end|>` (SFT: every assistant turn; DPO: the final response). A
conversation longer than `seq_len` loses whole turns (SFT: from the end; DPO: the oldest exchanges) before any
turn is cut.
"""

from ..tokenizer import ROLES
from .files import _error


def _content(value):
    """A message's content: a string, or OpenAI's list of {"type": "text", "text": ...} parts joined."""
    if isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    return value


def _messages(value, where: str, field: str) -> list[dict]:
    """Validate a list of {"role", "content"} messages; returns clean {"role", "content"} dicts."""
    if not isinstance(value, list) or not value:
        raise _error(where, f'"{field}" is not a non-empty list', '[{"role": ..., "content": "..."}, ...]')
    messages = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise _error(where, f'"{field}" message {i} is not a {{"role", "content"}} object',
                         '{"role": "user" | "assistant" | "system", "content": "..."}')
        if m["role"] not in ROLES:
            raise _error(where, f'"{field}" message {i} has unknown role {m["role"]!r}', "system, user or assistant")
        content = _content(m["content"])
        if not isinstance(content, str):
            raise _error(where, f'"{field}" message {i} content is a {type(content).__name__}', "a string")
        messages.append({"role": m["role"], "content": content})
    return messages


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
