"""The web app: the OpenAI-compatible endpoints and the chat page, over the batching worker (`worker.py`).

A request goes: the API key and the body's size (`Endpoints.read_body`) -> its pydantic model (`protocol.py`) ->
token ids, checked against the model's context window and the server's limits (`Endpoints.job`) -> the worker,
whose events come back to the event loop through a queue -> one JSON answer, or server-sent events
(`Endpoints.answer`). `create_app` builds the FastAPI app and routes to these. Log-probabilities (`logprobs`, and
`echo` for completions, as lm-evaluation-harness's `local-completions` asks for them) are scored once the answer is
complete: one forward pass over prompt + answer tokens while the worker waits between steps.
"""

import asyncio
import copy
import hmac
import json
import math
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ..data.messages import prompt_ids
from ..tools import TOOLS, run_tool, tool_schemas
from . import responses
from .answer import Answer
from .protocol import APIError, ChatCompletionRequest, CompletionRequest, at_most, invalid, read_request
from .reply import ChatReader
from .worker import Job, Worker

CHAT_PAGE = Path(__file__).parent.parent / "assets" / "chat.html"

ICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
        'fill="#222"/><text x="8" y="12" font-size="10" text-anchor="middle" fill="#eee">m</text></svg>')


def served_name(spec) -> str:
    """The model id a MODEL path is served under: its file or directory name."""
    return Path(spec).resolve().name or str(spec)


# --- the endpoints --------------------------------------------------------------------------------------------------

class Endpoints:
    """What the endpoints do, over one `Worker`: read a request, make its `Job`, answer. `create_app` routes here."""

    def __init__(self, model, tokenizer, engine: Worker, model_name: str, api_key: str | None,
                 max_tokens_limit: int, max_batch: int, max_request_bytes: int):
        self.model, self.engine, self.model_name, self.api_key = model, engine, model_name, api_key
        self.max_tokens_limit, self.max_batch, self.max_request_bytes = max_tokens_limit, max_batch, max_request_bytes
        # Requests are tokenized in the event loop while the worker decodes: each thread gets its own tokenizer.
        self.encoder = copy.deepcopy(tokenizer)

    # reading a request

    def check_key(self, request):
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            message = ("incorrect API key provided" if given else
                       "missing API key: send the header 'Authorization: Bearer YOUR_KEY'")
            raise APIError(401, message, code="invalid_api_key")

    async def read_body(self, request, cls=None):
        """The request's JSON body as a `cls` request (None: the JSON object), after the API key; 413 past
        --max_request_bytes."""
        self.check_key(request)
        too_large = APIError(413, f"the request body is larger than this server's limit of {self.max_request_bytes} "
                                  "bytes (--max_request_bytes)", code="request_too_large")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_request_bytes):
            raise too_large
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.max_request_bytes:
                raise too_large
        try:
            body = json.loads(raw)
        except ValueError as e:  # also bad UTF-8
            raise APIError(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        return body if cls is None else read_request(cls, body)

    # prompts and jobs

    def chat_prompt(self, messages: list[dict], tools: list | None = None,
                    enable_thinking: bool | None = None) -> list[int]:
        if not getattr(self.encoder, "chat_template", None):
            raise invalid("messages", "this model's tokenizer has no chat template, so it cannot format messages; "
                                      "use /v1/completions with a plain prompt instead")
        try:
            return prompt_ids(self.encoder, messages, tools, enable_thinking)
        except Exception as e:  # the template's own checks (raise_exception)
            raise invalid("messages", f"the chat template cannot format these messages: {e}") from None

    def completion_prompts(self, prompts: list) -> list[list[int]]:
        """Each prompt (a string or token ids) as token ids. Strings get the bos token that begins every
        pretraining document, as in `minimind generate`."""
        from ..infer.generate import encode_prompts

        vocab = self.model.config.vocab_size
        out = []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                p = encode_prompts(self.encoder, [p])[0][0].tolist()
            bad = [t for t in p if not 0 <= t < vocab]
            if bad:
                raise invalid(f"prompt[{i}]", f"prompt[{i}] holds token id {bad[0]}, outside the vocabulary "
                                              f"[0, {vocab})")
            out.append(p)
        return out

    def job(self, req, prompts: list[list[int]], where: str, limit_field: str) -> Job:
        """The Job for `prompts` (token ids, one per prompt) with the request's settings, within the server's
        limits and the context window."""
        max_tokens = getattr(req, limit_field)
        at_most("n", req.n, self.max_batch)
        if max_tokens is not None:  # an upper bound: the server's cap bounds it too
            max_tokens = min(max_tokens, self.max_tokens_limit)
        if req.n * len(prompts) > self.max_batch:
            raise invalid("n", f"{len(prompts)} prompts x n={req.n} = {req.n * len(prompts)} choices, more than this "
                               f"server's --max_batch of {self.max_batch}")
        context, longest = self.engine.context, max(len(p) for p in prompts)
        if longest >= context:
            raise invalid(where, f"the {where} is {longest} tokens long; the model's context window is {context} "
                                 "tokens (prompt and answer together): shorten it", code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = min(self.max_tokens_limit, context - longest)
        elif longest + max_tokens > context:
            raise invalid(where, f"the model's context window is {context} tokens, but {longest + max_tokens} were "
                                 f"requested ({longest} in the {where} + {max_tokens} {limit_field}): shorten "
                                 f"the {where} or lower {limit_field}", code="context_length_exceeded")
        return Job(prompts=[p for p in prompts for _ in range(req.n)], max_tokens=max_tokens, emit=None,
                   stops=req.stop, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                   repetition_penalty=req.repetition_penalty, seed=None if req.seed is None else req.seed % 2**63,
                   grammar=json_grammar(req.json_format))

    def chat_job(self, req: ChatCompletionRequest) -> tuple[Job, int, ChatReader]:
        """The job of a chat request, its prompt's length and the reader of its answer. Tools are offered unless
        tool_choice is "none"; a forced call (tool_choice "required" or a named function) is written into the
        prompt as the start of the answer, with no thinking before it, and its arguments are decoded as JSON valid
        against the function's parameters. A JSON response_format is written without thinking."""
        tools = req.tools if req.tool_choice != "none" else None
        forced = req.forced_call or ""
        thinking = None if forced else req.enable_thinking
        if req.json_format and not forced:
            thinking = False  # (asked on, it is refused by the request's model)
        prompt = self.chat_prompt(req.messages, tools, thinking)
        prompt += self.encoder.encode(forced, add_special_tokens=False) if forced else []
        job = self.job(req, [prompt], "messages", req.limit_field)
        if forced:
            job.grammar = call_grammar(tools, req.tool_choice)
        calls = tools is not None and not (req.json_format and not forced)  # a JSON answer is never a call
        reader = ChatReader(job.rows, thinking=thinking is True, tools=calls, forced=forced,
                            parallel=req.parallel_tool_calls)
        return job, len(prompt), reader

    async def chat(self, request):
        req = await self.read_body(request, ChatCompletionRequest)
        job, prompt_tokens, reader = self.chat_job(req)
        finish = None
        if req.logprobs:
            job.record = [[] for _ in range(job.rows)]

            async def finish(body):
                return await self.chat_logprobs(req, job, body)
        return await self.answer(req, "chat", job, prompt_tokens, reader, finish)

    async def responses(self, request):
        """POST /v1/responses: the Responses API over the chat path (`responses.py`)."""
        req = responses.read(await self.read_body(request))
        chat = responses.chat_request(req)
        job, prompt_tokens, reader = self.chat_job(chat)
        events = self.submit(job)
        head = {"id": f"resp_{uuid.uuid4().hex}", "created": int(time.time()), "model": req.model or self.model_name}
        answer = Answer(self.engine, job, events, head, True, prompt_tokens, reader)
        if not req.stream:
            return JSONResponse(responses.whole(req, head, await answer.whole()))
        return StreamingResponse(responses.stream(req, head, answer), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def completion(self, request):
        req = await self.read_body(request, CompletionRequest)
        prompts = self.completion_prompts(req.prompt)
        job = self.job(req, prompts, "prompt", "max_tokens")
        finish = None
        if req.echo or req.logprobs is not None:
            job.record = [[] for _ in range(job.rows)]
            bos = self.encoder.bos_token_id
            added = [isinstance(p, str) and ids[:1] == [bos] for p, ids in zip(req.prompt, prompts)]  # our bos

            async def finish(body):
                return await self.completion_logprobs(req, job, body, [a for a in added for _ in range(req.n)])
        return await self.answer(req, "text", job, sum(len(p) for p in prompts), finish=finish)

    # log-probabilities (OpenAI's `logprobs`, `echo`; what lm-evaluation-harness's local-completions reads)

    def score(self, sequences: list[list[int]], top: int) -> list[dict]:
        """`minimind.eval.perplexity.score_tokens` of the sequences, run while the worker waits between steps."""
        import torch

        from ..eval.perplexity import score_tokens

        with self.engine.paused(), torch.inference_mode():
            return score_tokens(self.model, sequences, top)

    def token_text(self, token: int) -> str:
        return self.encoder.decode([token])

    async def completion_logprobs(self, req, job: Job, body: dict, added_bos: list[bool]) -> dict:
        """The completion answer with `echo` (the prompt's text in front of each choice's) and `logprobs` (OpenAI's
        {"tokens", "token_logprobs", "top_logprobs", "text_offset"} over the echoed prompt's tokens and the answer's).
        A prompt token's log-probability is log p(token | the tokens before it); the first token of a token-id
        prompt has none (null), as OpenAI answers; a text prompt's first token is scored after the bos token the
        server puts in front (not echoed). lm-evaluation-harness sends echo + logprobs=1 + max_tokens=1 and sums
        token_logprobs[context length:-1]."""
        top = req.logprobs or 0
        sequences = [prompt + made for prompt, made in zip(job.prompts, job.record)]
        scores = await asyncio.to_thread(self.score, sequences, top) if req.logprobs is not None else None
        for i, choice in enumerate(body["choices"]):
            prompt, first = job.prompts[i], int(added_bos[i])
            p = req.prompt[i // req.n]
            prompt_text = p if isinstance(p, str) else self.encoder.decode(prompt)
            if req.echo:
                choice["text"] = prompt_text + choice["text"]
            if scores is None:
                continue
            start = first if req.echo else len(prompt)  # the first position reported
            tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
            offset = 0 if req.echo else len(prompt_text)
            for j in range(start, len(sequences[i])):
                token = sequences[i][j]
                text = self.token_text(token)
                tokens.append(text)
                offsets.append(offset)
                offset += len(text)
                if j == 0:
                    token_logprobs.append(None)
                    top_logprobs.append(None)
                    continue
                lp = scores[i]["logprobs"][j - 1]
                token_logprobs.append(lp)
                alternatives = {}
                for t, v in [*(scores[i]["top"][j - 1] if top else []), (token, lp)]:  # the chosen one always too
                    key = self.token_text(t)
                    alternatives[key] = max(v, alternatives.get(key, -math.inf))
                top_logprobs.append(alternatives)
            choice["logprobs"] = {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                                  "text_offset": offsets}
        return body

    async def chat_logprobs(self, req, job: Job, body: dict) -> dict:
        """The chat answer with OpenAI's `logprobs`: {"content": [{"token", "logprob", "bytes", "top_logprobs":
        [{"token", "logprob", "bytes"}, ...]}, ...], "refusal": null} over the answer's tokens."""
        top = req.top_logprobs or 0
        sequences = [prompt + made for prompt, made in zip(job.prompts, job.record)]
        scores = await asyncio.to_thread(self.score, sequences, top)

        def entry(token: int, lp: float) -> dict:
            text = self.token_text(token)
            return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}
        for i, choice in enumerate(body["choices"]):
            n = len(job.prompts[i])
            content = []
            for j, token in enumerate(job.record[i]):
                k = n + j - 1  # the position that predicts it
                content.append({**entry(token, scores[i]["logprobs"][k]),
                                "top_logprobs": [entry(t, v) for t, v in scores[i]["top"][k]] if top else []})
            choice["logprobs"] = {"content": content, "refusal": None}
        return body

    # answering

    async def answer(self, req, kind: str, job: Job, prompt_tokens: int, reader: ChatReader | None = None,
                     finish=None):
        """Submit `job` and answer: one JSON object (passed through the coroutine `finish` when given), or
        server-sent events when req.stream. `reader`: how a chat answer's text is read (reasoning, content, tool
        calls)."""
        events = self.submit(job)
        chat = kind == "chat"
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": req.model or self.model_name}
        answer = Answer(self.engine, job, events, head, chat, prompt_tokens, reader)
        if not req.stream:
            body = await answer.whole()
            return JSONResponse(body if finish is None else await finish(body))
        return StreamingResponse(answer.stream(req.stream_options.include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def submit(self, job: Job) -> asyncio.Queue:
        """Queue `job` on the worker; its events arrive on the returned queue, in this event loop."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event):  # called by the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone (shutting down)
                job.cancelled = True
        job.emit = emit
        if self.engine.stopping:
            raise APIError(503, "the server is shutting down", type="server_error")
        self.engine.submit(job)
        return events


# --- JSON answers ---------------------------------------------------------------------------------------------------

CALL_TAIL = "}\n</tool_call>"  # what follows a call's arguments (the chat template's)
CALL_CLOSE = "</tool_call>"  # only at the end: inside the arguments the parser would end the call there


def json_grammar(fmt: dict | None):
    """The grammar of a JSON response format (`protocol.json_format`), or None for text."""
    if fmt is None:
        return None
    from .constrain import Grammar
    from .schema import ANY_OBJECT

    return Grammar.from_schema(fmt["schema"]) if fmt["type"] == "json_schema" else Grammar([("", ANY_OBJECT, "")])


def call_grammar(tools: list[dict], choice: str):
    """The grammar of the rest of a call that tool_choice forces (`ChatCompletionRequest.forced_call` wrote its
    start into the prompt): the arguments of the named function, or for "required" the call of any one of the
    tools (its name, then its arguments), each as JSON valid against the function's parameters (read leniently:
    what the schema says beyond `schema.py`'s subset is not enforced)."""
    from .constrain import Grammar
    from .schema import ANY_OBJECT, compile_schema

    def arguments(tool):
        node = compile_schema(tool["function"].get("parameters") or {}, lenient=True)
        return node if node.kind == "object" else ANY_OBJECT  # arguments are an object
    if choice == "required":
        return Grammar([('{"name": ' + json.dumps(t["function"]["name"], ensure_ascii=False) + ', "arguments": ',
                         arguments(t), CALL_TAIL) for t in tools], forbid=CALL_CLOSE)
    tool = next(t for t in tools if t["function"]["name"] == choice)
    return Grammar([("", arguments(tool), CALL_TAIL)], space=True, forbid=CALL_CLOSE)


# --- the web app ----------------------------------------------------------------------------------------------------

def add_error_handlers(app: FastAPI):
    """Every error in OpenAI's shape: ours (APIError), the router's (404, 405) and crashes (500)."""
    def respond(e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(APIError)
    async def on_api_error(request, e: APIError):
        return respond(e)

    @app.exception_handler(HTTPException)
    async def on_http_error(request, e: HTTPException):
        if e.status_code == 404:
            message = (f"unknown route {request.method} {request.url.path}; this server has GET /v1/models, "
                       "POST /v1/chat/completions, POST /v1/completions, POST /v1/responses, GET /health, the web "
                       "chat at GET / and its built-in tools at GET /tools, POST /tools/NAME")
            return respond(APIError(404, message, code="unknown_url"))
        return respond(APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}"))

    @app.exception_handler(Exception)
    async def on_crash(request, e: Exception):
        return respond(APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error"))


def create_app(model, tokenizer, model_name: str = "minimind", api_key: str | None = None,
               max_tokens_limit: int = 1024, max_batch: int = 8, max_request_bytes: int = 1 << 20,
               cors_origins: list[str] | None = None, compile: bool = False, demo_tools: list[str] | None = None):
    """The FastAPI app serving `model`. Its worker starts and stops with the app (its lifespan);
    `app.state.engine` is the `Worker`. `cors_origins`: web origins (or "*") whose pages may call the API from a
    browser; none by default (the built-in chat page is same-origin and needs none). `compile`: decode with
    `torch.compile` (see `minimind.infer.engine.compiled_forward`; `run_server` compiles before it listens).
    `demo_tools`: the built-in tools (`minimind.tools`) that GET /tools offers the chat page (default: all)."""
    if max_tokens_limit < 1:
        raise ValueError(f"max_tokens_limit must be at least 1, got {max_tokens_limit}")
    demo_schemas = tool_schemas(demo_tools)  # KeyError naming an unknown tool
    engine = Worker(model, tokenizer, max_batch, compile)
    endpoints = Endpoints(model, tokenizer, engine, model_name, api_key, max_tokens_limit, max_batch,
                          max_request_bytes)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="minimind", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.openapi = lambda: openapi_document(app)
    app.state.engine = engine
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    add_error_handlers(app)
    add_api_routes(app, endpoints, model_name)
    add_page_routes(app)
    add_tool_routes(app, endpoints, demo_schemas)
    return app


def openapi_document(app: FastAPI) -> dict:
    """The OpenAPI document of `app` (GET /openapi.json), with the request bodies the API reads: its pydantic
    request models (the endpoints read raw requests, to answer bad ones with OpenAI-style errors)."""
    from fastapi.openapi.utils import get_openapi
    from pydantic.json_schema import models_json_schema

    from .. import __version__

    if app.openapi_schema is None:
        document = get_openapi(title="minimind", version=__version__, routes=app.routes)
        bodies = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest,
                  "/v1/responses": responses.ResponsesRequest}
        refs, defs = models_json_schema([(m, "validation") for m in bodies.values()],
                                        ref_template="#/components/schemas/{model}")
        document.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
        for path, model in bodies.items():
            document["paths"][path]["post"]["requestBody"] = {
                "required": True, "content": {"application/json": {"schema": refs[(model, "validation")]}}}
        app.openapi_schema = document
    return app.openapi_schema


def add_api_routes(app: FastAPI, endpoints: Endpoints, model_name: str):
    """The OpenAI-compatible API: chat and text completions, the model list, and /health."""
    engine = endpoints.engine
    card = {"id": model_name, "object": "model", "created": 0, "owned_by": "minimind"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await endpoints.chat(request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await endpoints.completion(request)

    @app.post("/v1/responses")
    async def responses_api(request: Request):
        return await endpoints.responses(request)

    @app.get("/v1/models")
    async def list_models(request: Request):
        endpoints.check_key(request)
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request):  # any name is served (the one model), as in requests
        endpoints.check_key(request)
        return {**card, "id": name}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "context": engine.context, "queued": engine.queued(),
                **engine.stats}


def add_page_routes(app: FastAPI):
    """The web chat page and its icon."""
    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(CHAT_PAGE.read_text(encoding="utf-8"))

    @app.get("/favicon.ico")
    async def favicon():
        return Response(ICON, media_type="image/svg+xml")


def add_tool_routes(app: FastAPI, endpoints: Endpoints, demo_schemas: list[dict]):
    """The built-in demo tools (minimind.tools) for the chat page: their schemas, and a run of one. They compute
    (arithmetic, units, dates) and touch nothing else."""
    @app.get("/tools")
    async def list_tools(request: Request):
        endpoints.check_key(request)
        return {"tools": demo_schemas}

    @app.post("/tools/{name}")
    async def call_tool(name: str, request: Request):
        endpoints.check_key(request)
        if name not in TOOLS or name not in [t["function"]["name"] for t in demo_schemas]:
            raise APIError(404, f"no built-in tool {json.dumps(name)}; the tools are {', '.join(TOOLS)}",
                           param="name", code="unknown_tool")
        try:
            arguments = json.loads(await request.body() or b"{}")
        except ValueError as e:
            raise APIError(400, f"the arguments are not valid JSON: {e}") from None
        return {"result": run_tool(name, arguments)}

