"""Training-step throughput (forward + backward + AdamW) of MiniMind vs Hugging Face LlamaForCausalLM, eager and
compiled.

Both models get the same config and the same weights, and the same optimizer (AdamW, fused where torch has it).
Rounds rotate the order of the variants, so that machine noise hits all alike; each variant's median round counts.
Reports tokens/s per variant and the ratios that matter: ours / HF eager, ours compiled / HF eager and ours compiled
/ HF compiled. `--floor` also times the library kernels that any implementation of this model's step must run,
alone: every matrix product (forward, and the two of backward) at the step's shapes and the attention (SDPA's forward
and backward, or on a CPU, where cheaper, SDPA's forward and the five products of `CausalAttention`'s hand-written
backward), in `--dtypes`' precision; their sum bounds what fusing or removing everything else can win.

    python benchmarks/train_step.py                              # small preset, batch 8 x 256, CPU, bf16 autocast
    python benchmarks/train_step.py --compile --rounds 7         # also both under torch.compile
    python benchmarks/train_step.py --compile --floor            # and the kernel floor of the step
    python benchmarks/train_step.py --device cuda --batch 32 --seq 512 --dtypes bf16 --compile
"""

import argparse
import contextlib
import os
import platform
import statistics
import time
from functools import partial

import torch
from generate import timed  # benchmarks/generate.py, beside this script
from transformers import LlamaForCausalLM

from minimind import MiniMindForCausalLM, preset
from minimind.export.hf import llama_config


def make_step(model, ids, dtype, device, compile):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    fwd = torch.compile(model) if compile else model

    def step():
        ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        with ctx:
            loss = fwd(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def kernel_floor(config, batch: int, seq: int, dtype, device, rounds: int) -> float:
    """Tokens/s of a training step that ran only its library kernels: for every Linear (the tied head once), the
    forward product x W^T and backward's dY W and dY^T x, at M = batch * seq rows; and per layer the causal
    attention's forward and backward (SDPA's, or on a CPU its forward and the products of `CausalAttention`'s
    backward, whichever is cheaper). The best of `rounds` rounds each."""
    import torch.nn.functional as F

    def best(fn) -> float:
        fn()
        return min(timed(fn, device) for _ in range(rounds))

    M, total = batch * seq, 0.0
    shapes = [(m.in_features, m.out_features) for m in MiniMindForCausalLM(config).modules()
              if isinstance(m, torch.nn.Linear)]
    for K, N in set(shapes):
        x, w, dy = (torch.randn(*shape, device=device, dtype=dtype) for shape in [(M, K), (N, K), (M, N)])
        products = [partial(torch.mm, x, w.t()), partial(torch.mm, dy, w), partial(torch.mm, dy.t(), x)]
        total += shapes.count((K, N)) * sum(best(product) for product in products)
    H, Hkv, D = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    q = torch.randn(batch, H, seq, D, device=device, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(batch, Hkv, seq, D, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    dy = torch.randn(batch, H, seq, D, device=device, dtype=dtype)

    def attention():
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != Hkv).backward(dy)
    attention_cost = best(attention)
    if device.type == "cpu":  # or SDPA's forward and the five products of the hand-written backward (CausalAttention)
        qg = q.detach().reshape(batch, Hkv, -1, D)  # a key/value head's query rows (dY has their shape)
        p = torch.randn(batch, Hkv, H // Hkv * seq, seq, dtype=dtype)  # P, and dS alike
        kd, vd = k.detach(), v.detach()
        products = [partial(F.scaled_dot_product_attention, q.detach(), kd, vd, is_causal=True, enable_gqa=H != Hkv),
                    partial(torch.matmul, qg, kd.transpose(-2, -1)),  # the scores again
                    partial(torch.matmul, qg, vd.transpose(-2, -1)),  # dP = dY V^T
                    partial(torch.matmul, p, kd),  # dQ = dS K
                    *[partial(torch.matmul, p.transpose(-2, -1), qg)] * 2]  # dK = dS^T Q, dV = P^T dY
        attention_cost = min(attention_cost, sum(best(product) for product in products))
    total += config.num_hidden_layers * attention_cost
    return M / total


def measure(args, dtype) -> dict[str, float]:
    """Median tokens/s of each variant."""
    device = torch.device(args.device)
    config = preset(args.preset)
    torch.manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=device)
    steps = {}
    for compile in [False, True] if args.compile else [False]:
        ours = MiniMindForCausalLM(config).to(device).train()
        hf = LlamaForCausalLM(llama_config(config)).to(device).train()
        hf.config._attn_implementation = "sdpa"
        hf.load_state_dict(ours.state_dict())
        tag = " compiled" if compile else ""
        steps["minimind" + tag] = make_step(ours, ids, dtype, device, compile)
        steps["hf" + tag] = make_step(hf, ids, dtype, device, compile)
    for name, step in steps.items():  # warm-up (the compiled ones compile here)
        start = time.perf_counter()
        for _ in range(2):
            step()
        if "compiled" in name:
            print(f"  ({name}: compile and 2 steps {time.perf_counter() - start:.0f} s)", flush=True)
    times = {name: [] for name in steps}
    names = list(steps)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate: no first-mover bias
            t = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            times[name].append((time.perf_counter() - t) / args.steps)
    tokens = args.batch * args.seq
    rates = {name: tokens / statistics.median(ts) for name, ts in times.items()}
    if args.floor:
        rates["kernel floor"] = kernel_floor(config, args.batch, args.seq, dtype, device, args.rounds)
    return rates


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--dtypes", default="bf16", help="comma-separated: fp32, bf16, fp16")
    p.add_argument("--compile", action="store_true", help="also both models under torch.compile")
    p.add_argument("--floor", action="store_true", help="also the step's library kernels alone (see kernel_floor)")
    args = p.parse_args()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"{args.preset} preset, batch {args.batch} x {args.seq}, device {args.device}, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads{load}; median of {args.rounds} rounds of {args.steps} steps")
    rows = []
    for name in args.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        rows.append((name, measure(args, dtype)))
    variants = list(rows[0][1])
    ratios = [("minimind", "hf")] + ([("minimind compiled", "hf"), ("minimind compiled", "hf compiled")]
                                     if args.compile else [])
    if args.floor:
        ratios += [("kernel floor", "hf compiled" if args.compile else "hf")]
        ratios += [("minimind compiled" if args.compile else "minimind", "kernel floor")]
    print("\n| dtype | " + " | ".join(f"{v} tok/s" for v in variants) + " | " +
          " | ".join(f"{a} / {b}" for a, b in ratios) + " |")
    print("|---|" + "---|" * (len(variants) + len(ratios)))
    for name, rate in rows:
        print(f"| {name} | " + " | ".join(f"{rate[v]:,.0f}" for v in variants) + " | " +
              " | ".join(f"{rate[a] / rate[b]:.2f}x" for a, b in ratios) + " |", flush=True)


if __name__ == "__main__":
    main()
