"""RL rollout speed: the batched decode engine (all samples of all prompts in one batch, KV cache) vs generating the
same number of samples one by one, and the time split of one GRPO step (rollout, old + reference log-probs, update).

Random weights, prompts from the built-in arithmetic task, every row decoded for `--max_new_tokens` steps (no early
stop), so both ways produce the same number of tokens. The two ways alternate, round after round; the best round
of each counts.

    python benchmarks/rollout.py                                  # tiny preset, CPU, 4 prompts x 6 samples x 64 tokens
    python benchmarks/rollout.py --preset small --threads 1 --rounds 2
    python benchmarks/rollout.py --device cuda --dtype bf16 --prompts 16 --preset small
"""

import argparse
import platform
import time

import torch

from minimind import MiniMindForCausalLM, preset
from minimind.data.tasks import PromptDataset
from minimind.tokenizer import load_tokenizer
from minimind.train.dpo import frozen_reference
from minimind.train.rl import group_advantages, grpo_loss
from minimind.train.rollout import forward_logps, generate_rollouts


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--num_generations", type=int, default=6)
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    torch.manual_seed(0)
    model = MiniMindForCausalLM(preset(args.preset, dropout=0.0)).to(device)
    tok = load_tokenizer()
    data = PromptDataset(None, tok, 256)
    prompts = [data[i]["prompt_ids"] for i in range(args.prompts)]
    G, n = args.num_generations, args.max_new_tokens
    tokens = len(prompts) * G * n
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else torch.autocast(device.type,
                                                                                                      enabled=False)

    def batched():
        return generate_rollouts(model, prompts, G, n, tok.eos_token_id, 1.0, torch.Generator(device).manual_seed(0),
                                 full_length=True)

    def one_by_one():
        for i, p_ids in enumerate(prompts):
            for g in range(G):
                generate_rollouts(model, [p_ids], 1, n, tok.eos_token_id, 1.0,
                                  torch.Generator(device).manual_seed(i * G + g), full_length=True)

    best_b = best_s = float("inf")
    with autocast:
        batched()  # warm up
        for _ in range(args.rounds):
            best_b = min(best_b, timed(batched, device)[0])
            best_s = min(best_s, timed(one_by_one, device)[0])

        # one GRPO step, split
        reference = frozen_reference(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
        t_roll, ro = timed(batched, device)

        def logps():
            with torch.no_grad():
                return forward_logps(model, ro.input_ids, ro.attention_mask)[0], \
                    forward_logps(reference, ro.input_ids, ro.attention_mask)[0]
        t_logp, (old, ref) = timed(logps, device)
        adv = group_advantages(torch.randn(len(prompts) * G, device=device), G)

        def update():
            new, out = forward_logps(model, ro.input_ids, ro.attention_mask)
            loss, _ = grpo_loss(new, old, ref, adv, ro.completion_mask, 0.02)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        t_update, _ = timed(update, device)

    params = sum(q.numel() for q in model.parameters()) / 1e6
    print(f"{args.preset} preset ({params:.1f}M), {args.device} {args.dtype}, {len(prompts)} prompts x {G} samples x "
          f"{n} new tokens, torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor()}\n")
    print("| rollout | tokens/s | ratio |\n|---|---|---|")
    print(f"| batched engine (one batch, KV cache) | {tokens / best_b:,.0f} | {best_s / best_b:.1f}x |")
    print(f"| one sample at a time | {tokens / best_s:,.0f} | 1.0x |\n")
    total = t_roll + t_logp + t_update
    print("| one GRPO step | seconds | share |\n|---|---|---|")
    for name, t in (("rollout", t_roll), ("old + reference log-probs", t_logp), ("update (forward + backward + "
                                                                                "AdamW)", t_update)):
        print(f"| {name} | {t:.3f} | {100 * t / total:.0f}% |")


if __name__ == "__main__":
    main()
