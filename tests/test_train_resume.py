"""Each fine-tuning stage resumes exactly after SIGKILL: `minimind lora|dpo|distill` killed mid-run, then resumed
with --resume, ends with the same weights as an uninterrupted run (LoRA re-applies its adapters before the state
loads; DPO rebuilds its reference from the base; distillation reloads its teacher)."""

import json
import re

import pytest
import torch
from helpers import kill_once_saved, tiny_model

from minimind.cli.train import parse_args
from minimind.train.resume import STATE_FILE
from minimind.train.distill import run_distill
from minimind.train.dpo import run_dpo
from minimind.train.lora_finetune import run_lora

RUN = ["--max_seq_len", "32", "--batch_size", "4", "--log_interval", "2", "--eval_interval", "0", "--eval_batches", "1",
       "--dtype", "fp32", "--max_steps", "40", "--save_steps", "4", "--learning_rate", "3e-3"]
RUNNERS = {"lora": run_lora, "dpo": run_dpo, "distill": run_distill}


pytestmark = pytest.mark.usefixtures("one_thread")  # the killed run uses one thread too: the same arithmetic


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny base model (also the teacher), 200 conversations and 200 preference pairs."""
    from minimind.tokenizer import load_tokenizer, save_tokenizer

    root = tmp_path_factory.mktemp("finetune")
    base = tiny_model()
    base.save_pretrained(root / "base")
    save_tokenizer(load_tokenizer(), root / "base")
    with (root / "chat.jsonl").open("w", encoding="utf-8") as f:
        for i in range(200):
            f.write(json.dumps({"conversations": [{"role": "user", "content": f"What is {i} plus one?"},
                                                  {"role": "assistant", "content": f"It is {i + 1}."}]}) + "\n")
    with (root / "pairs.jsonl").open("w", encoding="utf-8") as f:
        for i in range(200):
            f.write(json.dumps({"prompt": f"What is {i} plus one?", "chosen": f"It is {i + 1}.",
                                "rejected": f"It is {i + 7}, I think."}) + "\n")
    return root


def stage_flags(stage, files):
    if stage == "lora":
        return ["--pretrained_path", str(files / "base"), "--data", str(files / "chat.jsonl")]
    if stage == "dpo":
        return ["--pretrained_path", str(files / "base"), "--data", str(files / "pairs.jsonl")]
    return ["--teacher", str(files / "base"), "--data", str(files / "chat.jsonl"), "--hidden_size", "32",
            "--num_layers", "1", "--num_heads", "2", "--num_kv_heads", "1", "--dropout", "0.1"]


def final_state(out):
    return torch.load(out / STATE_FILE, weights_only=True)["model"]


@pytest.mark.parametrize("stage", ["lora", "dpo", "distill"])
def test_stage_resumes_exactly_after_sigkill(stage, files, tmp_path):
    flags = [*RUN, *stage_flags(stage, files)]
    straight = tmp_path / "straight"
    RUNNERS[stage](parse_args(command=stage, argv=[*flags, "--output_dir", str(straight)]))

    killed = tmp_path / "killed"
    kill_once_saved([stage, *flags], killed)  # a saved state well into the run, then SIGKILL
    assert not (killed / "model_final.pth").exists() and not (killed / "adapter_model.safetensors").exists(), \
        "the run finished before it could be killed"
    steps = torch.load(killed / STATE_FILE, weights_only=True)["train"]["step"]
    assert 4 <= steps < 40

    RUNNERS[stage](parse_args(command=stage, argv=[*flags, "--output_dir", str(killed), "--resume"]))
    log = (killed / "metrics.jsonl").read_text()
    assert re.search(r'"step": 40,', log)
    a, b = final_state(straight), final_state(killed)
    assert set(a) == set(b)
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 1e-6, name
    if stage == "lora":
        from safetensors.torch import load_file
        x, y = load_file(straight / "adapter_model.safetensors"), load_file(killed / "adapter_model.safetensors")
        assert all((x[k] - y[k]).abs().max() <= 1e-6 for k in x)
