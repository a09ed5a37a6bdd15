"""The web app: the OpenAI-compatible endpoints and the chat page, over the batching worker (`engine.py`).
"""

import asyncio
import copy
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from .engine import Engine, Job
from .protocol import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    APIError,
    chat_messages,
    check_fields,
    invalid,
    number,
    stop_strings,
)

CHAT_PAGE = Path(__file__).parent.parent / "assets" / "chat.html"


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
    `torch.compile` (see `minimind.infer.generate.compiled_forward`; `run_server` compiles before it listens)."""
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
        from ..infer.generate import encode_prompts

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
