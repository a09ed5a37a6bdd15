"""What a model wrote, read back: its thinking, its answer and its tool calls.

The chat format (`minimind.data.messages`) has the model write, in this order,

    <think>
    how it reasons
    </think>

    the answer
    <tool_call>
    {"name": "calculator", "arguments": {"expression": "12*7"}}
    </tool_call>

each part optional. `parse_output(text)` splits such a text into a `Parsed` (reasoning, content, tool_calls);
`StreamParser` does the same piece by piece while the text streams, and hands out each part as soon as it is
known: reasoning and content text as it comes (a tail that may be the start of a tag is held back until it is
decided, and so is trailing whitespace), a tool call once its closing tag arrives. The whitespace the format puts
around the tags is dropped (after `<think>` and `</think>`, before `</think>`, around tool calls); a text with no
tags comes out as its content unchanged. Both are one code path:
`parse_output` is a `StreamParser` fed the whole text, so what a stream shows adds up to what `parse_output` gives.

A small model makes mistakes, and none of them is an exception here:
- thinking left open (the text ends inside `<think>`): all of it is reasoning, there is no answer;
- a tool call whose body is not a JSON object with a string "name" and an object "arguments" (a JSON string
  holding an object is accepted; no "arguments" reads as {}): the whole `<tool_call>...</tool_call>` block stays
  in the content, as text, so nothing the model wrote is lost;
- a tool call left open at the end: a call if its body is a valid call, text otherwise.
"""

import json
from dataclasses import dataclass, field

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


@dataclass
class Parsed:
    """A model's output, read: `reasoning` (the thinking, "" if none), `content` (the answer without the tool
    calls), `tool_calls` (each `{"name": str, "arguments": dict}`, in order)."""
    reasoning: str = ""
    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)


def read_call(body: str) -> dict | None:
    """A tool call's body (the JSON between the tags) as `{"name", "arguments"}`; None when it is not one."""
    try:
        call = json.loads(body)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"].strip():
        return None
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {"name": call["name"].strip(), "arguments": arguments}


def _partial_tag(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of one of `tags` (it may become that tag)."""
    longest = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), longest, -1):
            if text.endswith(tag[:n]):
                longest = n
                break
    return longest


class StreamParser:
    """`Parsed`, incrementally. `push(text)` and `finish()` return events, in order:
    ("reasoning", text), ("content", text) and ("tool_call", {"name", "arguments"}). The texts of one kind
    joined equal that field of `parse_output` of the whole text; `parsed` gathers them.

    `thinking`: the prompt already opened `<think>` (the text starts inside the thinking). Otherwise thinking
    starts only where the text begins with `<think>`. `tools`: read tool calls (False: `<tool_call>` is text)."""

    def __init__(self, thinking: bool = False, tools: bool = True):
        self.mode = "think" if thinking else "start"  # start -> (think ->) content <-> call
        self.tools = tools
        self.buffer = ""  # text received and not yet handed out
        self.pending_space = ""  # whitespace held back at the end of the current text part
        self.fresh = thinking  # at the start of a part after a tag: leading whitespace is dropped
        self.parsed = Parsed()

    def push(self, text: str) -> list[tuple]:
        self.buffer += text
        return self._run(final=False)

    def finish(self) -> list[tuple]:
        """The events still held back, at the end of the text."""
        return self._run(final=True)

    # the state machine

    def _run(self, final: bool) -> list[tuple]:
        events: list[tuple] = []
        while True:
            before = (self.mode, len(self.buffer))
            {"start": self._start, "think": self._think, "content": self._content, "call": self._in_call}[
                self.mode](events, final)
            if (self.mode, len(self.buffer)) == before:
                break
        if final:
            if self.mode == "call":  # left open: a call if the body is one, else text
                call = read_call(self.buffer)
                if call is not None:
                    events.append(("tool_call", call))
                else:
                    self._text(events, "content", CALL_OPEN + self.buffer, final=True, keep_space=True)
                self.buffer = ""
        for kind, value in events:
            if kind == "tool_call":
                self.parsed.tool_calls.append(value)
            else:
                setattr(self.parsed, kind, getattr(self.parsed, kind) + value)
        return events

    def _start(self, events, final):
        head = self.buffer.lstrip()
        if head.startswith(THINK_OPEN):
            self.buffer = head[len(THINK_OPEN):]
            self.mode, self.fresh = "think", True
        elif final or not THINK_OPEN.startswith(head):  # it cannot become <think>: no thinking
            self.mode = "content"

    def _think(self, events, final):
        end = self.buffer.find(THINK_CLOSE)
        if end >= 0:
            self._text(events, "reasoning", self.buffer[:end], final=True)
            self.buffer = self.buffer[end + len(THINK_CLOSE):]
            self.mode, self.fresh = "content", True
            return
        keep = 0 if final else _partial_tag(self.buffer, (THINK_CLOSE,))
        self._text(events, "reasoning", self.buffer[:len(self.buffer) - keep], final)
        self.buffer = self.buffer[len(self.buffer) - keep:]

    def _content(self, events, final):
        start = self.buffer.find(CALL_OPEN) if self.tools else -1
        if start >= 0:
            self._text(events, "content", self.buffer[:start], final=True)
            self.buffer = self.buffer[start + len(CALL_OPEN):]
            self.mode = "call"
            return
        keep = 0 if final or not self.tools else _partial_tag(self.buffer, (CALL_OPEN,))
        self._text(events, "content", self.buffer[:len(self.buffer) - keep], final, keep_space=True)
        self.buffer = self.buffer[len(self.buffer) - keep:]

    def _in_call(self, events, final):
        end = self.buffer.find(CALL_CLOSE)
        if end < 0:
            return  # wait for the closing tag
        body, self.buffer = self.buffer[:end], self.buffer[end + len(CALL_CLOSE):]
        call = read_call(body)
        if call is None:  # not a call: the block stays in the answer, as the model wrote it
            self._text(events, "content", CALL_OPEN + body + CALL_CLOSE, final=True)
        else:
            events.append(("tool_call", call))
        self.mode, self.fresh = "content", True

    def _text(self, events, kind: str, text: str, final: bool, keep_space: bool = False):
        """Hand out `text` of the part `kind`: leading whitespace of a part that follows a tag dropped, trailing
        whitespace held until more text follows. At the end of the part (`final`) it is dropped, unless
        `keep_space` (the end of the whole text, in the answer)."""
        if self.fresh:
            text = text.lstrip()
            if not text:
                return
            self.fresh = False
        text = self.pending_space + text
        body = text if final and keep_space else text.rstrip()
        self.pending_space = "" if final else text[len(body):]
        if body:
            events.append((kind, body))


def parse_output(text: str, thinking: bool = False, tools: bool = True) -> Parsed:
    """`text` as reasoning, content and tool calls (see the module's docstring). `thinking`: the prompt already
    opened `<think>`; `tools`: read tool calls."""
    parser = StreamParser(thinking, tools)
    parser.push(text)
    parser.finish()
    return parser.parsed
