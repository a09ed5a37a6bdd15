"""A batch-1 decode step's matrix products alone: library kernels against the fused reductions of
`minimind.kernels.matvec` under torch.compile, on the shapes of a preset (every Linear once, one row).

    python benchmarks/matvec.py --threads 1
    python benchmarks/matvec.py --threads 2 --preset small

Rows: fp32 and bf16 weights through `F.linear`, and through `MatVec` compiled (one graph for the whole step);
int8 weights through `torch._weight_int8pack_mm` (what `Int8Linear` runs for several rows) and through `MatVec`'s
reduction; bf16 and int8 through minimind's own one-row kernels (`minimind.kernels.build`: what the compiled
decode step runs where the CPU has them, and eager int8 for one row); int4 through
`torch._weight_int4pack_mm_for_cpu` (what `Int4Linear` runs, eagerly and compiled). Time per step: the best
of `--rounds` rounds of 50 steps, and the rate at which it streams the weights' bytes (scales included). The memory
rows time a plain sum over fp32 tensors of the same byte counts: what this machine streams at those sizes, the floor
for a product that reads every weight once.
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from minimind import MiniMindForCausalLM, preset
from minimind.kernels.build import vector_ops
from minimind.kernels.matvec import MatVec, use_row_kernels
from minimind.quantize import Int4Linear, Int8Linear


def best_ms(step, rounds, n=50) -> float:
    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            step()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    linears = [m for m in MiniMindForCausalLM(preset(args.preset)).modules() if type(m) is nn.Linear]
    inputs = {m.in_features: torch.randn(1, 1, m.in_features) for m in linears}
    rows = []

    def library(layers, dtype):
        xs = {k: v.to(dtype) for k, v in inputs.items()}

        def step():
            for m in layers:
                m(xs[m.in_features]) if not isinstance(m, nn.Linear) else F.linear(xs[m.in_features], m.weight)
        return step

    def fused(layers, dtype, ops=frozenset()):
        wrapped = nn.ModuleList(MatVec(m, ops) for m in layers)
        xs = {k: v.to(dtype) for k, v in inputs.items()}

        @torch.compile(fullgraph=True, options={"cpp_wrapper": True})  # as the decode step: ops called from C++
        def all_products(xs):
            return [m(xs[m.layer.in_features]) for m in wrapped]
        return lambda: all_products(xs)

    def size(layers) -> int:
        return sum(t.numel() * t.element_size() for m in layers for t in [*m.parameters(), *m.buffers()])

    with torch.inference_mode():
        for name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
            layers = [nn.Linear(m.in_features, m.out_features, bias=False).to(dtype) for m in linears]
            for layer, m in zip(layers, linears):
                layer.weight.copy_(m.weight)
            rows.append((f"{name} `F.linear`", size(layers), best_ms(library(layers, dtype), args.rounds)))
            rows.append((f"{name} fused (`MatVec`, compiled)", size(layers), best_ms(fused(layers, dtype), args.rounds)))
            if name == "bf16" and "bf16" in vector_ops():
                rows.append(("bf16 minimind kernel (`matvec_bf16`, compiled)", size(layers),
                             best_ms(fused(layers, dtype, vector_ops()), args.rounds)))
        int8 = [Int8Linear(m) for m in linears]
        kernel = "q8" in vector_ops()  # PyTorch's kernel and the reduction first
        rows.append(("int8 `_weight_int8pack_mm` (Int8Linear)", size(int8),
                     best_ms(library(int8, torch.float32), args.rounds)))
        rows.append(("int8 fused (`MatVec`, compiled)", size(int8), best_ms(fused(int8, torch.float32), args.rounds)))
        if kernel:
            for m in int8:
                use_row_kernels(m)
            rows.append(("int8 minimind kernel (`matvec_q8`, compiled)", size(int8),
                         best_ms(fused(int8, torch.float32), args.rounds)))
        int4 = [Int4Linear(m) for m in linears]
        rows.append(("int4 `_weight_int4pack_mm_for_cpu` (Int4Linear)", size(int4),
                     best_ms(library(int4, torch.float32), args.rounds)))
        for nbytes in sorted({n for _, n, _ in rows}, reverse=True):
            flat = torch.ones(nbytes // 4)
            rows.append((f"memory: a sum over {nbytes / 2**20:.0f} MiB of fp32", nbytes,
                         best_ms(flat.sum, args.rounds)))
    print(f"{args.preset} preset, {len(linears)} products a step, {args.threads} thread(s), torch {torch.__version__}")
    print("\n| products | MiB | ms a step | GB/s |\n|---|---|---|---|")
    for name, nbytes, ms in rows:
        print(f"| {name} | {nbytes / 2**20:.1f} | {ms:.2f} | {nbytes / ms / 1e6:.1f} |")


if __name__ == "__main__":
    main()
