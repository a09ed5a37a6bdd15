"""The GPU benchmark (`benchmarks/gpu.sh` runs it): training MFU, decode and serving throughput, each against Hugging
Face with the same config and weights, measured in one run. Writes a markdown report (`--out`).

1. Training, `small` and `medium` presets: forward + backward + fused AdamW under bf16 autocast, `torch.compile`,
   SDPA restricted to the flash kernel (falls back to SDPA's own choice, and says so, where flash refuses), minimind
   vs `LlamaForCausalLM` (SDPA attention, compiled alike). MFU = (6 N + 12 L d T) tokens/s / peak bf16 FLOP/s,
   N = the parameters of every matrix product (the tied head counted once as the head), as nanoGPT and PaLM count.
2. Decode, batch 1 and 64: greedy, bf16 weights, `model.generate` (minimind's decode engine, eager and compiled)
   vs `LlamaForCausalLM.generate`, new tokens / s over the whole call.
3. Serving: `minimind serve`'s app (the OpenAI API) with 32 concurrent requests, completion tokens / s overall
   (eager; `--serve_compile` serves compiled).

The models have random weights: speed does not depend on them (a random model rarely emits its end token, so the
serving streams run to max_tokens almost always; the report counts the tokens the server says it produced).

    bash benchmarks/gpu.sh                                      # on a CUDA machine: writes benchmarks/gpu.md
    python benchmarks/gpu.py --smoke --out /tmp/gpu-smoke.md   # the whole script at toy sizes, on a CPU
"""

import argparse
import concurrent.futures
import contextlib
import json
import platform
import threading
import time
import urllib.request
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from minimind import MiniMindForCausalLM, preset
from minimind.export.hf import llama_config

# Dense bf16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name().
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
             "A10G": 70e12, "L4": 121e12, "4090": 165e12, "3090": 71e12}

FULL = dict(train=[("small", 32, 1024), ("medium", 16, 2048)], train_steps=10, decode_presets=["small", "medium"],
            decode_batches=[1, 64], prompt=32, new=256, streams=32, stream_tokens=256, rounds=1)
SMOKE = dict(train=[("tiny", 2, 64)], train_steps=2, decode_presets=["tiny"], decode_batches=[1, 4], prompt=8, new=8,
             streams=4, stream_tokens=8, rounds=1)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def matmul_params(model) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def flops_per_token(model, seq: int) -> float:
    c = model.config
    return 6 * matmul_params(model) + 12 * c.num_hidden_layers * c.hidden_size * seq


def peak_flops(device, given: float | None) -> float | None:
    if given:
        return given * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sdpa_context(kind: str):
    if kind != "flash":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def train_rate(model, batch, seq, steps, device, compile, sdpa) -> float:
    """Tokens/s of forward + backward + AdamW, after 3 warm-up steps (which include the compile)."""
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=device.type == "cuda")
    fwd = torch.compile(model) if compile else model
    dtype = torch.bfloat16

    def step():
        with sdpa_context(sdpa), torch.autocast(device.type, dtype=dtype):
            loss = fwd(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    seconds = timed(lambda: [step() for _ in range(steps)], device)
    return batch * seq * steps / seconds


def models(name, device, dtype=None):
    """minimind and LlamaForCausalLM of preset `name` with the same weights. Clears torch.compile's caches first: the
    compiled code of an earlier model (another preset, or another part) would count against the recompile limit
    of the shared forward functions and push this one back to eager."""
    torch._dynamo.reset()
    config = preset(name)
    torch.manual_seed(0)
    ours = MiniMindForCausalLM(config).to(device)
    hf = LlamaForCausalLM(llama_config(config)).to(device)
    hf.config._attn_implementation = "sdpa"
    hf.load_state_dict(ours.state_dict())
    if dtype is not None:
        ours, hf = ours.to(dtype), hf.to(dtype)
    return ours, hf


def training(args, s, device, report):
    peak = peak_flops(device, args.peak_tflops)
    report.append(f"## Training (bf16 autocast, {'compiled' if args.compile else 'eager'}, flash SDPA, "
                  f"{'fused ' if device.type == 'cuda' else ''}AdamW)\n")
    report.append("| preset | batch x seq | minimind tok/s | HF Llama tok/s | ratio | minimind MFU | HF MFU | SDPA |")
    report.append("|---|---|---|---|---|---|---|---|")
    for name, batch, seq in s["train"]:
        rates, kinds = {}, {}
        for impl in ("minimind", "hf"):
            ours, hf = models(name, device)
            model = (ours if impl == "minimind" else hf).train()
            del ours, hf
            for sdpa in ("flash", "default"):
                try:
                    rates[impl] = train_rate(model, batch, seq, s["train_steps"], device, args.compile, sdpa)
                    kinds[impl] = sdpa
                    break
                except RuntimeError as e:  # flash refused these shapes or this GPU: SDPA's own choice
                    print(f"  ({impl}, {name}: flash SDPA failed: {str(e).splitlines()[0][:120]})")
                    torch._dynamo.reset()
            flops = flops_per_token(model, seq)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        mfu = {k: f"{100 * r * flops / peak:.1f}%" if peak else "n/a" for k, r in rates.items()}
        row = (f"| {name} | {batch} x {seq} | {rates['minimind']:,.0f} | {rates['hf']:,.0f} | "
               f"{rates['minimind'] / rates['hf']:.2f}x | {mfu['minimind']} | {mfu['hf']} | "
               f"{kinds['minimind']} / {kinds['hf']} |")
        report.append(row)
        print(row, flush=True)
    report.append(f"\nMFU against a peak of {peak / 1e12:.0f} TFLOP/s bf16 dense. Goal: >= 45% on medium.\n"
                  if peak else "\nMFU: unknown peak for this device (give --peak_tflops).\n")


def decoding(args, s, device, report):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    report.append(f"## Decode (greedy, {str(dtype).replace('torch.', '')} weights, prompt {s['prompt']}, "
                  f"{s['new']} new tokens)\n")
    report.append("| preset | batch | minimind tok/s | minimind + compile tok/s | HF generate tok/s | "
                  "minimind / HF | compiled / HF | same tokens |")
    report.append("|---|---|---|---|---|---|---|---|")
    for name in s["decode_presets"]:
        ours, hf = models(name, device, dtype)
        ours.eval(), hf.eval()
        for batch in s["decode_batches"]:
            ids = torch.randint(3, ours.config.vocab_size, (batch, s["prompt"]), device=device)
            n = s["new"]
            fns = {"ours": lambda: ours.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False),
                   "compiled": lambda: ours.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                                     compile=args.compile),
                   "hf": lambda: hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)}
            out = {k: fn() for k, fn in fns.items()}  # warm-up (and the compile)
            same = torch.equal(out["ours"], out["hf"])
            best = {k: min(timed(fn, device) for _ in range(s["rounds"])) for k, fn in fns.items()}
            rate = {k: batch * n / t for k, t in best.items()}
            row = (f"| {name} | {batch} | {rate['ours']:,.0f} | {rate['compiled']:,.0f} | {rate['hf']:,.0f} | "
                   f"{rate['ours'] / rate['hf']:.2f}x | {rate['compiled'] / rate['hf']:.2f}x | "
                   f"{'yes' if same else 'no (bf16 ties)'} |")
            report.append(row)
            print(row, flush=True)
    report.append("")


def serving(args, s, device, report):
    import uvicorn

    from minimind.serve.app import create_app
    from minimind.serve.server import listen
    from minimind.tokenizer import load_tokenizer

    name = s["decode_presets"][0]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ours, _ = models(name, device, dtype)
    ours.eval()
    app = create_app(ours, load_tokenizer(), model_name=name, max_tokens_limit=s["stream_tokens"],
                     max_batch=s["streams"], compile=args.serve_compile)
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/chat/completions"

    def ask(i):
        body = json.dumps({"model": name, "max_tokens": s["stream_tokens"], "temperature": 0.8, "seed": i,
                           "messages": [{"role": "user", "content": f"Tell me story number {i}."}]}).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as r:
            return json.loads(r.read())["usage"]["completion_tokens"]

    try:
        with concurrent.futures.ThreadPoolExecutor(s["streams"]) as pool:
            for _ in range(2):  # warm-up: the compile, then the recompiles for the batch sizes that arrive
                list(pool.map(ask, range(s["streams"])))
            start = time.perf_counter()
            tokens = sum(pool.map(ask, range(s["streams"])))
            seconds = time.perf_counter() - start
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    mode = "compiled" if args.serve_compile else "eager"
    report.append(f"## Serving ({name} preset, `minimind serve`'s app, {mode}, "
                  f"{s['streams']} concurrent chat requests of up to {s['stream_tokens']} tokens)\n")
    report.append("| streams | completion tokens | seconds | tokens/s overall | tokens/s per stream |")
    report.append("|---|---|---|---|---|")
    row = (f"| {s['streams']} | {tokens} | {seconds:.2f} | {tokens / seconds:,.0f} | "
           f"{tokens / seconds / s['streams']:,.1f} |")
    report.append(row + "\n")
    print(row, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="default: cuda when there is one, else cpu")
    p.add_argument("--smoke", action="store_true", help="toy sizes (tiny preset, a few steps): checks the script "
                                                        "end to end in a minute on a CPU")
    p.add_argument("--no_compile", dest="compile", action="store_false", help="skip torch.compile")
    p.add_argument("--serve_compile", action="store_true", help="serve with --compile too (on a CPU smoke run its "
                   "decode step recompiled on every round of requests, so it is off unless asked)")
    p.add_argument("--peak_tflops", type=float, help="the device's dense bf16 peak, when it is not in the table")
    p.add_argument("--parts", default="train,decode,serve")
    p.add_argument("--out", help="write the report here (markdown)")
    args = p.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    s = SMOKE if args.smoke else FULL
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    report = [f"# GPU benchmark{' (smoke sizes)' if args.smoke else ''}\n",
              f"{what}; torch {torch.__version__}; compile {'on' if args.compile else 'off'}; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n"]
    print(report[1], flush=True)
    start = time.perf_counter()
    parts = args.parts.split(",")
    for part, fn in (("train", training), ("decode", decoding), ("serve", serving)):
        if part in parts:
            fn(args, s, device, report)
            if args.out:  # after each part: a run cut short keeps what it measured
                Path(args.out).write_text("\n".join(report) + "\n", encoding="utf-8")
    report.append(f"Total time: {time.perf_counter() - start:.0f} s.")
    if args.out:
        Path(args.out).write_text("\n".join(report) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
