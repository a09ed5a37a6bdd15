"""A chat answer read as OpenAI returns it: the model's text split into `reasoning_content`, `content` and
`tool_calls` (`minimind.data.parse`), row by row, for a whole message or for streamed deltas.

Deltas follow OpenAI's (and vLLM's) shapes: `{"reasoning_content": ...}` and `{"content": ...}` pieces as the text
comes; a tool call as one delta that opens it (`index`, `id`, `type`, `function.name`, empty `arguments`) and one
that carries its arguments (JSON text), sent once its closing tag has come. A row that called tools ends with
`finish_reason: "tool_calls"`. With `parallel_tool_calls` false, calls after the first are dropped.
"""

import json
import uuid

from ..data.parse import StreamParser


class ChatReader:
    """Reads each row's text. `thinking`: the prompt opened `<think>`; `tools`: tool calls are read (tools were
    offered); `forced`: text the prompt already wrote of the answer (the opening of a call that tool_choice asks
    for), read before the model's text; `parallel`: more than one call per answer."""

    def __init__(self, rows: int, thinking: bool = False, tools: bool = False, forced: str = "",
                 parallel: bool = True):
        self.parallel = parallel
        self.parsers = [StreamParser(thinking, tools) for _ in range(rows)]
        self.calls: list[list[dict]] = [[] for _ in range(rows)]  # {"id", "type", "function"} per call, per row
        for parser in self.parsers:
            parser.push(forced)  # the opening of a call: nothing to show yet

    def _deltas(self, row: int, events: list[tuple]) -> list[dict]:
        deltas = []
        for kind, value in events:
            if kind != "tool_call":
                deltas.append({"reasoning_content" if kind == "reasoning" else "content": value})
                continue
            if self.calls[row] and not self.parallel:
                continue
            index = len(self.calls[row])
            arguments = json.dumps(value["arguments"], ensure_ascii=False)
            call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                    "function": {"name": value["name"], "arguments": arguments}}
            self.calls[row].append(call)
            deltas.append({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                           "function": {"name": call["function"]["name"], "arguments": ""}}]})
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": call["function"]["arguments"]}}]})
        return deltas

    def push(self, row: int, text: str) -> list[dict]:
        """The deltas that `text`, the row's next piece, makes known."""
        return self._deltas(row, self.parsers[row].push(text))

    def end(self, row: int) -> list[dict]:
        """The deltas held back until the row's end."""
        return self._deltas(row, self.parsers[row].finish())

    def finish_reason(self, row: int, reason: str) -> str:
        return "tool_calls" if self.calls[row] else reason

    def message(self, row: int) -> dict:
        """The row's whole message (after its pieces were pushed and it ended)."""
        parsed = self.parsers[row].parsed
        message = {"role": "assistant", "content": parsed.content or (None if self.calls[row] else "")}
        if parsed.reasoning:
            message["reasoning_content"] = parsed.reasoning
        if self.calls[row]:
            message["tool_calls"] = self.calls[row]
        return message
