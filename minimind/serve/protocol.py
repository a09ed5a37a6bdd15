"""The OpenAI protocol as this server reads it: request fields, checked one by one, and OpenAI's error shape,
`{"error": {"message", "type", "param", "code"}}`, naming the field that is wrong.
"""

import json
import math

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


MAX_STOPS = 4  # as OpenAI


IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}  # accepted, no effect here


# Fields we do not implement: refused unless they hold their "off" value.
UNSUPPORTED = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "logit_bias": (None, {}), "tools": (None, []),
    "tool_choice": (None, "none", "auto"), "functions": (None, []), "function_call": (None, "none", "auto"),
    "echo": (None, False), "best_of": (None, 1), "suffix": (None, ""), "modalities": (None, ["text"]),
    "audio": (None,), "prediction": (None,), "reasoning_effort": (None,), "web_search_options": (None,),
}


SAMPLING_FIELDS = {"model", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "n", "stop",
                   "seed", "stream", "stream_options", "presence_penalty", "frequency_penalty", "response_format"}


CHAT_FIELDS = SAMPLING_FIELDS | {"messages", "max_completion_tokens"}


COMPLETION_FIELDS = SAMPLING_FIELDS | {"prompt"}


class APIError(Exception):
    """An error answered in OpenAI's shape: HTTP status, message, type, the offending field (param) and a code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(param: str, message: str, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# --- reading a request, field by field ----------------------------------------------------------------------------

def number(body: dict, name: str, default, low=None, high=None, integer=False, low_open=False):
    """The field `name` of `body` as a number within [low, high] ((low, high] with low_open), or `default`."""
    value = body.get(name)
    if value is None:
        return default
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not math.isfinite(value):
        raise invalid(name, f"{name} must be {kind}, got {json.dumps(value)}")
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        bounds = f"in {'(' if low_open else '['}{low}, {high}]" if high is not None else f">= {low}"
        raise invalid(name, f"{name} must be {kind} {bounds}, got {value}")
    return value


def text_content(content, where: str) -> str:
    """A message's content: a string, or a list of text parts ({"type": "text", "text": ...}) joined by newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(where, f"{where} must be a string or a list of text parts, got {json.dumps(content)}")
    texts = []
    for i, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise invalid(f"{where}[{i}]", f"{where}[{i}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                           f"are supported, got {json.dumps(kind)}")
        texts.append(part["text"])
    return "\n".join(texts)


def chat_messages(messages) -> list[dict]:
    """The request's messages as [{"role", "content"}] for the chat template; 400 naming the message at fault."""
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "messages must be a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(where, f"{where} must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise invalid(f"{where}.role", f"{where}.role must be one of system, user, assistant (or developer), "
                                           f"got {json.dumps(role)}")
        extra = sorted(set(message) - {"role", "content", "name"})
        if extra:
            raise invalid(f"{where}.{extra[0]}", f"{where}.{extra[0]} is not supported (only role, content and name)")
        out.append({"role": ROLES[role], "content": text_content(message.get("content"), f"{where}.content")})
    return out


def stop_strings(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid("stop", f"stop must be a string or a list of strings, got {json.dumps(stop)}")
    if len(stops) > MAX_STOPS:
        raise invalid("stop", f"stop takes at most {MAX_STOPS} strings, got {len(stops)}")
    return [s for s in stops if s]


def check_fields(body: dict, known: set[str]):
    """Refuse unknown fields, and supported-elsewhere features set to anything but off."""
    for name, value in body.items():
        if name in known or name in IGNORED:
            continue
        if name in UNSUPPORTED:
            if value not in UNSUPPORTED[name]:
                raise invalid(name, f"{name} is not supported by this server; leave it out")
            continue
        raise invalid(name, f"unrecognized request argument: {name}. Supported: {', '.join(sorted(known))}")
    for name in ("presence_penalty", "frequency_penalty"):
        if number(body, name, 0, -2, 2):
            raise invalid(name, f"{name} is not supported (only 0); use repetition_penalty (> 1 discourages "
                                "repeated tokens, e.g. 1.1)")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise invalid("response_format", "response_format: only {\"type\": \"text\"} is supported")
