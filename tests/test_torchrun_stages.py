"""Every training stage under `torchrun --nproc_per_node 2` on the CPU (gloo): pretraining, SFT, LoRA, DPO,
distillation, GRPO, PPO and agent RL (pretraining with FSDP and compile, and resuming on another world size, are
tests/test_train.py's).

A stage run on 2 processes with micro-batch b must log the same losses, step by step, as one process with micro-batch
b and 2 accumulation steps (the same global batch, the same samples in the same micro-batches: see
`trainer.EpochBatches`). Dropout is off (its masks come from each process's own random stream).

To keep this module fast, one torchrun launch runs every stage: this file is also the script torchrun runs
(`__main__` below), which calls `minimind.cli.main` for each stage in turn in the same two processes; the process
group a stage's `fit` leaves is kept for the next (re-creating a gloo group in a process that had one hangs)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["--max_seq_len", "64", "--batch_size", "2", "--log_interval", "1", "--eval_interval", "0",
          "--eval_batches", "1", "--dtype", "fp32", "--warmup_steps", "0", "--learning_rate", "1e-2",
          "--max_steps", "3", "--dropout", "0", "--save_interval", "0", "--seed", "7"]
RL = ["--num_generations", "2", "--max_new_tokens", "4", "--beta", "0.1", "--max_seq_len", "128"]
DETERMINISTIC = ["pretrain", "sft", "lora", "dpo", "distill"]
RL_STAGES = ["grpo", "ppo", "agent"]


def stage_argv(name: str, data: Path) -> list[str]:
    """`minimind ...` arguments of stage `name` on the small files in `data` (without --output_dir)."""
    base, chat, pairs, prompts = (str(data / name) for name in ("base", "chat.jsonl", "pairs.jsonl", "prompts.jsonl"))
    return {
        "pretrain": ["train", "--data", str(data / "corpus.txt"), "--hidden_size", "32", "--num_layers", "2",
                     "--num_heads", "2", "--num_kv_heads", "1"],
        "sft": ["train", "--stage", "sft", "--pretrained_path", base, "--data", chat],
        "lora": ["lora", "--pretrained_path", base, "--data", chat, "--lora_rank", "4", "--lora_dropout", "0"],
        "dpo": ["dpo", "--pretrained_path", base, "--data", pairs],
        "distill": ["distill", "--teacher", base, "--stage", "sft", "--data", chat, "--hidden_size", "32",
                    "--num_layers", "1", "--num_heads", "2", "--num_kv_heads", "1"],
        "grpo": ["grpo", "--pretrained_path", base, "--data", prompts, *RL],
        "ppo": ["ppo", "--pretrained_path", base, "--data", prompts, *RL],
        "agent": ["agent", "--pretrained_path", base, "--data", prompts, *RL, "--max_seq_len", "256",
                  "--max_turns", "2"],
    }[name]


def run_stages(spec: dict[str, list[str]], out: Path) -> None:
    """Run each stage's `minimind` command line with --output_dir out/NAME, in this process (alone, or as one rank
    of torchrun's group)."""
    from minimind.cli import main

    for name, argv in spec.items():
        main([*argv[:1], *COMMON, *argv[1:], "--output_dir", str(out / name)])


def logged_steps(out: Path) -> list[dict]:
    """The metrics.jsonl records of the training steps, without the throughput (a timing)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records if "loss" in r]


def logged_losses(out: Path) -> list[float]:
    return [r["loss"] for r in logged_steps(out)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny base model (with the shipped tokenizer), a small text corpus and SFT, preference and prompt files."""
    from helpers import save_model_dir, tiny_model

    root = tmp_path_factory.mktemp("stages")
    save_model_dir(tiny_model(hidden=32, max_position_embeddings=512), root / "base")
    with (root / "chat.jsonl").open("w", encoding="utf-8") as f:
        for i in range(40):
            f.write(json.dumps({"conversations": [{"role": "user", "content": f"What is {i} plus one?"},
                                                  {"role": "assistant", "content": f"It is {i + 1}."}]}) + "\n")
    with (root / "pairs.jsonl").open("w", encoding="utf-8") as f:
        for i in range(40):
            f.write(json.dumps({"prompt": f"What is {i} plus one?", "chosen": f"It is {i + 1}.",
                                "rejected": f"I do not know {i}."}) + "\n")
    (root / "corpus.txt").write_text("\n\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog number "
                                                 f"{i * 7 % 13}." for i in range(300)), encoding="utf-8")
    with (root / "prompts.jsonl").open("w", encoding="utf-8") as f:
        for i in range(40):
            f.write(json.dumps({"prompt": f"What is {i} * 7?", "answer": str(i * 7)}) + "\n")
    return root


@pytest.fixture(scope="module")
def runs(data):
    """(single-process output root, 2-process output root), every stage run in each."""
    names = DETERMINISTIC + RL_STAGES
    spec = {name: stage_argv(name, data) for name in names}
    single = data / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1)
    try:
        run_stages({k: [*v, "--accumulation_steps", "2"] for k, v in spec.items()}, single)
    finally:
        torch.set_num_threads(threads)
    (data / "spec.json").write_text(json.dumps(spec))
    double = data / "double"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        __file__, str(data / "spec.json"), str(double)], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return single, double


@pytest.mark.parametrize("stage", DETERMINISTIC)
def test_two_processes_log_the_single_process_losses(runs, stage):
    """The loss and every metric the stage logs (DPO's margin and accuracy, distillation's ce and kl, the gradient
    norm, ...) are those of the global batch, as one process logs them."""
    single, double = (root / stage for root in runs)
    a, b = logged_losses(single), logged_losses(double)
    assert len(a) == len(b) == 3 and all(math.isfinite(x) for x in a)
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)
    assert len(set(a)) > 1  # it trained: the loss moved (a run that never stepped would match trivially)
    for one, two in zip(logged_steps(single), logged_steps(double)):
        assert one.keys() == two.keys()
        assert all(abs(one[k] - two[k]) <= 1e-4 * max(1.0, abs(one[k])) for k in one), (one, two)


@pytest.mark.parametrize("stage", DETERMINISTIC + RL_STAGES)
def test_two_process_runs_save_one_complete_model(runs, stage, data):
    """The 2-process run saves a loadable model (a LoRA run its adapter) that trained: for the deterministic stages
    the very weights the single process saves; for RL, weights moved from the base."""
    from safetensors.torch import load_file

    single, double = (root / stage for root in runs)
    assert len(logged_losses(double)) == 3 and all(math.isfinite(x) for x in logged_losses(double))
    name = "adapter_model.safetensors" if stage == "lora" else "model.safetensors"
    a, b = load_file(single / name), load_file(double / name)
    assert set(a) == set(b)
    if stage == "lora":  # lora_B starts at zero
        assert any(b[k].abs().sum() > 0 for k in b if "lora_B" in k), "the 2-process run did not train the adapter"
    elif stage not in ("pretrain", "distill"):  # (these start from scratch, not from the base)
        start = load_file(data / "base" / "model.safetensors")
        assert any(not torch.equal(start[k], b[k]) for k in b), "the 2-process run did not change the weights"
    if stage in DETERMINISTIC:  # the same steps: the same weights
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


@pytest.mark.parametrize("stage", RL_STAGES)
def test_two_process_rl_logs_the_single_process_losses(runs, stage):
    """Each prompt's samples come from a generator seeded by its index in the data (`rl.rollout_seed`), and PPO
    whitens its advantages over the global batch, so 2 processes train on what 1 process does."""
    single, double = (root / stage for root in runs)
    a, b = logged_losses(single), logged_losses(double)
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)


if __name__ == "__main__":  # one rank of the torchrun launch in `runs`: python THIS spec.json OUT
    destroy = torch.distributed.destroy_process_group
    torch.distributed.destroy_process_group = lambda *a, **k: None  # the next stage reuses the group (see above)
    run_stages(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
    destroy()
