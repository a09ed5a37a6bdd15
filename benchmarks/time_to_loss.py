"""Token efficiency: how many optimizer steps each training recipe needs to reach a held-out loss.

Every recipe trains the same model (the `tiny` preset, the same initial weights: seed 42) on the same packed
built-in corpus in the same order, 16 x 256 tokens a step, through minimind's own Trainer, and is evaluated on the
held-out split every `--eval_every` steps. The recipes differ only in optimizer, learning rate and schedule:

- `minimind`: MiniMind's pretraining recipe: AdamW at 5e-4, no warmup, cosine to 0.1x, weight decay 0.01, 600 steps.
- `fast`: this project's fast recipe (the README's main job): Muon for the hidden weight matrices and AdamW for the
  embedding and norms (`--optimizer muon`), 1e-2 with 20 warmup steps, cosine to 0.1x, 200 steps.
- `adamw`: the earlier README recipe, AdamW at 3e-3 with 30 warmup steps, 300 steps (with `--recipes`).

Writes a markdown table (steps to reach each loss; '-' = never within its steps) and, beside it, each recipe's
settings and curve as JSON (`--reuse` takes a recipe's curve from there when its settings have not changed).

    python benchmarks/time_to_loss.py                      # minimind vs fast, ~10 minutes on an idle 2-core CPU
    python benchmarks/time_to_loss.py --recipes minimind,fast,adamw --out benchmarks/time_to_loss.md
"""

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch

from minimind.train.config import TrainConfig

RECIPES = {
    "minimind": dict(optimizer="adamw", learning_rate=5e-4, warmup_steps=0, min_lr_ratio=0.1, weight_decay=0.01,
                     max_steps=600),
    "fast": dict(optimizer="muon", learning_rate=1e-2, warmup_steps=20, min_lr_ratio=0.1, weight_decay=0.01,
                 max_steps=200),
    "adamw": dict(optimizer="adamw", learning_rate=3e-3, warmup_steps=30, min_lr_ratio=0.1, weight_decay=0.01,
                  max_steps=300),
}
COMMON = dict(preset="tiny", max_seq_len=256, batch_size=16, dropout=0.0, epochs=3, seed=42, log_interval=10 ** 6,
              save_steps=0, device="cpu")


def curve(name: str, recipe: dict, eval_every: int, out_dir: Path) -> tuple[list[tuple[int, float]], float]:
    """Train one recipe; returns [(step, held-out loss)] and the seconds it took."""
    from minimind.data.datasets import collate
    from minimind.train.setup import build_model, fit, load_data, start

    config = TrainConfig(**{**COMMON, **recipe, "eval_interval": eval_every, "output_dir": str(out_dir / name)})
    config, dist_info, tokenizer = start(config, "train")
    model = build_model(config, tokenizer)
    train_set, val_set = load_data(config, tokenizer)
    t = time.perf_counter()
    fit(config, "train", model, train_set, val_set, dist_info,
        collate_fn=lambda b: collate(b, pad_id=tokenizer.pad_token_id))
    seconds = time.perf_counter() - t
    points = [json.loads(line) for line in (out_dir / name / "metrics.jsonl").read_text().splitlines()]
    evals = {p["step"]: p["eval_loss"] for p in points if "eval_loss" in p}
    return sorted(evals.items()), seconds


def first_reaching(points, loss):
    return next((step for step, value in points if value <= loss), None)


def table(curves: dict, levels: list[float]) -> str:
    names = list(curves)
    lines = ["| held-out loss <= | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for level in levels:
        cells = [first_reaching(curves[n], level) for n in names]
        lines.append(f"| {level:.4f} | " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    lines.append("| final (step: loss) | " + " | ".join(f"{curves[n][-1][0]}: {curves[n][-1][1]:.4f}"
                                                      for n in names) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="minimind,fast", help=f"comma-separated, of {', '.join(RECIPES)}")
    p.add_argument("--eval_every", type=int, default=25)
    p.add_argument("--steps_scale", type=float, default=1.0, help="multiply each recipe's steps (a quick check: 0.1)")
    p.add_argument("--out", help="also write the table to this markdown file (and the curves beside it as .json)")
    p.add_argument("--reuse", action="store_true", help="take the curves of recipes already in --out's .json (same "
                                                        "settings) instead of training them again")
    args = p.parse_args()
    logging.disable(logging.INFO)  # the trainer's progress lines; the table is the output
    saved_path = Path(args.out).with_suffix(".json") if args.out else None
    saved = json.loads(saved_path.read_text()) if args.reuse and saved_path and saved_path.exists() else {}
    curves, seconds, runs = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes.split(","):
            recipe = dict(RECIPES[name])
            recipe["max_steps"] = max(1, round(recipe["max_steps"] * args.steps_scale))
            settings = {**COMMON, **recipe, "eval_interval": args.eval_every}
            old = saved.get(name)
            if old and old["settings"] == settings:
                curves[name], seconds[name] = [tuple(x) for x in old["curve"]], old["seconds"]
            else:
                curves[name], seconds[name] = curve(name, recipe, args.eval_every, Path(tmp))
            runs[name] = {"settings": settings, "curve": curves[name], "seconds": seconds[name]}
            print(f"{name}: {recipe}: final held-out loss {curves[name][-1][1]:.4f} after {curves[name][-1][0]} "
                  f"steps ({seconds[name]:.0f} s)", flush=True)
            if saved_path:
                saved_path.write_text(json.dumps({**saved, **runs}, indent=1) + "\n", encoding="utf-8")
    reference = curves[args.recipes.split(",")[0]]
    target = reference[-1][1]
    levels = sorted({x for x in (6.0, 5.5, 5.25, 5.0) if round(x, 4) != round(target, 4)} | {target}, reverse=True)
    header = (f"tiny preset, 16 x 256 tokens a step, built-in corpus, held-out loss every {args.eval_every} steps; "
              f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads")
    body = table(curves, levels)
    lines = [header, "", body, ""]
    for name in curves:
        if name == args.recipes.split(",")[0]:
            continue
        reached = first_reaching(curves[name], target)
        if reached:
            lines.append(f"{name} reaches {args.recipes.split(',')[0]}'s final loss ({target:.4f} at step "
                         f"{reference[-1][0]}) at step {reached}: {reference[-1][0] / reached:.2f}x the token "
                         "efficiency")
        else:
            lines.append(f"{name} does not reach {target:.4f} within its {curves[name][-1][0]} steps")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
