"""Training-step throughput (forward + backward + AdamW) of MiniMind vs Hugging Face LlamaForCausalLM.

Both models get the same config and the same weights; steps alternate between them so that machine
noise hits both alike. Reports tokens/s per model and the ratio ours / HF, in fp32 and under bf16
autocast.

    python benchmarks/train_step.py                      # small preset, batch 8 x 256, CPU
    python benchmarks/train_step.py --device cuda --batch 32 --seq 512
"""

import argparse
import contextlib
import platform
import time

import torch
from transformers import LlamaForCausalLM

from minimind import MiniMindForCausalLM, preset
from minimind.export.hf import llama_config


def make_step(model, ids, dtype, device):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, foreach=True)

    def step():
        ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        with ctx:
            loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def measure(args, dtype):
    device = torch.device(args.device)
    config = preset(args.preset)
    torch.manual_seed(0)
    ours = MiniMindForCausalLM(config).to(device).train()
    hf = LlamaForCausalLM(llama_config(config)).to(device).train()
    hf.config._attn_implementation = "sdpa"
    hf.load_state_dict(ours.state_dict())
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=device)
    steps = {"minimind": make_step(ours, ids, dtype, device), "hf_llama": make_step(hf, ids, dtype, device)}
    for step in steps.values():  # warm-up
        step()
    times = {name: [] for name in steps}
    for r in range(args.rounds):
        order = list(steps.items()) if r % 2 == 0 else list(steps.items())[::-1]  # ABBA: no first-mover bias
        for name, step in order:
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t) / args.steps)
    tokens = args.batch * args.seq
    best = {name: tokens / min(ts) for name, ts in times.items()}  # tokens/s of the best round
    return best["minimind"], best["hf_llama"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--dtypes", default="fp32,bf16")
    args = p.parse_args()
    print(f"{args.preset} preset, batch {args.batch} x {args.seq}, device {args.device}, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    print("| dtype | minimind tok/s | HF Llama tok/s | ratio |")
    print("|---|---|---|---|")
    for name in args.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        ours, hf = measure(args, dtype)
        print(f"| {name} | {ours:,.0f} | {hf:,.0f} | {ours / hf:.2f} |", flush=True)


if __name__ == "__main__":
    main()
