"""OpenAI's Responses API (`POST /v1/responses`) over the chat path: a request (`ResponsesRequest`) is read as the
chat completion it amounts to (`chat_body`: instructions and input items as messages, its function tools as chat
tools, text.format as response_format, reasoning.effort as reasoning_effort), decoded like one, and its answer is
written as the Responses API writes it (`Items`): a reasoning item for the thinking, a message item with the
answer's output_text, a function_call item per tool call; whole, or streamed as its typed server-sent events
(response.created, response.output_item.added, response.output_text.delta, ..., response.completed).

Input items read: messages (roles user, system, developer, assistant; content a string or input_text /
output_text parts), function_call (an assistant's tool call, with its call_id) and function_call_output (the
tool's result), reasoning (its text becomes the next assistant message's thinking). The server keeps no
responses: previous_response_id, conversation and stored prompts are refused (send the whole conversation in
input), and so are background runs and tools other than functions.
"""

import json
import re
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .protocol import MESSAGE_SCHEMA, APIError, invalid, read_request, refused

NOT_KEPT = ("previous_response_id", "conversation", "prompt")


INPUT_MESSAGE = {**MESSAGE_SCHEMA, "properties": {**MESSAGE_SCHEMA["properties"],
                                                 "role": {"enum": ["system", "developer", "user", "assistant"]}}}


class ResponsesRequest(BaseModel):
    """POST /v1/responses. The fields as OpenAI defines them; top_k, repetition_penalty, seed and stop are this
    server's extensions (as in chat)."""
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str | None = None
    input: Any = Field(description="a string, or a list of message / function_call / function_call_output items",
                       json_schema_extra={"anyOf": [{"type": "string"},
                                                    {"type": "array", "minItems": 1, "items": INPUT_MESSAGE}]})
    instructions: str | None = None  # a system message in front of the input
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    seed: int | None = None
    stop: Any = None
    stream: bool = False
    tools: list | None = None  # [{"type": "function", "name", "description", "parameters", "strict"}]
    tool_choice: Any = None  # "auto", "none", "required" or {"type": "function", "name": ...}
    parallel_tool_calls: bool = True
    text: dict | None = None  # {"format": {"type": "text" | "json_object" | "json_schema", ...}, "verbosity"}
    reasoning: dict | None = None  # {"effort": ..., "summary": ...}: effort switches thinking as in chat
    enable_thinking: bool | None = None
    # accepted, no effect here
    store: Any = None
    metadata: Any = None
    user: Any = None
    include: Any = None
    truncation: Any = None
    service_tier: Any = None
    stream_options: Any = None
    max_tool_calls: Any = None
    prompt_cache_key: Any = None
    prompt_cache_retention: Any = None
    safety_identifier: Any = None
    top_logprobs: int | None = Field(None, ge=0, le=0)  # only 0
    background: bool = False
    # refused: this server keeps no responses
    previous_response_id: Any = None
    conversation: Any = None
    prompt: Any = None

    @field_validator("background")
    @classmethod
    def _foreground(cls, value):
        if value:
            raise refused("background", "background responses are not supported; leave out background")
        return value

    @classmethod
    def supported(cls) -> list[str]:
        return sorted(cls.model_fields)


def read(body: dict) -> ResponsesRequest:
    """`body` as a `ResponsesRequest`; a 400 naming the field otherwise."""
    for name in NOT_KEPT:
        if body.get(name) is not None:
            raise invalid(name, f"{name} is not supported: this server keeps no responses or conversations; send "
                                "the whole conversation in input")
    body = {k: v for k, v in body.items() if v is not None}
    return read_request(ResponsesRequest, body)


# --- the request as a chat completion -------------------------------------------------------------------------------

def _text(content, at: str) -> str:
    """A message's content (a string, or text parts) as text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(at, f"{at} must be a string or a list of input_text parts")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text") or \
                not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else None
            raise invalid(f"{at}[{j}]", f"{at}[{j}] is {json.dumps(kind)}: this server reads only text parts "
                                        '({"type": "input_text", "text": ...})')
        texts.append(part["text"])
    return "\n".join(texts)


def _item_text(item: dict, key: str, at: str) -> str:
    if not isinstance(item.get(key), str):
        raise invalid(f"{at}.{key}", f"{at}.{key} must be a string")
    return item[key]


def input_messages(value, instructions: str | None) -> tuple[list[dict], list[str]]:
    """The instructions and the input items as chat messages (a 400 naming the item at fault otherwise), and where
    each message comes from ("instructions", "input", "input[2]")."""
    messages = [{"role": "system", "content": instructions}] if instructions else []
    origins = ["instructions"] * len(messages)
    if isinstance(value, str):
        return messages + [{"role": "user", "content": value}], origins + ["input"]
    if not isinstance(value, list) or not value:
        raise invalid("input", "input must be a string or a non-empty list of items")
    thinking, turn = None, None  # a reasoning item's text, for the next assistant message; the assistant turn
    for i, item in enumerate(value):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(at, f"{at} must be an object (a message, function_call or function_call_output item)")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise invalid(f"{at}.role", f"{at}.role must be user, system, developer or assistant, got "
                                            f"{json.dumps(role)}")
            message = {"role": role, "content": _text(item.get("content"), f"{at}.content")}
            turn = None
            if role == "assistant":
                turn = message
                if thinking:
                    message["reasoning_content"], thinking = thinking, None
            messages.append(message)
            origins.append(at)
        elif kind == "function_call":
            call = {"id": _item_text(item, "call_id", at), "type": "function",
                    "function": {"name": _item_text(item, "name", at),
                                 "arguments": _item_text(item, "arguments", at)}}
            if turn is None:
                turn = {"role": "assistant", "content": None}
                if thinking:
                    turn["reasoning_content"], thinking = thinking, None
                messages.append(turn)
                origins.append(at)
            turn.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": _item_text(item, "call_id", at),
                             "content": _text(output, f"{at}.output")})
            origins.append(at)
            turn = None
        elif kind == "reasoning":
            parts = item.get("content") or item.get("summary") or []
            thinking = "\n".join(p.get("text", "") for p in parts if isinstance(p, dict)) or None
        else:
            raise invalid(f"{at}.type", f"{at}.type {json.dumps(kind)} is not supported; this server reads message, "
                                        "function_call, function_call_output and reasoning items")
    return messages, origins


def chat_tools(tools: list | None) -> list | None:
    """Function tools in the chat shape ({"type": "function", "function": {...}})."""
    out = []
    for j, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise invalid(f"tools[{j}].type", f"tools[{j}].type {json.dumps(kind)} is not supported: this server runs "
                                              "no tools of its own; give function tools")
        fn = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out or None


def chat_tool_choice(choice):
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def chat_format(text: dict | None):
    """text.format as chat's response_format."""
    fmt = (text or {}).get("format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return fmt
    return {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}


RENAMED = (("max_tokens", "max_output_tokens"), ("response_format.json_schema", "text.format"),
           ("response_format", "text.format"), ("reasoning_effort", "reasoning.effort"))


def chat_request(req: ResponsesRequest):
    """The `ChatCompletionRequest` that `req` amounts to; its errors name the Responses API's fields."""
    from .protocol import ChatCompletionRequest

    messages, origins = input_messages(req.input, req.instructions)
    body = {"model": req.model, "messages": messages,
            "max_tokens": req.max_output_tokens, "temperature": req.temperature, "top_p": req.top_p,
            "top_k": req.top_k, "repetition_penalty": req.repetition_penalty, "seed": req.seed, "stop": req.stop,
            "tools": chat_tools(req.tools), "tool_choice": chat_tool_choice(req.tool_choice),
            "parallel_tool_calls": req.parallel_tool_calls, "response_format": chat_format(req.text),
            "reasoning_effort": (req.reasoning or {}).get("effort"), "enable_thinking": req.enable_thinking}
    try:
        return read_request(ChatCompletionRequest, {k: v for k, v in body.items() if v is not None})
    except APIError as e:
        found = re.match(r"messages\[(\d+)\]", e.param or "")
        if found:  # a message's fault: the item it came from
            e.param = origins[int(found.group(1))] + e.param[found.end():]
            e.message = e.message.replace(found.group(0), origins[int(found.group(1))])
        for old, new in RENAMED:
            if e.param and e.param.startswith(old):
                e.param, e.message = new + e.param[len(old):], e.message.replace(old, new)
                break
        if e.param and e.param.startswith(("tools", "tool_choice")):  # the Responses API's shapes are flat
            e.param, e.message = e.param.replace(".function.", "."), e.message.replace(".function.", ".").replace(
                '{"type": "function", "function": {"name": ...}}', '{"type": "function", "name": ...}')
        raise


# --- the answer as output items -------------------------------------------------------------------------------------

def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class Items:
    """The output items of one answer, built from its chat deltas (`ChatReader`'s: reasoning_content, content,
    tool_calls), with the stream events that build them: `delta(d)` and `finish()` return the events (dicts
    without their sequence numbers); `items` holds the items."""

    def __init__(self):
        self.items: list[dict] = []
        self.open: dict | None = None  # the reasoning or message item taking text

    def _add(self, item: dict) -> list[dict]:
        self.items.append(item)
        added = {**item, "content": []} if "content" in item else dict(item)
        if "status" in item:
            added["status"] = "in_progress"
        return [{"type": "response.output_item.added", "output_index": len(self.items) - 1, "item": added}]

    def _text_item(self, kind: str) -> list[dict]:
        """Events that open a reasoning or message item (closing another one first)."""
        if self.open is not None and self.open["type"] == kind:
            return []
        events = self._close()
        if kind == "reasoning":
            item = {"type": "reasoning", "id": _id("rs"), "summary": [], "content": [{"type": "reasoning_text",
                                                                                       "text": ""}]}
        else:
            item = {"type": "message", "id": _id("msg"), "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]}
        events += self._add(item)
        events.append({"type": "response.content_part.added", **self._where(item), "part": dict(item["content"][0])})
        self.open = item
        return events

    def _where(self, item: dict) -> dict:
        return {"item_id": item["id"], "output_index": self.items.index(item), "content_index": 0}

    def _close(self) -> list[dict]:
        item, self.open = self.open, None
        if item is None:
            return []
        part, where = item["content"][0], self._where(item)
        kind = "reasoning_text" if item["type"] == "reasoning" else "output_text"
        done = {"type": f"response.{kind}.done", **where, "text": part["text"]}
        if kind == "output_text":
            done["logprobs"] = []
        return [done, {"type": "response.content_part.done", **where, "part": dict(part)},
                {"type": "response.output_item.done", "output_index": where["output_index"], "item": item}]

    def delta(self, d: dict) -> list[dict]:
        if "reasoning_content" in d or "content" in d:
            kind, text = ("reasoning", d["reasoning_content"]) if "reasoning_content" in d else ("message",
                                                                                              d["content"])
            events = self._text_item(kind)
            self.open["content"][0]["text"] += text
            name = "reasoning_text" if kind == "reasoning" else "output_text"
            event = {"type": f"response.{name}.delta", **self._where(self.open), "delta": text}
            if kind == "message":
                event["logprobs"] = []
            return events + [event]
        call = d["tool_calls"][0]
        if "id" in call:  # a call opens: its name, then (the next delta) its arguments
            events = self._close()
            item = {"type": "function_call", "id": _id("fc"), "call_id": call["id"],
                    "name": call["function"]["name"], "arguments": "", "status": "completed"}
            return events + self._add(item)
        item = next(i for i in reversed(self.items) if i["type"] == "function_call")
        item["arguments"] += call["function"]["arguments"]
        index = self.items.index(item)
        return [{"type": "response.function_call_arguments.delta", "item_id": item["id"], "output_index": index,
                 "delta": call["function"]["arguments"]},
                {"type": "response.function_call_arguments.done", "item_id": item["id"], "output_index": index,
                 "name": item["name"], "arguments": item["arguments"]},
                {"type": "response.output_item.done", "output_index": index, "item": item}]

    def finish(self) -> list[dict]:
        """The events that close the last item; an answer with neither text nor calls gets an empty message."""
        if not any(i["type"] in ("message", "function_call") for i in self.items):
            events = self._text_item("message")
            return events + self._close()
        return self._close()


def message_deltas(message: dict) -> list[dict]:
    """A whole chat message as the deltas that stream it."""
    deltas = [{"reasoning_content": message["reasoning_content"]}] if message.get("reasoning_content") else []
    if message.get("content"):
        deltas.append({"content": message["content"]})
    for i, call in enumerate(message.get("tool_calls") or []):
        deltas += [{"tool_calls": [{"index": i, "id": call["id"], "function": {"name": call["function"]["name"]}}]},
                   {"tool_calls": [{"index": i, "function": {"arguments": call["function"]["arguments"]}}]}]
    return deltas


def usage(chat_usage: dict) -> dict:
    return {"input_tokens": chat_usage["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": chat_usage["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": chat_usage["total_tokens"]}


def envelope(req: ResponsesRequest, head: dict, status: str, output: list, usage: dict | None = None) -> dict:
    """The response object around `output`."""
    return {"id": head["id"], "object": "response", "created_at": head["created"], "status": status,
            "background": False, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens, "model": head["model"],
            "output": output, "parallel_tool_calls": req.parallel_tool_calls, "previous_response_id": None,
            "reasoning": {"effort": (req.reasoning or {}).get("effort"), "summary": None}, "store": False,
            "temperature": req.temperature, "text": {"format": {"type": "text"}, **(req.text or {})},
            "tool_choice": req.tool_choice or "auto", "tools": req.tools or [], "top_p": req.top_p,
            "truncation": "disabled", "usage": usage, "user": None, "metadata": req.metadata or {}}


def whole(req: ResponsesRequest, head: dict, chat: dict) -> dict:
    """The response object of a whole chat completion body `chat`."""
    items = Items()
    for d in message_deltas(chat["choices"][0]["message"]):
        items.delta(d)
    items.finish()
    status = "incomplete" if chat["choices"][0]["finish_reason"] == "length" else "completed"
    return envelope(req, head, status, items.items, usage(chat["usage"]))


async def stream(req: ResponsesRequest, head: dict, answer):
    """The answer (an `answer.Answer` of one row) as the Responses API's server-sent events."""
    from .answer import End

    sequence = 0

    def event(body: dict) -> str:
        nonlocal sequence
        body = {"type": body["type"], "sequence_number": sequence, **body}
        sequence += 1
        return f"event: {body['type']}\ndata: {json.dumps(body, ensure_ascii=False)}\n\n"

    items, reason = Items(), None
    try:
        for kind in ("response.created", "response.in_progress"):
            yield event({"type": kind, "response": envelope(req, head, "in_progress", [])})
        async for ev in answer.until_done():
            ended = isinstance(ev, End)
            deltas = answer.reader.end(ev.row) if ended else answer.reader.push(ev.row, ev.text)
            for d in deltas:
                for e in items.delta(d):
                    yield event(e)
            if ended:
                reason = ev.reason
        for e in items.finish():
            yield event(e)
        status = "incomplete" if reason == "length" else "completed"
        yield event({"type": f"response.{status}", "response": envelope(req, head, status, items.items,
                                                                         usage(answer.usage()))})
    except APIError as e:  # the status line has gone out: the error travels as an event
        yield event({"type": "error", "code": e.code or e.type, "message": e.message, "param": e.param})
    finally:
        answer.leave()
