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
`{"prompt": "...", "chosen": "...", "rejected": "..."}` strings; RL prompts (`parse_prompt`) end with the user
turn the model answers. Records also take MiniMind-3's own shapes (its `sft_t2t`, `rlaif` and `agent_rl` files, read
by `_from_minimind`): `tools` on the system message (a list or its JSON text; the conversation's tools), an
assistant's `tool_calls` as JSON text, null or empty `tools` / `tool_calls` / `reasoning_content` (what MiniMind's
loader fills in) as absent, and in RL prompts a final assistant turn (MiniMind's placeholder) dropped. The server
reads OpenAI's shapes only.

MiniMind-3's data options (`Augment`, the training flags `--add_system_ratio`, `--empty_think_ratio`,
`--thinking_ratio`), each drawn per record from (seed, record index), so that every epoch, worker and resumed run
sees the same data: a generic system prompt added to a share of the conversations that have neither a system
message nor tools; the empty thinking blocks a template writes (`<think>\n\n</think>\n\n`, MiniMind-3's writes one
in every turn without thinking) kept in a share of the conversations and cut from the others; RL prompts rendered
with thinking opened for a share of them and closed for the others.

Tokens: conversations are rendered with the tokenizer's chat template (minimind's, or an imported model's such as
MiniMind-3's). Labels are -100 everywhere except what the assistant writes: its thinking (from `<think>`, also
where the template writes the tag itself), content and tool calls, and its closing `<|im_end|>` (SFT: every
assistant turn; DPO: the final response); never the system turn, the tools, the user's turns or the tool results. A
conversation longer than `seq_len` loses whole turns (SFT: from the end; DPO: the oldest exchanges) before any
turn is cut.
"""

import json
import os
import random
from dataclasses import dataclass

from .files import DataError, data_error, keys_of
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


def _json_text(value, at: str, expected: str):
    """A value that MiniMind's data may hold as JSON text, decoded; other values as they are."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as e:
        raise MessageError(at, f"is not valid JSON ({e})", expected) from None


def _from_minimind(value) -> tuple[list, list[dict] | None]:
    """MiniMind-3's shapes of a message list in data, made OpenAI's (see the module docstring): (the messages, the
    tools of its system message or None)."""
    if not isinstance(value, list):
        return value, None
    out, tools = [], None
    for i, m in enumerate(value):
        if isinstance(m, dict):
            m = {k: v for k, v in m.items()
                 if not (k in ("tools", "tool_calls", "reasoning_content") and (v is None or v == ""))}
            if "tools" in m and m.get("role") == "system":
                if tools is not None:
                    raise MessageError(f"[{i}].tools", "repeats the tools of an earlier system message",
                                       "the tools on one system message")
                tools = parse_tools(_json_text(m.pop("tools"), f"[{i}].tools", "a JSON list of tools"),
                                    f"[{i}].tools") or []
            if isinstance(m.get("tool_calls"), str):
                m["tool_calls"] = _json_text(m["tool_calls"], f"[{i}].tool_calls",
                                             f"a JSON list of {EXPECTED['tool_call']}")
        out.append(m)
    return out, tools or None


def _messages(value, where: str, field: str) -> Conversation:
    """The messages in a record's `field` (with the tools its system message offers, MiniMind's shape); DataError
    naming the record and the message at fault."""
    try:
        value, tools = _from_minimind(value)
        return Conversation(parse_messages(value), tools)
    except MessageError as e:
        raise data_error(where, f"{field}{e.at} {e.problem}", e.expected) from None


def parse_conversation(record: dict, where: str) -> list[dict]:
    """The messages of an SFT record ({"conversations": [...]} or {"messages": [...]}, optional "tools") as a
    `Conversation`; DataError if invalid."""
    field = "conversations" if "conversations" in record else "messages" if "messages" in record else None
    if field is None:
        raise data_error(where, f'no "conversations" or "messages" field (keys: {keys_of(record)})',
                     '{"conversations": [{"role": ..., "content": ...}, ...]}')
    messages = _messages(record[field], where, field)
    if not any(m["role"] == "assistant" for m in messages):
        raise data_error(where, "no assistant message, nothing to learn", 'at least one {"role": "assistant", ...}')
    try:
        tools = parse_tools(record.get("tools"))
    except MessageError as e:
        raise data_error(where, f"{e.at} {e.problem}", e.expected) from None
    if tools and messages.tools:
        raise data_error(where, f'both "tools" and a system message\'s "tools" in {field}',
                         "the tools in one place")
    return Conversation(messages, tools or messages.tools)


def parse_prompt(value, where: str, field: str) -> Conversation:
    """The messages of an RL prompt record's `field`, ending with the user turn the model answers: a final assistant
    turn is dropped, whatever it holds (MiniMind's rlaif.jsonl and agent_rl.jsonl end with one, empty or a
    placeholder, that the rollout writes); DataError otherwise."""
    messages = _messages(value, where, field)
    if messages[-1]["role"] == "assistant":
        messages = Conversation(messages[:-1], messages.tools)
    if not messages or messages[-1]["role"] != "user":
        raise data_error(where, "the conversation must end with a user message (the model answers it; a final "
                                "assistant message is dropped)", '[..., {"role": "user", "content": "..."}]')
    return messages


def parse_pair(record: dict, where: str) -> tuple[list[dict], list[dict]]:
    """(chosen messages, rejected messages) of a DPO record, each ending with the assistant response."""
    if "chosen" not in record or "rejected" not in record:
        raise data_error(where, f'no "chosen" and "rejected" fields (keys: {keys_of(record)})',
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
            messages = Conversation(prompt + [{"role": "assistant", "content": value}], getattr(prompt, "tools", None))
        else:
            side = _messages(value, where, field)
            messages = Conversation((prompt or []) + side, side.tools or getattr(prompt, "tools", None))
        if messages[-1]["role"] != "assistant":
            raise data_error(where, f'"{field}" does not end with an assistant message', "the response last")
        sides.append(messages)
    return sides[0], sides[1]


# --- MiniMind-3's data options -------------------------------------------------------------------------------------

EMPTY_THINK = f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"  # an empty thinking block, as Qwen3 and MiniMind-3 write it

SYSTEM_PROMPTS = (  # generic system prompts, for --add_system_ratio
    "You are a helpful assistant.",
    "You are minimind, a small language model. Answer as well as you can.",
    "You are a careful assistant: answer the user's question accurately and briefly.",
    "你是一个乐于助人的AI助手。",
    "你是minimind，一个小巧的语言模型，请尽力回答用户的问题。",
    "你是一个认真的助手，请准确、简洁地回答问题。",
)


@dataclass(frozen=True)
class Augment:
    """MiniMind-3's data options (see the module docstring), each a share between 0 and 1, drawn per record from
    (seed, record index): `add_system_ratio` (0: never), `empty_think_ratio` (1: the template's blocks all kept),
    `thinking_ratio` (RL prompts; None: the template's default)."""
    add_system_ratio: float = 0.0
    empty_think_ratio: float = 1.0
    thinking_ratio: float | None = None
    seed: int = 0

    def __post_init__(self):
        for name in ("add_system_ratio", "empty_think_ratio", "thinking_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name} is a share between 0 and 1, got {value}")

    def _draw(self, what: str, index: int) -> random.Random:
        return random.Random(f"{self.seed}:{what}:{index}")  # a str seed is hashed the same in every process

    def system(self, messages: list[dict], index: int) -> list[dict]:
        """`messages`, or with a generic system prompt first (for a share add_system_ratio of the conversations
        with neither a system message nor tools)."""
        tools = getattr(messages, "tools", None)
        if not self.add_system_ratio or tools or messages[0]["role"] == "system":
            return messages
        rng = self._draw("system", index)
        if rng.random() >= self.add_system_ratio:
            return messages
        return Conversation([{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}, *messages], tools)

    def keep_empty_think(self, index: int) -> bool:
        """Whether record `index` keeps the empty thinking blocks the template writes."""
        return self.empty_think_ratio >= 1.0 or self._draw("empty_think", index).random() < self.empty_think_ratio

    def thinking(self, index: int) -> bool | None:
        """Whether RL prompt `index` is rendered with thinking opened (True) or closed (False); None: the template's
        default."""
        if self.thinking_ratio is None:
            return None
        return self._draw("thinking", index).random() < self.thinking_ratio


# --- rendering --------------------------------------------------------------------------------------------------

def render(tokenizer, messages: list[dict], tools: list | None = None, add_generation_prompt: bool = False,
           enable_thinking: bool | None = None) -> str:
    """The chat template's text of `messages` (and the `tools` offered; a `Conversation`'s own by default).
    `enable_thinking`: None leaves thinking to the model; True opens it; False writes an empty one. The switch goes to
    the template under both names templates read: `enable_thinking` (minimind's, Qwen3's) and `open_thinking`
    (MiniMind-3's, which an imported MiniMind-3 model keeps)."""
    if tools is None:
        tools = getattr(messages, "tools", None)
    extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking, "open_thinking": enable_thinking}
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
                                            f'{keys_of(record)})', '{"text": "..."} or {"messages": [...]}')
                yield render(tokenizer, parse_conversation(record, where))
            except DataError as e:
                bad(e)
        bad.report()


# --- SFT and DPO ------------------------------------------------------------------------------------------------

def _render(tokenizer, messages: list[dict], only_last: bool, keep_empty_think: bool = True
            ) -> tuple[list[int], list[int]]:
    """Token ids of the chat-template rendering, and labels: the ids of what the assistant writes (its thinking,
    content and tool calls, through its closing eos), -100 elsewhere. An assistant turn is the text the template
    adds for it after the conversation before it. What it learns starts where that text leaves the template's
    generation prompt (`<|im_start|>assistant\n`), or at a `<think>` before that point: templates that write the
    thinking tags into the prompt too (MiniMind-3's writes an empty block into every prompt and every turn) still
    have the assistant learn its thinking, not only what follows it. `keep_empty_think` False cuts the empty
    thinking blocks from every rendering (`Augment.keep_empty_think`)."""
    tools = getattr(messages, "tools", None)

    def text_of(part, opened=False):
        text = render(tokenizer, part, tools, add_generation_prompt=opened)
        return text if keep_empty_think else text.replace(EMPTY_THINK, "")

    text = text_of(messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    eos = tokenizer.eos_token or ""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    spans = []  # character spans [start, end) to learn, in order
    for i in turns[-1:] if only_last else turns:
        before, opened, through = text_of(messages[:i]), text_of(messages[:i], True), text_of(messages[:i + 1])
        if not (opened.startswith(before) and through.startswith(before) and text.startswith(through)):
            raise ValueError("the chat template renders a conversation differently from its beginning (it rewrites "
                             f"earlier turns once later ones follow); cannot locate assistant turn {i}")
        turn = through[len(before):]
        head = len(os.path.commonprefix([turn, opened[len(before):]]))
        think = turn.find(THINK_OPEN, 0, head)
        head = think if think >= 0 else head
        end = len(turn.rstrip("\n"))
        if eos and not turn[:end].endswith(eos):  # a template without eos: the turn's text alone
            end = len(turn)
        spans.append((len(before) + head, len(before) + end))
    labels, s = [-100] * len(ids), 0
    for j, (a, b) in enumerate(offsets):  # a token is learnt when it overlaps a span
        while s < len(spans) and spans[s][1] <= a:
            s += 1
        if s < len(spans) and a < spans[s][1] and b > spans[s][0]:
            labels[j] = ids[j]
    return ids, labels


def encode_chat(tokenizer, messages: list[dict], seq_len: int, only_last: bool = False, keep_empty_think: bool = True):
    """(input_ids, labels) of a conversation, at most seq_len tokens. Too long: whole turns go first (SFT, only_last
    False: turns after an assistant reply, from the end; DPO, only_last True: the oldest exchanges after any system
    message); if even the shortest such conversation does not fit, it is cut to seq_len tokens, keeping its start
    when that holds learnt tokens and its end otherwise. `keep_empty_think`: see `_render`."""
    ids, labels = _render(tokenizer, messages, only_last, keep_empty_think)
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
        ids, labels = _render(tokenizer, shorter, only_last, keep_empty_think)
        if len(ids) <= seq_len:
            return ids, labels
    if any(x != -100 for x in labels[:seq_len]):
        return ids[:seq_len], labels[:seq_len]
    return ids[-seq_len:], labels[-seq_len:]
