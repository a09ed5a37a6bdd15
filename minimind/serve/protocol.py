"""The OpenAI protocol as this server reads it: the two requests as pydantic models (`ChatCompletionRequest`,
`CompletionRequest`), and OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, whose param
names the field at fault (`temperature`, `messages[0].content[1]`).

The models are strict: a number is a JSON number (not "0.5"), a flag is true or false, an integer has no fraction;
null means "not given", as OpenAI reads it. Unknown fields are refused, naming the field. Fields OpenAI defines that
change nothing here (`user`, `metadata`, ...) are accepted; features this server lacks (logit_bias, ...) are
accepted only when "off"; `logprobs` (and `echo`, `top_logprobs`) are answered without streaming. `response_format`
asks for JSON (`json_object`, or `json_schema` with a schema of the subset `schema.py` reads; others are refused
naming the keyword). Tools (`tools`, `tool_choice`, `parallel_tool_calls`) and thinking (`enable_thinking`, also
read from `chat_template_kwargs` {"enable_thinking"} as vLLM sends it or {"open_thinking"} as MiniMind does, and
from `reasoning_effort`: "none" / "minimal" off, "low" / "medium" / "high" on) are `ChatCompletionRequest`'s.
Messages follow the chat format of `minimind.data.messages`, the rule the training data follows too.
Limits of the server (max_tokens, n) and of the model (context window, vocabulary) are `app.py`'s.
"""

import json
from typing import Annotated, Any, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..data.messages import MessageError, parse_messages, parse_tools

MAX_STOPS = 4  # as OpenAI
MAX_LOGPROBS = 20  # the most alternatives per token that logprobs / top_logprobs may ask for (OpenAI: 5 and 20)


IGNORED = ("user", "metadata", "store", "service_tier")  # accepted, no effect here


# Features this server lacks: refused unless they hold their "off" value (or null, which is always off).
UNSUPPORTED = {
    "logit_bias": ({},),
    "functions": ([],), "function_call": ("none", "auto"), "best_of": (1,), "suffix": ("",),
    "modalities": (["text"],), "audio": (), "prediction": (), "web_search_options": (),
}

EFFORTS = {"none": False, "minimal": False, "low": True, "medium": True, "high": True, "xhigh": True}  # thinking
THINKING_KWARGS = ("enable_thinking", "open_thinking")  # chat_template_kwargs: vLLM's / Qwen3's name, MiniMind's


class APIError(Exception):
    """An error answered in OpenAI's shape: HTTP status, message, type, the offending field (param) and a code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(param: str, message: str, code: str | None = None) -> APIError:
    """A 400 about the field `param`."""
    return APIError(400, message, param=param, code=code)


def at_most(name: str, value: int | None, high: int):
    """A limit of this server's on the integer field `name` (max_tokens, n): 400 when `value` is over `high`."""
    if value is not None and value > high:
        raise invalid(name, f"{name} must be an integer in [1, {high}], got {value}")


# --- field types ----------------------------------------------------------------------------------------------------

def refused(param: str, message: str) -> PydanticCustomError:
    """A validator's error: `message` about the field path `param` (which `request_error` reports)."""
    return PydanticCustomError("refused", "{message}", {"param": param, "message": message})


def _off(value, info):
    if value not in UNSUPPORTED[info.field_name]:
        raise refused(info.field_name, f"{info.field_name} is not supported by this server; leave it out")
    return value


def _zero(value, info):
    if value:
        raise refused(info.field_name, f"{info.field_name} is not supported (only 0); use repetition_penalty "
                                       "(> 1 discourages repeated tokens, e.g. 1.1)")
    return value


def json_format(value, param: str = "response_format") -> dict | None:
    """A response format (chat's response_format; the Responses API's text.format, flat) checked: None for text,
    else {"type": "json_object"} or {"type": "json_schema", "schema": ...} with a schema of the subset `schema.py`
    reads (a refusal naming `param` and the unsupported keyword otherwise)."""
    from .schema import SchemaError, compile_schema

    kinds = '"text", "json_object" or "json_schema"'
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise refused(param, f"{param} must be {{\"type\": {kinds}}}, got {json.dumps(value)[:80]}")
    if value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return {"type": "json_object"}
    spec = value.get("json_schema", value)  # chat nests it; the Responses API does not
    where = f"{param}.json_schema" if "json_schema" in value else param
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise refused(where, f'{where} must be an object with a "schema" (a JSON schema object)')
    try:
        compile_schema(spec.get("schema", {}))
    except SchemaError as e:
        raise refused(f"{where}.schema", f"{where}.schema: {e}") from None
    return {"type": "json_schema", "schema": spec.get("schema", {})}


def _response_format(value):
    json_format(value)
    return value


Off = Annotated[Any, AfterValidator(_off)]  # a feature of UNSUPPORTED
Penalty = Annotated[float, Field(ge=-2, le=2), AfterValidator(_zero)]  # presence / frequency: only 0
def valid_text(param: str, text: str) -> str:
    """`text` if it is valid Unicode (encodable as UTF-8); a refusal naming `param` for a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise refused(param, f"{param} is not valid Unicode text (a lone surrogate {text[e.start]!r} at character "
                             f"{e.start}); send UTF-8 text") from None
    return text


def _stops(stops: list[str]) -> list[str]:
    return [valid_text(f"stop[{i}]", s) for i, s in enumerate(stops) if s]


Stops = Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v), AfterValidator(_stops),
                  Field(max_length=MAX_STOPS, description=f"a string or a list of up to {MAX_STOPS} strings")]


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)  # other keys are ignored, as OpenAI adds some

    include_usage: bool = False  # a last chunk with the token counts


# --- the requests ---------------------------------------------------------------------------------------------------

# What the plain validators below accept, for the OpenAPI document (GET /openapi.json)
MESSAGE_SCHEMA = {"type": "object", "required": ["role", "content"],
                  "properties": {"role": {"enum": ["system", "user", "assistant"]},  # tool results need a call
                                 "content": {"type": "string"}}}
PROMPT_SCHEMAS = [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}},
                  {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}]


class _Request(BaseModel):
    """The fields both endpoints read: the model, sampling settings, stop strings, streaming; and the fields
    accepted for compatibility (IGNORED, and UNSUPPORTED ones left off)."""
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str | None = None  # any name: the answer's model field echoes it (app.py)
    max_tokens: int | None = Field(None, ge=1)  # None: what is left of the context window, up to the server's cap
    temperature: float = Field(1.0, ge=0, le=2)  # 0: greedy
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # an extension; 0: off
    repetition_penalty: float = Field(1.0, gt=0, le=10)  # an extension; > 1 discourages repeated tokens
    n: int = Field(1, ge=1)  # choices per prompt
    stop: Stops = []
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions = StreamOptions()
    presence_penalty: Penalty = 0
    frequency_penalty: Penalty = 0
    response_format: Annotated[Any, AfterValidator(_response_format)] = None  # text, json_object, json_schema
    # IGNORED
    user: Any = None
    metadata: Any = None
    store: Any = None
    service_tier: Any = None
    # UNSUPPORTED
    logit_bias: Off = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_not_given(cls, body):  # as OpenAI reads a null field
        return {k: v for k, v in body.items() if v is not None} if isinstance(body, dict) else body

    @property
    def json_format(self) -> dict | None:
        """The JSON answer response_format asks for (see `json_format`), or None for text."""
        return json_format(self.response_format) if self.response_format is not None else None

    @classmethod
    def supported(cls) -> list[str]:
        """The fields that do something here."""
        return sorted(set(cls.model_fields) - set(IGNORED) - set(UNSUPPORTED))


class ChatCompletionRequest(_Request):
    """POST /v1/chat/completions. `messages` is the conversation as the chat template takes it."""
    messages: list[dict] = Field(description='a non-empty list of {"role", "content"} messages',
                                 json_schema_extra={"type": "array", "minItems": 1, "items": MESSAGE_SCHEMA})
    max_completion_tokens: int | None = Field(None, ge=1)  # max_tokens' newer name
    tools: Any = None  # OpenAI's function tools, rendered into the prompt (`minimind.data.messages.parse_tools`)
    tool_choice: Any = None  # "auto" (default with tools), "none", "required", {"type": "function", "function": ...}
    parallel_tool_calls: bool = True  # False: at most one call per answer
    enable_thinking: bool | None = None  # an extension: True opens the thinking, False skips it, null: the model's
    chat_template_kwargs: dict | None = None  # only {"enable_thinking" or "open_thinking": bool} is read
    reasoning_effort: str | None = None  # "none" / "minimal": thinking off; "low" / "medium" / "high": on
    logprobs: bool = False  # the answer's tokens with their log-probabilities (choices[i].logprobs.content)
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # and the most likely alternatives at each
    # UNSUPPORTED
    functions: Off = None
    function_call: Off = None
    modalities: Off = None
    audio: Off = None
    prediction: Off = None
    web_search_options: Off = None

    @field_validator("messages", mode="plain")
    @classmethod
    def _chat_format(cls, value) -> list[dict]:
        try:
            return parse_messages(value)
        except MessageError as e:
            raise refused("messages" + e.at, e.message("messages")) from None

    @field_validator("tools", mode="plain")
    @classmethod
    def _tools(cls, value) -> list[dict] | None:
        try:
            return parse_tools(value)
        except MessageError as e:
            raise refused("tools" + e.at.removeprefix("tools"), e.message("")) from None

    @model_validator(mode="after")
    def _one_limit(self):
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise refused("max_tokens", "give max_tokens or max_completion_tokens, not both")
        if self.top_logprobs and not self.logprobs:
            raise refused("top_logprobs", "top_logprobs needs logprobs: true")
        if self.logprobs and self.stream:
            raise refused("logprobs", "logprobs is answered without stream only; leave out stream")
        return self

    @model_validator(mode="after")
    def _thinking(self):
        """enable_thinking from itself, chat_template_kwargs and reasoning_effort, which must agree."""
        kwargs = self.chat_template_kwargs or {}
        if set(kwargs) - set(THINKING_KWARGS) or not all(isinstance(v, bool) for v in kwargs.values()):
            raise refused("chat_template_kwargs", 'chat_template_kwargs: only {"enable_thinking": true or false} '
                                                  '(or MiniMind\'s "open_thinking") is supported')
        said = [("enable_thinking", "enable_thinking", self.enable_thinking)]  # (param, what was said, on or off)
        said += [("chat_template_kwargs", f"chat_template_kwargs.{k}", v) for k, v in kwargs.items()]
        if self.reasoning_effort is not None:
            if self.reasoning_effort not in EFFORTS:
                raise refused("reasoning_effort", f"reasoning_effort must be one of {', '.join(EFFORTS)}, got "
                                                  f"{json.dumps(self.reasoning_effort)}")
            said.append(("reasoning_effort", f"reasoning_effort {json.dumps(self.reasoning_effort)}",
                         EFFORTS[self.reasoning_effort]))
        said = [s for s in said if s[2] is not None]
        if len({on for _, _, on in said}) > 1:
            raise refused(said[0][0], f"{' and '.join(what for _, what, _ in said)} disagree on thinking (on or off)")
        self.enable_thinking = said[0][2] if said else None
        return self

    @model_validator(mode="after")
    def _tool_choice(self):
        choice, names = self.tool_choice, [t["function"]["name"] for t in self.tools or []]
        if choice is None:
            self.tool_choice = "auto" if names else "none"
            return self
        if isinstance(choice, str):
            if choice not in ("auto", "none", "required"):
                raise refused("tool_choice", f'tool_choice must be "auto", "none", "required" or {{"type": '
                                             f'"function", "function": {{"name": ...}}}}, got {json.dumps(choice)}')
        else:
            fn = choice.get("function") if isinstance(choice, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or choice.get("type", "function") != \
                    "function":
                raise refused("tool_choice", 'tool_choice must be "auto", "none", "required" or {"type": "function", '
                                             f'"function": {{"name": ...}}}}, got {json.dumps(choice)[:80]}')
            if fn["name"] not in names:
                raise refused("tool_choice", f"tool_choice names the function {json.dumps(fn['name'])}, which is not "
                                             f"in tools ({', '.join(names) or 'none given'})")
            self.tool_choice = fn["name"]
        if self.tool_choice not in ("auto", "none") and not names:
            raise refused("tool_choice", f"tool_choice {json.dumps(choice)} needs tools; give the tools to call")
        return self

    @model_validator(mode="after")
    def _json_without_thinking(self):  # (after _tool_choice, which forced_call reads)
        if self.enable_thinking and self.json_format and not self.forced_call:
            raise refused("response_format", "a JSON response_format is answered without thinking; leave thinking "
                                             "off (enable_thinking, reasoning_effort)")
        return self

    @property
    def forced_call(self) -> str | None:
        """What tool_choice makes the answer start with: a call ("required"), a call of the named function, or
        nothing."""
        if self.tool_choice == "required":
            return "<tool_call>\n"
        if self.tool_choice not in ("auto", "none"):
            return '<tool_call>\n{"name": ' + json.dumps(self.tool_choice) + ', "arguments":'  # ends on a token edge
        return None

    @property
    def limit_field(self) -> str:
        """The field that limits the answer's length: max_completion_tokens when given, else max_tokens."""
        return "max_tokens" if self.max_completion_tokens is None else "max_completion_tokens"


def _token_ids(p) -> bool:
    return isinstance(p, list) and bool(p) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)


class CompletionRequest(_Request):
    """POST /v1/completions. `prompt` is a list of prompts, each a string or token ids."""
    prompt: list[str | list[int]] = Field(description="a string, a list of strings, or token ids",
                                          json_schema_extra={"anyOf": PROMPT_SCHEMAS})
    echo: bool = False  # the prompt comes back in front of the answer (with its logprobs, when asked)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # tokens' log-probabilities and this many alternatives
    # UNSUPPORTED
    best_of: Off = None
    suffix: Off = None

    @field_validator("prompt", mode="plain")
    @classmethod
    def _prompts(cls, value) -> list:
        if isinstance(value, str) or _token_ids(value):
            value = [value]
        if not isinstance(value, list) or not value:
            raise refused("prompt", "prompt must be a string, a non-empty list of strings, or token ids")
        for i, p in enumerate(value):
            if not (isinstance(p, str) or _token_ids(p)):
                raise refused(f"prompt[{i}]", f"prompt[{i}] must be a string or a list of token ids, got "
                                              f"{json.dumps(p)[:80]}")
            if isinstance(p, str):
                valid_text(f"prompt[{i}]", p)
        return value

    @model_validator(mode="after")
    def _scored_whole(self):
        if self.stream and (self.echo or self.logprobs is not None):
            raise refused("echo" if self.echo else "logprobs", "echo and logprobs are answered without stream only; "
                                                               "leave out stream")
        return self


# --- pydantic's errors in OpenAI's shape ------------------------------------------------------------------------------

EXPECTED = {"float_type": "a number", "int_type": "an integer", "int_from_float": "an integer",
            "bool_type": "true or false", "string_type": "a string", "list_type": "a list", "dict_type": "an object",
            "model_type": "an object", "finite_number": "a finite number"}


BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def read_request(cls: type[_Request], body: dict):
    """`body` as a `cls` request; a 400 naming the first field at fault otherwise."""
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        raise request_error(cls, e.errors()[0]) from None


def field_path(loc: tuple) -> str:
    """pydantic's location as OpenAI's param: ("messages", 0, "role") -> "messages[0].role"."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _range(field) -> str:
    """A field's bounds as errors say them: "in (0, 1]", ">= 1"."""
    ge = gt = le = None
    for m in field.metadata:
        ge, gt, le = getattr(m, "ge", ge), getattr(m, "gt", gt), getattr(m, "le", le)
    if le is None:
        return f">= {ge}" if ge is not None else f"> {gt}"
    return f"in {f'[{ge}' if ge is not None else f'({gt}'}, {le}]"


def request_error(cls: type[_Request], error: dict) -> APIError:
    """One of pydantic's errors about a `cls` request as a 400 whose message says what the field should be."""
    kind, loc, ctx, value = error["type"], error["loc"], error.get("ctx") or {}, error.get("input")
    param = ctx.get("param") or field_path(loc)
    field = cls.model_fields.get(loc[0]) if loc and len(loc) == 1 else None
    if kind == "refused":
        return invalid(param, error["msg"])
    if kind == "extra_forbidden":
        return invalid(param, f"unrecognized request argument: {param}. Supported: {', '.join(cls.supported())}")
    if kind == "missing":
        return invalid(param, f"{param} is required: {field.description if field else 'give it'}")
    if kind == "too_long":
        return invalid(param, f"{param} takes at most {ctx['max_length']} items, got {ctx['actual_length']}")
    integer = field is not None and (field.annotation is int or int in get_args(field.annotation))
    number = "an integer" if integer else "a number"
    if kind in BOUNDS and field is not None:
        return invalid(param, f"{param} must be {number} {_range(field)}, got {json.dumps(value)}")
    if kind in EXPECTED:
        expected = field.description if field is not None and field.description else EXPECTED[kind]
        return invalid(param, f"{param} must be {expected}, got {json.dumps(value)[:80]}")
    return invalid(param, f"{param}: {error['msg']}")
