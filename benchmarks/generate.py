"""Generation speed of minimind's decode loop vs Hugging Face `LlamaForCausalLM.generate`, same weights, same run.

Greedy decoding of a random-weight model (`min_new_tokens` = `max_new_tokens`, so both run every step): decode
tokens/s at batch 1 and 8 (new tokens over the whole `generate` call, prefill included) and prefill tokens/s
(`generate` with one new token). Calls alternate between the two implementations, round after round, and the
best round of each counts, so that noise from other processes hits both alike. Both outputs are checked equal.

    python benchmarks/generate.py                          # small preset, CPU, 32-token prompt, 256 new tokens
    python benchmarks/generate.py --threads 1 --rounds 5
    python benchmarks/generate.py --compile                # also minimind with torch.compile (compiles first)
    python benchmarks/generate.py --device cuda --dtype bf16
    python benchmarks/generate.py --quantize               # also minimind with int8 weights (minimind/quantize.py)
"""

import argparse
import platform
import time

import torch
from transformers import LlamaForCausalLM

from minimind import MiniMindForCausalLM, preset
from minimind.export.hf import llama_config


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def matmul_floor(model, batch, device, rounds) -> float:
    """Steps/s of the decode step's matrix products alone (every Linear once, on a (batch, 1, in) input): the
    weights must stream through the core once per step whatever the code around them does."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {m.in_features: torch.randn(batch, 1, m.in_features, device=device, dtype=m.weight.dtype)
              for m in linears}

    def step():
        for m in linears:
            torch.nn.functional.linear(inputs[m.in_features], m.weight)
    with torch.inference_mode():
        step()
        best = min(timed(lambda: [step() for _ in range(20)], device) for _ in range(rounds)) / 20
    return 1 / best


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    p.add_argument("--new", type=int, default=256, help="new tokens")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="add minimind with torch.compile of the decode step")
    p.add_argument("--quantize", action="store_true", help="add minimind with int8 weights (and +compile)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    config = preset(args.preset)
    torch.manual_seed(0)
    ours = MiniMindForCausalLM(config).to(device, dtype).eval()
    hf = LlamaForCausalLM(llama_config(config)).to(device, dtype).eval()
    hf.config._attn_implementation = "sdpa"
    hf.load_state_dict(ours.state_dict())
    if args.quantize:
        import copy

        from minimind.quantize import quantize_int8
        int8 = quantize_int8(copy.deepcopy(ours))
    print(f"{args.preset} preset, {args.dtype}, device {args.device}, prompt {args.prompt}, {args.new} new tokens, "
          f"greedy; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")

    def ours_fn(ids, n, compile=False, model=ours):  # the same call as Hugging Face's (eos from the generation config)
        return lambda: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, compile=compile)

    def hf_fn(ids, n):
        return lambda: hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        ids = torch.randint(3, config.vocab_size, (batch, args.prompt), device=device)
        a, b = ours_fn(ids, args.new)(), hf_fn(ids, args.new)()
        same = torch.equal(a, b)
        for what, n, tokens in (("decode", args.new, batch * args.new), ("prefill", 1, batch * args.prompt)):
            fns = {"minimind": ours_fn(ids, n), "hf": hf_fn(ids, n)}
            if args.compile:
                fns["minimind+compile"] = ours_fn(ids, n, compile=True)
                start = time.perf_counter()
                c = fns["minimind+compile"]()  # compiles (dynamic shapes: once for all lengths)
                print(f"(torch.compile: first call {time.perf_counter() - start:.0f} s; same tokens as eager: "
                      f"{'yes' if torch.equal(c, ours_fn(ids, n)()) else 'NO'})")
            if args.quantize:
                fns["minimind int8"] = ours_fn(ids, n, model=int8)
                q = fns["minimind int8"]()
                agree = (q == a).all(dim=0).long().cumprod(0).sum().item() - args.prompt if n > 1 else 0
                if n > 1:
                    print(f"(int8: the first {agree} of {n} new tokens equal fp32's in every row)")
                if args.compile:
                    fns["minimind int8+compile"] = ours_fn(ids, n, compile=True, model=int8)
                    fns["minimind int8+compile"]()
            for fn in fns.values():  # warm-up
                fn()
            best = {name: float("inf") for name in fns}
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    best[name] = min(best[name], timed(fn, device))
            rate = {name: tokens / t for name, t in best.items()}
            rows.append((what, batch, rate, same))
            print(f"  {what} batch {batch}: " + ", ".join(f"{k} {v:,.0f} tok/s" for k, v in rate.items()), flush=True)
            if what == "decode":
                floor = batch * matmul_floor(ours, batch, device, args.rounds)
                print(f"  (decode bound: the step's matmuls alone, eager, batch {batch}: {floor:,.0f} tok/s)")

    names = list(rows[0][2])
    ours_names = [n for n in names if n != "hf"]
    print("\n| measure | batch | " + " | ".join(f"{n} tok/s" for n in names) + " | " +
          " | ".join(f"{n} / HF" for n in ours_names) + " | minimind = HF tokens |")
    print("|---|---|" + "---|" * (len(names) + len(ours_names)) + "---|")
    for what, batch, rate, same in rows:
        print(f"| {what} | {batch} | " + " | ".join(f"{rate[n]:,.0f}" for n in names) + " | " +
              " | ".join(f"{rate[n] / rate['hf']:.2f}x" for n in ours_names) + f" | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
