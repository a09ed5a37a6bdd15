"""`minimind serve MODEL`: an OpenAI-compatible HTTP server, with a small web chat page.

    minimind serve out/                                  # http://127.0.0.1:8000: web chat at /, the API at /v1
    minimind serve out/ --host 0.0.0.0 --port 8080 --api_key secret --max_batch 8

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret")  # any key when the server has none
    reply = client.chat.completions.create(model="out", messages=[{"role": "user", "content": "Hello"}])

Endpoints: `GET /v1/models` (the one model served, named after MODEL or --model_name), `POST /v1/chat/completions`,
`POST /v1/completions`, `GET /health` (status and batching counters), `GET /` (the web chat page). Both completion
endpoints stream with `"stream": true` (server-sent events in OpenAI's chunk format, ending with `data: [DONE]`;
`stream_options: {"include_usage": true}` adds a last chunk with the token counts).

Request fields: model (optional; must be the served model's id when given), messages (system / user / assistant /
developer, content a string or a list of text parts) or prompt (a string, a list of strings, or token ids; a string
gets the <|im_start|> that begins every pretraining document, as in `minimind generate`),
max_tokens (max_completion_tokens in chat), temperature (0 = greedy; OpenAI's default 1), top_p, n, stop (a string
or up to 4), seed, stream, stream_options; and two extensions: top_k and repetition_penalty. presence_penalty and
frequency_penalty are refused when not 0 (the model has repetition_penalty instead), and so are logprobs, tools,
logit_bias, JSON response formats, echo and best_of. Unknown fields are refused, naming the field. usage counts
real tokens: the prompt's (once per prompt, whatever n) and every generated one (an ending eos included).

Chat requests are formatted with the tokenizer's chat template; a tokenizer without one gets a 400 that says to use
/v1/completions (this server does not guess a format). A pretrain-only model still answers chat requests through the
template, but it has never seen a conversation: the startup banner says so.

Every bad request gets OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, naming the field:
400 for invalid values (a prompt longer than the context window says both lengths), 401 for a missing or wrong API
key (`--api_key` or MINIMIND_API_KEY; then `Authorization: Bearer KEY` is required on /v1), 404 for an unknown
model or route, 413 for a body over --max_request_bytes. max_tokens is capped by --max_tokens_limit; without it a
request gets what is left of the context window, up to that cap.

Batching (continuous, at each decode step): one worker thread owns the model. A request is validated and tokenized in
the web server's event loop, then queued as a `Job`. Before every decode step the worker lets the oldest waiting jobs
join the running batch, in order, while their rows fit (--max_batch rows; a job that does not fit waits, and the ones
behind it wait behind it): their prompts are prefilled as one left-padded batch with a cache of their own, each row
chooses its first token, and their cache, attention mask, positions and last tokens are joined to the running batch's
along the batch dimension, the side with fewer cache columns left-padded and masked out. A step is one forward of
every row's last token, with each row's own position ids (a row counts positions from its first token, so it gives
the same tokens as alone, as in `minimind.generate`). Each row keeps its own max_tokens, stop strings and text stream
(UTF-8 safe, `TextStream`) and ends on its own; each job samples its rows with its own temperature / top_k / top_p /
repetition penalty and its own seeded generator, so a seeded request gives the same text joined or alone. A job
leaves the batch once all its rows have ended (until then its ended rows still draw, as they would alone), and the
cache columns that no remaining row uses are dropped with it: the cache holds at most the context window however
long the server stays busy. So no request waits for another's long answer, only for rows to free up. `/health`
counts requests (jobs decoded), batches (started from idle), joined_running (jobs that joined a batch already
decoding), largest_batch (rows), largest_cache (cache columns) and cancelled. Text pieces and endings go back to the
request's event loop through a thread-safe callback. A client that disconnects marks its job cancelled: its rows
leave at the next step. Ctrl-C ends the answers in progress with an error event (503) and stops.
"""

import asyncio
import copy
import hmac
import json
import math
import os
import queue
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHAT_PAGE = Path(__file__).parent / "assets" / "chat.html"
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


# --- the batching worker --------------------------------------------------------------------------------------------

@dataclass
class Job:
    """One request's work: a prompt per row (a prompt repeated n times for n choices) and its settings.

    `emit(event)` is called from the worker thread: ("piece", row, text), ("end", row, finish_reason,
    completion_tokens) or ("error", message, HTTP status)."""
    prompts: list[list[int]]
    max_tokens: int
    emit: Callable
    stops: list[str] = field(default_factory=list)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    cancelled: bool = False  # the client left (or the answer is complete): the worker drops its rows
    finished: bool = False  # every row has ended

    @property
    def rows(self) -> int:
        return len(self.prompts)

    @property
    def longest(self) -> int:
        return max(len(p) for p in self.prompts)


@dataclass(eq=False)
class Member:
    """A job in the running batch and its decoding state; its rows are consecutive rows of the batch."""
    job: Job
    pick: Callable  # logits (rows, V) -> next tokens (rows,), with the job's own settings and generator
    seen: object  # (rows, V + 1) bool: the tokens each row has seen, for the repetition penalty; None when off
    streams: list  # a TextStream per row
    counts: list[int]  # tokens generated per row
    done: list[bool]  # rows that have ended


class Engine:
    """The worker thread that owns the model: it lets waiting jobs join the running batch and decodes it step by
    step (see the module's docstring). `submit(job)` from any thread; `stats` counts requests (jobs decoded),
    batches (started from idle), jobs that joined a batch already decoding, the largest batch (rows), the most
    KV-cache columns the batch has held, and requests whose client left before the end."""

    def __init__(self, model, tokenizer, max_batch: int = 8, compile: bool = False):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model, self.tokenizer, self.max_batch, self.compile = model, tokenizer, max_batch, compile
        self.context = model.config.max_position_embeddings
        self.eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        self.queue: queue.Queue = queue.Queue()  # jobs from the request handlers; None: stop
        self.waiting: deque = deque()  # jobs taken from the queue that did not fit the running batch yet
        self.lock = threading.Lock()  # held while the worker lets jobs join or decodes a step
        self.pause = threading.Event()  # `paused()` waits for the lock
        self.stopping = False
        self.stats = {"requests": 0, "batches": 0, "joined_running": 0, "largest_batch": 0, "largest_cache": 0,
                      "cancelled": 0}
        # The running batch: its jobs in row order, and per row (B rows): the KV cache, the attention mask over the
        # cache's columns (B, t), the next position id (B,) and the last token (B,).
        self.members: list[Member] = []
        self.cache = self.mask = self.positions = self.last = None
        self.thread = threading.Thread(target=self._run, name="minimind-decode", daemon=True)

    def start(self):
        self.thread.start()

    def shutdown(self):
        """Stop soon, without waiting: the running batch ends after its current step, and its requests and the
        waiting ones are answered with an error (503)."""
        self.stopping = True
        self.queue.put(None)

    def stop(self):
        self.shutdown()
        self.thread.join(timeout=10)

    def submit(self, job: Job):
        self.queue.put(job)

    def queued(self) -> int:
        """Jobs waiting to join."""
        return self.queue.qsize() + len(self.waiting)

    def columns(self) -> int:
        """KV-cache columns the running batch holds now (0 when idle)."""
        mask = self.mask
        return 0 if mask is None else mask.shape[1]

    @contextmanager
    def paused(self):
        """No job joins and no decode step runs inside this block (jobs queue up); the step running finishes
        first."""
        self.pause.set()  # the worker steps aside between steps until we hold the lock
        with self.lock:
            self.pause.clear()
            yield

    def _run(self):
        import torch

        self.model.eval()
        with torch.inference_mode():
            while True:
                idle = not self.members and not self.waiting
                job = self.queue.get() if idle else None  # idle: wait for a request
                if self.pause.is_set():
                    time.sleep(0.001)
                with self.lock:
                    if idle:
                        self.waiting.appendleft(job)
                    if self.stopping:
                        break
                    try:
                        self._admit()
                        self._step()
                    except Exception as e:  # a bug outside a forward pass: fail the running requests, keep serving
                        for member in self.members:
                            member.job.emit(("error", f"generation failed: {type(e).__name__}: {e}", 500))
                        self._clear()
        # shutting down: answer the running requests and every one still waiting
        for member in self.members:
            member.job.emit(("error", "the server is shutting down; the answer was cut short", 503))
        self._clear()
        while not self.queue.empty():
            self.waiting.append(self.queue.get_nowait())
        for job in self.waiting:
            if job is not None:
                job.emit(("error", "the server is shutting down", 503))

    def _admit(self):
        """The oldest waiting jobs, in order, while their rows fit beside the running batch (--max_batch), join it:
        their prompts are prefilled as one left-padded batch and each row gets its first token."""
        rows = sum(m.job.rows for m in self.members)
        new = []
        while True:
            if not self.waiting:
                try:
                    self.waiting.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            job = self.waiting[0]
            if job is None:
                break
            if job.cancelled:
                self.waiting.popleft()
                continue
            if rows + job.rows > self.max_batch:  # (a job alone always fits: n x prompts <= max_batch)
                break  # the oldest waiting job joins first when rows free up: no job waits forever
            self.waiting.popleft()
            new.append(job)
            rows += job.rows
        if not new:
            return
        self.stats["requests"] += len(new)
        if self.members:
            self.stats["joined_running"] += len(new)
        else:
            self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], rows)
        try:
            self._join(new)
        except Exception as e:  # the newcomers get the error; the running batch goes on
            for job in new:
                job.emit(("error", f"generation failed: {type(e).__name__}: {e}", 500))
        self._leave()

    def _join(self, jobs: list[Job]):
        import torch
        import torch.nn.functional as F

        from .generate import TextStream, encode_prompts, make_generator, seen_tokens, token_chooser
        from .model import KVCache

        device = next(self.model.parameters()).device
        ids, mask = encode_prompts(self.tokenizer, [p for job in jobs for p in job.prompts], device=device)  # (b, T)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row starts at 0 at its first real token
        padded = not bool(mask.all())
        cache = KVCache(self.model.config.num_hidden_layers)
        logits = self._forward(ids, mask if padded else None, positions if padded else None, cache)
        members, start = [], 0
        for job in jobs:
            rows = slice(start, start + job.rows)
            start += job.rows
            seen = None
            if job.repetition_penalty != 1.0:
                seen = seen_tokens(ids[rows], mask[rows], self.model.config.vocab_size)
            pick = token_chooser(job.temperature > 0, job.temperature, job.top_k or None, job.top_p,
                                 make_generator(job.seed, device))
            members.append(Member(job, pick, seen, [TextStream(self.tokenizer, job.stops) for _ in job.prompts],
                                  [0] * job.rows, [False] * job.rows))
        last = first = self._choose(members, logits)  # (b,)
        if self.members:  # left-pad the side with fewer columns, so every row's last token is in the last column
            t = max(self.mask.shape[1], mask.shape[1])
            mask = torch.cat([F.pad(self.mask, (t - self.mask.shape[1], 0)), F.pad(mask, (t - mask.shape[1], 0))])
            cache = KVCache.cat([self.cache, cache])
            last = torch.cat([self.last, last])
            positions = torch.cat([self.positions, positions[:, -1] + 1])
        else:
            positions = positions[:, -1] + 1
        self.members, self.cache, self.mask, self.positions, self.last = self.members + members, cache, mask, \
            positions, last
        self._emit(members, first.tolist())

    def _step(self):
        """One decode step: one forward of every row's last token, then each job's rows choose their next."""
        import torch

        if not self.members:
            return
        try:
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)  # (B, t + 1)
            mask = None if bool(self.mask.all()) else self.mask  # no padding: the model's fast path
            logits = self._forward(self.last[:, None], mask, self.positions[:, None], self.cache)
            self.positions = self.positions + 1
            self.last = self._choose(self.members, logits)
            self._emit(self.members, self.last.tolist())
        except Exception as e:  # a failed step answers the running requests with an error; the worker goes on
            for member in self.members:
                member.job.emit(("error", f"generation failed: {type(e).__name__}: {e}", 500))
            self._clear()
            return
        self.stats["largest_cache"] = max(self.stats["largest_cache"], self.mask.shape[1])
        self._leave()

    def _forward(self, ids, mask, positions, cache):
        """ids (B, T) -> the logits of each row's last token (B, V), appending to `cache`."""
        from .generate import compiled_forward

        forward = compiled_forward(self.model) if self.compile else self.model
        return forward(ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]

    def _choose(self, members: list[Member], logits):
        """logits (B, V) -> next tokens (B,), each job's rows with the job's own sampling settings and generator."""
        import torch

        from .generate import apply_repetition_penalty

        out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
        start = 0
        for m in members:
            rows = slice(start, start + m.job.rows)
            start += m.job.rows
            part = logits[rows]
            if m.seen is not None:
                part = apply_repetition_penalty(part, m.seen[:, :-1], m.job.repetition_penalty)
            out[rows] = m.pick(part)
            if m.seen is not None:
                m.seen.scatter_(1, out[rows, None], True)
        return out

    def _emit(self, members: list[Member], tokens: list[int]):
        """Send each row's new token as text (or its end) to its request."""
        b = 0
        for m in members:
            job = m.job
            for i in range(job.rows):
                token, b = tokens[b], b + 1
                if m.done[i] or job.cancelled:
                    continue
                m.counts[i] += 1
                reason = None
                if token in self.eos:
                    piece, reason = m.streams[i].finish(), "stop"
                else:
                    piece = m.streams[i].push(token)
                    if m.streams[i].stopped:
                        reason = "stop"
                    elif m.counts[i] == job.max_tokens:
                        piece, reason = piece + m.streams[i].finish(), "length"
                if piece:
                    job.emit(("piece", i, piece))
                if reason:
                    m.done[i] = True
                    job.emit(("end", i, reason, m.counts[i]))

    def _leave(self):
        """Jobs whose rows have all ended (or whose client left) leave the batch, and so do the cache columns that
        no remaining row uses. A job's rows stay until all have ended, so its generator draws as it would alone."""
        import torch

        stay = [not m.job.cancelled and not all(m.done) for m in self.members]
        if all(stay):
            return
        if not any(stay):
            self._clear()
            return
        rows, start = [], 0
        for m, keep in zip(self.members, stay):
            if keep:
                rows.extend(range(start, start + m.job.rows))
            start += m.job.rows
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        first = int(mask.any(0).long().argmax())  # the first column some row uses
        self.mask = mask[:, first:].clone()
        self.cache.select(index, first)
        self.positions, self.last = self.positions[index], self.last[index]
        self.members = [m for m, keep in zip(self.members, stay) if keep]

    def _clear(self):
        self.members = []
        self.cache = self.mask = self.positions = self.last = None


# --- the web app ---------------------------------------------------------------------------------------------------

def served_name(spec) -> str:
    """The model id a MODEL path is served under: its file or directory name."""
    return Path(spec).resolve().name or str(spec)


def create_app(model, tokenizer, model_name: str = "minimind", api_key: str | None = None,
               max_tokens_limit: int = 1024, max_batch: int = 8, max_request_bytes: int = 1 << 20,
               cors_origins: list[str] | None = None, compile: bool = False):
    """The FastAPI app serving `model`. Its worker starts and stops with the app (its lifespan);
    `app.state.engine` is the `Engine`. `cors_origins`: web origins (or "*") whose pages may call the API from a
    browser; none by default (the built-in chat page is same-origin and needs none). `compile`: decode with
    `torch.compile` (see `minimind.generate.compiled_forward`; `run_server` compiles before it listens)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    if max_tokens_limit < 1:
        raise ValueError(f"max_tokens_limit must be at least 1, got {max_tokens_limit}")
    engine = Engine(model, tokenizer, max_batch, compile)
    context = engine.context
    # Requests are tokenized in the event loop while the worker decodes: each thread gets its own tokenizer.
    encoder = copy.deepcopy(tokenizer)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="minimind", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    def error_response(e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(APIError)
    async def on_api_error(request, e: APIError):
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def on_http_error(request, e: HTTPException):
        if e.status_code == 404:
            message = (f"unknown route {request.method} {request.url.path}; this server has GET /v1/models, "
                       "POST /v1/chat/completions, POST /v1/completions, GET /health and the web chat at GET /")
            return error_response(APIError(404, message, code="unknown_url"))
        return error_response(APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}"))

    @app.exception_handler(Exception)
    async def on_crash(request, e: Exception):
        return error_response(APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error"))

    def check_key(request: Request):
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            message = ("incorrect API key provided" if given else
                       "missing API key: send the header 'Authorization: Bearer YOUR_KEY'")
            raise APIError(401, message, code="invalid_api_key")

    async def read_body(request: Request) -> dict:
        check_key(request)
        too_large = APIError(413, f"the request body is larger than this server's limit of {max_request_bytes} "
                                  "bytes (--max_request_bytes)", code="request_too_large")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_request_bytes):
            raise too_large
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_request_bytes:
                raise too_large
        try:
            body = json.loads(raw)
        except ValueError as e:  # also bad UTF-8
            raise APIError(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        name = body.get("model")
        if name is not None and not isinstance(name, str):
            raise invalid("model", f"model must be a string, got {json.dumps(name)}")
        if name is not None and name != model_name:
            raise APIError(404, f"the model {json.dumps(name)} does not exist; this server serves "
                                f"{json.dumps(model_name)}", param="model", code="model_not_found")
        return body

    def make_job(body: dict, prompts: list[list[int]], where: str, max_tokens_field: str) -> Job:
        """The Job for `prompts` (token ids, one per prompt) with the request's settings."""
        n = number(body, "n", 1, 1, max_batch, integer=True)
        if n * len(prompts) > max_batch:
            raise invalid("n", f"{len(prompts)} prompts x n={n} = {n * len(prompts)} choices, more than this "
                               f"server's --max_batch of {max_batch}")
        max_tokens = number(body, max_tokens_field, None, 1, max_tokens_limit, integer=True)
        longest = max(len(p) for p in prompts)
        if longest >= context:
            raise invalid(where, f"the {where} is {longest} tokens long; the model's context window is {context} "
                                 "tokens (prompt and answer together): shorten it", code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = min(max_tokens_limit, context - longest)
        elif longest + max_tokens > context:
            raise invalid(where, f"the model's context window is {context} tokens, but {longest + max_tokens} were "
                                 f"requested ({longest} in the {where} + {max_tokens} {max_tokens_field}): shorten "
                                 f"the {where} or lower {max_tokens_field}", code="context_length_exceeded")
        seed = number(body, "seed", None, integer=True)
        return Job(prompts=[p for p in prompts for _ in range(n)], max_tokens=max_tokens, emit=None,
                   stops=stop_strings(body),
                   temperature=number(body, "temperature", 1.0, 0, 2),
                   top_p=number(body, "top_p", 1.0, 0, 1, low_open=True),
                   top_k=number(body, "top_k", 0, 0, integer=True),
                   repetition_penalty=number(body, "repetition_penalty", 1.0, 0, 10, low_open=True),
                   seed=None if seed is None else seed % 2**63)

    def chat_prompt(body: dict) -> list[int]:
        messages = chat_messages(body.get("messages"))
        if not getattr(encoder, "chat_template", None):
            raise invalid("messages", "this model's tokenizer has no chat template, so it cannot format messages; "
                                      "use /v1/completions with a plain prompt instead")
        try:
            text = encoder.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # the template's own checks (raise_exception)
            raise invalid("messages", f"the chat template cannot format these messages: {e}") from None
        return encoder.encode(text, add_special_tokens=False)

    def completion_prompts(prompt) -> list[list[int]]:
        """A string, a list of strings, a list of token ids, or a list of lists of token ids -> token ids each.
        Strings get the bos token that begins every pretraining document, as `minimind generate`."""
        from .generate import encode_prompts

        def ids_ok(p):
            return isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)

        if isinstance(prompt, str) or ids_ok(prompt):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise invalid("prompt", "prompt must be a string, a non-empty list of strings, or token ids")
        out = []
        for i, p in enumerate(prompt):
            if isinstance(p, str):
                out.append(encode_prompts(encoder, [p])[0][0].tolist())
            elif ids_ok(p):
                bad = [t for t in p if not 0 <= t < model.config.vocab_size]
                if bad:
                    raise invalid("prompt", f"prompt[{i}] holds token id {bad[0]}, outside the vocabulary "
                                            f"[0, {model.config.vocab_size})")
                out.append(p)
            else:
                raise invalid("prompt", f"prompt[{i}] must be a string or a list of token ids, got "
                                        f"{json.dumps(p)[:80]}")
        return out

    async def answer(body: dict, kind: str, job: Job, prompt_tokens: int):
        """Submit `job` and answer: one JSON object, or server-sent events when body.stream."""
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise invalid("stream", f"stream must be true or false, got {json.dumps(stream)}")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise invalid("stream_options", "stream_options must be {\"include_usage\": true or false}")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event):  # called by the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone (shutting down)
                job.cancelled = True
        job.emit = emit
        if engine.stopping:
            raise APIError(503, "the server is shutting down", type="server_error")
        engine.submit(job)

        chat = kind == "chat"
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model_name}
        counts = [0] * job.rows

        def usage():
            completion = sum(counts)
            return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion}

        async def events_until_done():
            ended = 0
            while ended < job.rows:
                event = await events.get()
                if event[0] == "error":
                    job.finished = True
                    raise APIError(event[2], event[1], type="server_error")
                if event[0] == "end":
                    ended += 1
                    counts[event[1]] = event[3]
                yield event
            job.finished = True

        def leave():  # the answer is complete, or its client has left: the worker drops the job's rows
            if not job.finished and not job.cancelled:
                engine.stats["cancelled"] += 1
            job.cancelled = True

        if not stream:
            texts, reasons = [""] * job.rows, [None] * job.rows
            try:
                async for event in events_until_done():
                    if event[0] == "piece":
                        texts[event[1]] += event[2]
                    else:
                        reasons[event[1]] = event[2]
            finally:
                leave()
            choices = [{"index": i, **({"message": {"role": "assistant", "content": text}} if chat else
                                       {"text": text}), "logprobs": None, "finish_reason": reason}
                       for i, (text, reason) in enumerate(zip(texts, reasons))]
            return JSONResponse({**head, "choices": choices, "usage": usage()})

        chunk_head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

        def chunk(index, text=None, finish_reason=None, role=False):
            if chat:
                delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
                body = {"delta": delta}
            else:
                body = {"text": text or ""}
            choice = {"index": index, **body, "logprobs": None, "finish_reason": finish_reason}
            return f"data: {json.dumps({**chunk_head, 'choices': [choice]}, ensure_ascii=False)}\n\n"

        async def sse():
            try:
                if chat:
                    for i in range(job.rows):
                        yield chunk(i, role=True)
                async for event in events_until_done():
                    if event[0] == "piece":
                        yield chunk(event[1], event[2])
                    else:
                        yield chunk(event[1], finish_reason=event[2])
                if options.get("include_usage"):
                    yield f"data: {json.dumps({**chunk_head, 'choices': [], 'usage': usage()})}\n\n"
            except APIError as e:  # the status line has gone out: the error travels as an event
                yield f"data: {json.dumps(e.body())}\n\n"
            finally:
                leave()
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_body(request)
        check_fields(body, CHAT_FIELDS)
        if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
            raise invalid("max_tokens", "give max_tokens or max_completion_tokens, not both")
        limit_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        prompt = chat_prompt(body)
        job = make_job(body, [prompt], "messages", limit_field)
        return await answer(body, "chat", job, len(prompt))

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request)
        check_fields(body, COMPLETION_FIELDS)
        if "prompt" not in body:
            raise invalid("prompt", "prompt is required: a string or a list of strings")
        prompts = completion_prompts(body["prompt"])
        job = make_job(body, prompts, "prompt", "max_tokens")
        return await answer(body, "text", job, sum(len(p) for p in prompts))

    def model_card():
        return {"id": model_name, "object": "model", "created": 0, "owned_by": "minimind"}

    @app.get("/v1/models")
    async def list_models(request: Request):
        check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request):
        check_key(request)
        if name != model_name:
            raise APIError(404, f"the model {json.dumps(name)} does not exist; this server serves "
                                f"{json.dumps(model_name)}", param="model", code="model_not_found")
        return model_card()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "context": context, "queued": engine.queued(), **engine.stats}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(CHAT_PAGE.read_text(encoding="utf-8"))

    return app


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket, or a ValueError that says what to change."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: a port is a number from 0 to 65535 (0: any free port)")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or --host") \
            from None
    return sock


def warm_up(model, tokenizer):
    """Compile the engine's forwards before the first request: prefills (padded or not) and decode steps, at batch 1
    and more, a job joining a running batch included."""
    import torch

    print("minimind serve: compiling the decode step (about a minute on a CPU) ...", flush=True)
    start = time.perf_counter()
    engine = Engine(model, tokenizer, max_batch=3, compile=True)  # driven here, in this thread; never started
    with torch.inference_mode():
        for job in (Job([[1, 2, 3]], 4, emit=lambda event: None), Job([[1, 2], [1, 2, 3, 4]], 3, emit=lambda e: None)):
            engine.submit(job)
            engine._admit()
            engine._step()
        while engine.members:
            engine._step()
    print(f"minimind serve: compiled in {time.perf_counter() - start:.0f} s", flush=True)


def run_server(model, tokenizer, model_name: str = "minimind", host: str = "127.0.0.1", port: int = 8000,
               api_key: str | None = None, max_tokens_limit: int = 1024, max_batch: int = 8,
               max_request_bytes: int = 1 << 20, cors_origins: list[str] | None = None, compile: bool = False,
               note: str | None = None):
    """Serve `model` until Ctrl-C. `api_key` None: MINIMIND_API_KEY from the environment, if set."""
    import uvicorn

    api_key = api_key if api_key is not None else os.environ.get("MINIMIND_API_KEY") or None
    app = create_app(model, tokenizer, model_name, api_key, max_tokens_limit, max_batch, max_request_bytes,
                     cors_origins, compile)
    if compile:
        warm_up(model, tokenizer)
    sock = listen(host, port)
    shown = f"[{host}]" if ":" in host else ("127.0.0.1" if host == "0.0.0.0" else host)
    url = f"http://{shown}:{sock.getsockname()[1]}"
    device = next(model.parameters()).device
    from .quantize import Int8Linear, count_weights

    int8 = ", int8 weights" if any(isinstance(m, Int8Linear) for m in model.modules()) else ""
    print(f"minimind serve: {model_name} ({count_weights(model):,} parameters{int8}, context "
          f"{app.state.engine.context} tokens, {device}) at {url}")
    print(f"  web chat: {url}/   API: {url}/v1 (OpenAI-compatible; model id {json.dumps(model_name)})"
          f"{'; API key required' if api_key else ''}")
    print(f"  batches of up to {max_batch} rows; max_tokens up to {max_tokens_limit}. Ctrl-C stops.")
    if note:
        print(f"  note: {note}; it is made for plain text continuation through /v1/completions")
    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # Ctrl-C: end the answers in progress, so connections close at once
            app.state.engine.shutdown()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=3)
    try:
        Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn has shut down cleanly, then passes Ctrl-C on
        pass
    print("minimind serve: stopped")
