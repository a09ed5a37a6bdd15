"""Starting the server: the listening socket (a clear error for a port in use or out of range), a warm-up
forward, and uvicorn.
"""

import json
import os
import socket
import time

from .app import create_app
from .worker import Job, Worker


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
    engine = Worker(model, tokenizer, max_batch=3, compile=True)  # driven here, in this thread; never started
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
               note: str | None = None, demo_tools: list[str] | None = None):
    """Serve `model` until Ctrl-C. `api_key` None: MINIMIND_API_KEY from the environment, if set."""
    import uvicorn

    api_key = api_key if api_key is not None else os.environ.get("MINIMIND_API_KEY") or None
    app = create_app(model, tokenizer, model_name, api_key, max_tokens_limit, max_batch, max_request_bytes,
                     cors_origins, compile, demo_tools)
    if compile:
        warm_up(model, tokenizer)
    sock = listen(host, port)
    shown = f"[{host}]" if ":" in host else ("127.0.0.1" if host == "0.0.0.0" else host)
    url = f"http://{shown}:{sock.getsockname()[1]}"
    device = next(model.parameters()).device
    from ..quantize import count_weights, quantized_kind

    kind = quantized_kind(model)
    weights = f", {kind} weights" if kind else ""
    print(f"minimind serve: {model_name} ({count_weights(model):,} parameters{weights}, context "
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
