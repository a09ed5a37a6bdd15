"""A batch-1 decode step's matrix products alone: library kernels against the fused reductions of
`minimind.infer.matvec` under torch.compile, on the shapes of a preset (every Linear once, one row).

    python benchmarks/matvec.py --threads 1
    python benchmarks/matvec.py --threads 2 --preset small

Rows: fp32 and bf16 weights through `F.linear`, and through `MatVec` compiled (one graph for the whole step);
int8 weights through `torch._weight_int8pack_mm` (what `Int8Linear` runs eagerly) and through `MatVec`; int4
through `torch._weight_int4pack_mm_for_cpu` (what `Int4Linear` runs, eagerly and compiled). Time per step: the best
of `--rounds` rounds of 50 steps.
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from minimind import MiniMindForCausalLM, preset
from minimind.infer.matvec import MatVec
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

    def fused(layers, dtype):
        wrapped = nn.ModuleList(MatVec(m) for m in layers)
        xs = {k: v.to(dtype) for k, v in inputs.items()}

        @torch.compile(fullgraph=True)
        def all_products(xs):
            return [m(xs[m.layer.in_features]) for m in wrapped]
        return lambda: all_products(xs)

    with torch.inference_mode():
        for name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
            layers = [nn.Linear(m.in_features, m.out_features, bias=False).to(dtype) for m in linears]
            for layer, m in zip(layers, linears):
                layer.weight.copy_(m.weight)
            rows.append((f"{name} `F.linear`", best_ms(library(layers, dtype), args.rounds)))
            rows.append((f"{name} fused (`MatVec`, compiled)", best_ms(fused(layers, dtype), args.rounds)))
        int8 = [Int8Linear(m) for m in linears]
        rows.append(("int8 `_weight_int8pack_mm` (Int8Linear)", best_ms(library(int8, torch.float32), args.rounds)))
        rows.append(("int8 fused (`MatVec`, compiled)", best_ms(fused(int8, torch.float32), args.rounds)))
        int4 = [Int4Linear(m) for m in linears]
        rows.append(("int4 `_weight_int4pack_mm_for_cpu` (Int4Linear)",
                     best_ms(library(int4, torch.float32), args.rounds)))
    print(f"{args.preset} preset, {len(linears)} products a step, {args.threads} thread(s), torch {torch.__version__}")
    print("\n| products | ms a step |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
