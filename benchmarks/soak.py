"""Soak: `minimind serve` under many concurrent clients for minutes, mixing good, bad and cancelled requests.

The server runs as its own process (`minimind serve`, as a user starts it); `--clients` threads send requests
back to back for `--minutes`, each drawing its next kind at random:

    good      chat (whole and streamed, with and without tools), completions, responses, the calculator tool (also an
              expression it refuses: a 200 whose result says why)
    bad       requests the server must refuse with a 4xx: broken JSON, wrong types, out-of-range numbers, unknown
              fields, lone surrogates, an unknown role, oversized bodies
    cancelled streams the client drops after the first chunk, and whole requests it gives up on after 50 ms

Every answer is classed by kind and status. A good request answered with anything but 200, a bad one with anything
but a 4xx, and any 5xx or broken connection counts as an error. Every `--sample` seconds the server's resident
memory and its /health counters are recorded. After the clients stop, the server must answer a greedy request
exactly as it did before the soak, and /health must show nothing queued.

    python benchmarks/soak.py                                   # tiny random model, 32 clients, 10 minutes
    python benchmarks/soak.py --minutes 1 --clients 8           # a quick look
    python benchmarks/soak.py --model out/ --output soak.json   # a trained model; the record as JSON

It prints a table of requests by kind and status, the errors, and memory over time; exits 1 on any error or leak
(memory at the end more than `--leak_mb` above its level after the first minute).
"""

import argparse
import collections
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

MESSAGES = [{"role": "user", "content": "What is 12 + 30?"}]
CALCULATOR = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression exactly.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}]


def good(rng: random.Random) -> tuple[str, str, dict | bytes, bool]:
    """(kind, path, body, stream) of a request the server must answer with a 200."""
    tokens = rng.randint(1, 24)
    return rng.choice([
        ("chat", "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": tokens, "temperature": 0.8,
                                          "seed": rng.randint(0, 9)}, False),
        ("chat_stream", "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": tokens, "stream": True,
                                                 "stream_options": {"include_usage": True}}, True),
        ("chat_tools", "/v1/chat/completions", {"messages": MESSAGES, "tools": CALCULATOR, "max_tokens": tokens,
                                                "temperature": 0}, False),
        ("chat_n", "/v1/chat/completions", {"messages": MESSAGES, "n": 3, "max_tokens": tokens}, False),
        ("completion", "/v1/completions", {"prompt": ["Once upon", "In the"], "max_tokens": tokens,
                                           "top_k": 5, "repetition_penalty": 1.3}, False),
        ("responses", "/v1/responses", {"input": "Hello", "max_output_tokens": max(tokens, 16)}, False),
        ("calculator", "/tools/calculator", {"expression": f"{rng.randint(0, 999)} * {rng.randint(0, 999)}"}, False),
        ("calculator_refuses", "/tools/calculator", {"expression": "999999 ** 999999"}, False),  # a 200: an error text
    ])


def bad(rng: random.Random) -> tuple[str, str, dict | bytes, bool]:
    """(kind, path, body, stream) of a request the server must refuse with a 4xx."""
    return rng.choice([
        ("bad_json", "/v1/chat/completions", b'{"messages": [', False),
        ("bad_type", "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": "ten"}, False),
        ("bad_range", "/v1/chat/completions", {"messages": MESSAGES, "temperature": 7}, False),
        ("bad_field", "/v1/completions", {"prompt": "x", "best_of": 3}, False),
        ("bad_surrogate", "/v1/completions", b'{"prompt": "\\udfff"}', False),
        ("bad_role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, False),
        ("bad_size", "/v1/chat/completions", {"messages": [{"role": "user", "content": "a" * 2_000_000}]}, False),
    ])


class Tally:
    """Requests by (kind, outcome), and the first few examples of each error."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.errors = collections.Counter()
        self.examples: dict[str, str] = {}

    def add(self, kind: str, outcome: str, error: str | None = None):
        with self.lock:
            self.counts[kind, outcome] += 1
            if error:
                self.errors[f"{kind} {outcome}"] += 1
                self.examples.setdefault(f"{kind} {outcome}", error[:300])


def client_loop(url: str, seed: int, stop: threading.Event, tally: Tally):
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=120) as http:
        while not stop.is_set():
            draw = rng.random()
            family = "good" if draw < 0.6 else "bad" if draw < 0.85 else "cancel"
            kind, path, body, stream = bad(rng) if family == "bad" else good(rng)
            if family == "cancel":
                kind, stream = "cancel_" + kind, stream or rng.random() < 0.5
                if isinstance(body, dict) and path.startswith("/v1/chat"):
                    body = {**body, "stream": stream, "max_tokens": 64}
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers = {"content-type": "application/json"}
            try:
                if family == "cancel" and stream:
                    with http.stream("POST", path, content=content, headers=headers) as r:
                        status = r.status_code
                        next(r.iter_lines(), None)  # the first chunk, then the connection is dropped
                    tally.add(kind, "dropped" if status == 200 else str(status),
                              None if status == 200 else f"status {status}")
                    continue
                if family == "cancel":
                    try:
                        r = http.post(path, content=content, headers=headers, timeout=0.05)
                    except httpx.TimeoutException:
                        tally.add(kind, "dropped")
                        continue
                else:
                    r = http.post(path, content=content, headers=headers)
                    if stream:
                        r.read()
            except httpx.HTTPError as e:
                tally.add(kind, "connection", f"{type(e).__name__}: {e}")
                continue
            ok = r.status_code == 200 if family != "bad" else 400 <= r.status_code < 500
            if ok and family == "bad":  # a refusal must be OpenAI's error shape
                ok = isinstance(r.json().get("error", {}).get("message"), str)
            tally.add(kind, str(r.status_code), None if ok else f"status {r.status_code}: {r.text}")


def rss_mb(pid: int) -> float:
    """The process' resident memory in MB (Linux's /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tiny_model(folder: str) -> str:
    """A random tiny-preset model with the shipped tokenizer, saved as a model directory."""
    import torch

    from minimind import MiniMindForCausalLM, preset
    from minimind.tokenizer import load_tokenizer

    torch.manual_seed(0)
    MiniMindForCausalLM(preset("tiny")).save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def greedy_answer(url: str) -> str:
    r = httpx.post(url + "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 24, "temperature": 0},
                   timeout=120)
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a model directory (default: a random tiny-preset model)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--sample", type=float, default=15, help="seconds between memory samples")
    p.add_argument("--max_batch", type=int, default=8)
    p.add_argument("--leak_mb", type=float, default=50, help="allowed memory growth after the first minute")
    p.add_argument("--output", default=None, help="write the record here as JSON")
    args = p.parse_args()

    scratch = tempfile.TemporaryDirectory()
    model = args.model or tiny_model(scratch.name)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "minimind", "serve", model, "--port", str(port),
                               "--max_batch", str(args.max_batch), "--max_request_bytes", "1000000",
                               "--tools", "calculator"],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(scratch.name, "serve.log"), "w"))
    try:
        deadline = time.time() + 300
        while True:
            try:
                httpx.get(url + "/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.time() > deadline:
                    sys.exit(f"the server did not start: {Path(scratch.name, 'serve.log').read_text()[-2000:]}")
                time.sleep(0.5)
        before = greedy_answer(url)
        tally, stop = Tally(), threading.Event()
        threads = [threading.Thread(target=client_loop, args=(url, seed, stop, tally), daemon=True)
                   for seed in range(args.clients)]
        start = time.time()
        for t in threads:
            t.start()
        samples = []
        while (elapsed := time.time() - start) < args.minutes * 60:
            health = httpx.get(url + "/health", timeout=30).json()
            with tally.lock:
                served = sum(tally.counts.values())
            samples.append({"s": round(elapsed), "rss_mb": round(rss_mb(server.pid), 1), "answered": served,
                            "requests_decoded": health["requests"], "queued": health["queued"]})
            print(f"{elapsed:6.0f} s  rss {samples[-1]['rss_mb']:7.1f} MB  answered {served:6d}  "
                  f"decoded {health['requests']:6d}  queued {health['queued']}", flush=True)
            time.sleep(min(args.sample, max(0.0, args.minutes * 60 - elapsed)))
        stop.set()
        for t in threads:
            t.join(timeout=180)
        time.sleep(2)  # the dropped requests' jobs end
        health = httpx.get(url + "/health", timeout=30).json()
        after = greedy_answer(url)
        final_rss = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    settled = [s["rss_mb"] for s in samples if s["s"] >= 60] or [samples[-1]["rss_mb"]]
    growth = final_rss - settled[0]
    record = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "clients": args.clients, "minutes": args.minutes, "max_batch": args.max_batch, "model": args.model or "tiny",
        "requests": sum(tally.counts.values()),
        "by_kind": {f"{k} {o}": n for (k, o), n in sorted(tally.counts.items())},
        "errors": dict(tally.errors), "error_examples": tally.examples,
        "memory_mb": samples, "final_rss_mb": round(final_rss, 1), "growth_after_first_minute_mb": round(growth, 1),
        "queued_after": health["queued"], "same_greedy_answer_after": before == after, "health_after": health,
    }
    print(f"\n{record['requests']} requests from {args.clients} clients in {args.minutes:g} min; "
          f"server memory {settled[0]:.1f} MB after the first minute, {final_rss:.1f} MB at the end ({growth:+.1f})")
    print("\n| kind | outcome | requests |\n|---|---|---|")
    for (kind, outcome), n in sorted(tally.counts.items()):
        print(f"| {kind} | {outcome} | {n} |")
    print(f"\nerrors: {dict(tally.errors) or 'none'}")
    for key, example in tally.examples.items():
        print(f"  {key}: {example}")
    print(f"after: queued {health['queued']}, same greedy answer as before: {before == after}")
    if args.output:
        Path(args.output).write_text(json.dumps(record, indent=1) + "\n")
    failed = tally.errors or growth > args.leak_mb or health["queued"] or before != after
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
