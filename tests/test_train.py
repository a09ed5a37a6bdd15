"""The training command and the shared trainer: seed flags and output, checkpoints, exact resume after
SIGKILL, the schedule, accumulation, the NaN guard, DDP over gloo, the SFT stage."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.cli.train import parse_args
from minimind.train.resume import STATE_FILE
from minimind.train.config import TrainConfig
from minimind.train.pretrain import run
from minimind.train.optim import lr_at
from minimind.train.trainer import Trainer, TrainingError

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--hidden_size", "32", "--num_layers", "2", "--num_heads", "2", "--num_kv_heads", "1", "--max_seq_len", "32",
        "--batch_size", "4", "--dropout", "0.1", "--log_interval", "5", "--eval_interval", "0", "--eval_batches", "2"]
PROGRESS = re.compile(r"^Epoch \[\d+/\d+\], Step \[\d+/\d+\], Loss: \d+\.\d{4}, Avg Loss: \d+\.\d{4}$", re.M)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small plain-text corpus (a few thousand tokens) so runs take seconds."""
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    lines = [f"Line {i}: the quick brown fox jumps over the lazy dog number {i * 7 % 13}." for i in range(400)]
    path.write_text("\n\n".join(lines), encoding="utf-8")
    return path


def args_for(corpus, out, *extra):
    return parse_args([*TINY, "--data", str(corpus), "--output_dir", str(out), *extra])


def test_seed_flags_parse_with_seed_defaults():
    a = parse_args([])
    assert (a.hidden_size, a.num_layers, a.num_heads, a.vocab_size, a.max_seq_len, a.dropout, a.use_moe) == (
        512, 8, 8, 6400, 512, 0.1, 0)
    assert (a.epochs, a.batch_size, a.learning_rate, a.weight_decay, a.grad_clip) == (3, 4, 1e-4, 0.01, 1.0)
    assert (a.output_dir, a.pretrained_path, a.log_interval, a.save_interval) == ("./output", "", 10, 1)
    assert a.device == "cpu"  # the best available here; the seed's cuda:0 would fail on this machine
    a = parse_args(["--preset", "tiny", "--num_layers", "3"])
    assert (a.hidden_size, a.num_layers) == (128, 3)  # preset fills what was not given


def test_train_writes_seed_outputs_and_a_loadable_model(corpus, tmp_path, capsys):
    result = run(args_for(corpus, tmp_path, "--epochs", "2", "--learning_rate", "3e-3"))
    out = capsys.readouterr().out
    assert "MiniMind 训练配置:" in out and "使用设备: cpu" in out and "开始训练 2 个epoch" in out
    assert len(PROGRESS.findall(out)) >= 2
    assert f"模型已保存到: {tmp_path / 'model_epoch_1.pth'}" in out
    assert f"训练完成! 最终模型已保存到: {tmp_path / 'model_final.pth'}" in out
    assert (tmp_path / "model_epoch_2.pth").exists() and (tmp_path / "loss_curve.png").exists()

    model = MiniMindForCausalLM.from_pretrained(tmp_path)
    state = torch.load(tmp_path / "model_final.pth", weights_only=True)
    fresh = MiniMindForCausalLM(MiniMindConfig.from_pretrained(tmp_path))
    fresh.load_state_dict(state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0] - 1.0  # it learns
    assert result["eval_ppl"] == pytest.approx(math.exp(result["eval_loss"]))
    assert json.loads((tmp_path / "args.json").read_text())["epochs"] == 2


def test_lr_schedule():
    kw = dict(total_steps=110, warmup_steps=10, max_lr=1e-3, min_lr=1e-4)
    assert lr_at(0, **kw) == pytest.approx(1e-4)  # first warmup step
    assert lr_at(9, **kw) == pytest.approx(1e-3)  # end of warmup
    assert lr_at(10, **kw) == pytest.approx(1e-3)  # cosine starts at the peak
    assert lr_at(60, **kw) == pytest.approx(5.5e-4)  # half way: (max + min) / 2
    assert lr_at(110, **kw) == pytest.approx(1e-4)  # the floor


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=32, T=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randint(3, 200, (n, T), generator=g)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return {"input_ids": self.data[i], "labels": self.data[i]}


def trainer_args(tmp_path, **kw):
    base = dict(device="cpu", dtype="fp32", epochs=1, batch_size=8, accumulation_steps=1, learning_rate=1e-2,
                min_lr_ratio=0.1, warmup_ratio=0.0, warmup_steps=None, weight_decay=0.1, grad_clip=1.0, max_steps=0,
                log_interval=100, eval_interval=0, eval_batches=2, save_steps=0, save_interval=0, seed=0,
                num_workers=0, output_dir=str(tmp_path), report_to="none", resume=None, compile=False, fsdp=False)
    return TrainConfig(**{**base, **kw})


def small_model(seed=0):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(MiniMindConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                              num_key_value_heads=1, vocab_size=200, max_position_embeddings=64))


def test_accumulation_equals_a_larger_batch(tmp_path):
    big = small_model()
    Trainer(big, trainer_args(tmp_path / "a", batch_size=8, max_steps=2, learning_rate=1e-3), Tokens()).fit()
    acc = small_model()
    Trainer(acc, trainer_args(tmp_path / "b", batch_size=2, accumulation_steps=4, max_steps=2, learning_rate=1e-3),
            Tokens()).fit()
    for (name, a), b in zip(big.state_dict().items(), acc.state_dict().values()):
        assert (a - b).abs().max() < 1e-6, name


def test_nan_guard_skips_steps_then_stops(tmp_path):
    calls = {"n": 0}

    def sometimes_nan(model, batch):
        calls["n"] += 1
        loss = model(batch["input_ids"], labels=batch["labels"]).loss
        return (loss * float("nan") if calls["n"] == 2 else loss), {}

    trainer = Trainer(small_model(), trainer_args(tmp_path, batch_size=4, max_steps=5), Tokens(), loss_fn=sometimes_nan)
    trainer.fit()
    assert trainer.state.skipped_total == 1 and trainer.state.step == 5
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())

    def always_nan(model, batch):
        return model(batch["input_ids"], labels=batch["labels"]).loss * float("nan"), {}

    trainer = Trainer(small_model(), trainer_args(tmp_path / "b", batch_size=4), Tokens(), loss_fn=always_nan)
    with pytest.raises(TrainingError, match="5 steps in a row had a NaN/inf loss"):
        trainer.fit()


def final_weights(out: Path):
    return torch.load(out / "model_final.pth", weights_only=True)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_kill_and_resume_equals_uninterrupted(corpus, tmp_path, dtype):
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY, "--data", str(corpus), "--epochs", "2", "--save_steps", "3",
           "--dtype", dtype, "--learning_rate", "2e-3"]
    straight = tmp_path / "straight"
    subprocess.run([*cmd, "--output_dir", str(straight)], check=True, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--output_dir", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for a saved state well into the run, then kill without warning
        metrics = killed / "metrics.jsonl"
        if (killed / STATE_FILE).exists() and metrics.exists() and metrics.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model_final.pth").exists(), "the run finished before it could be killed"
    r = subprocess.run([*cmd, "--output_dir", str(killed), "--resume"], check=True, capture_output=True, text=True,
                       timeout=300)
    assert re.search(r"Resumed from .*: step \d+", r.stderr + r.stdout)
    a, b = final_weights(straight), final_weights(killed)
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 1e-6, name


def test_pretrained_path_loads_and_reports_mismatch(corpus, tmp_path, capsys):
    run(args_for(corpus, tmp_path / "base", "--max_steps", "2"))
    base = final_weights(tmp_path / "base")
    # Fine-tune from the .pth: the architecture is read from config.json beside it.
    run(args_for(corpus, tmp_path / "ft", "--max_steps", "1", "--learning_rate", "1e-12",
                 "--pretrained_path", str(tmp_path / "base" / "model_final.pth")))
    tuned = final_weights(tmp_path / "ft")
    assert all((base[k] - tuned[k]).abs().max() < 1e-6 for k in base)
    # A bare .pth with a different architecture: a readable report, not a traceback.
    lone = tmp_path / "lone.pth"
    torch.save(base, lone)
    with pytest.raises(ValueError, match=r"lone.pth: the weights do not fit this model\n  shape mismatch"):
        run(args_for(corpus, tmp_path / "x", "--hidden_size", "64", "--pretrained_path", str(lone)))
    broken = tmp_path / "broken.pth"
    broken.write_bytes((tmp_path / "base" / "model_final.pth").read_bytes()[:1000])
    with pytest.raises(ValueError, match="broken.pth: cannot load"):
        run(args_for(corpus, tmp_path / "y", "--pretrained_path", str(broken)))


GLOO_COMMON = [*TINY, "--max_steps", "6", "--dropout", "0", "--dtype", "fp32", "--learning_rate", "2e-3",
               "--log_interval", "1", "--batch_size", "2"]


def logged_losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.fixture(scope="module")
def single_process_losses(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    subprocess.run([sys.executable, str(ROOT / "train.py"), *GLOO_COMMON, "--data", str(corpus),
                    "--accumulation_steps", "2", "--output_dir", str(out)], check=True, capture_output=True,
                   timeout=300)
    return logged_losses(out)


@pytest.mark.parametrize("mode", ["ddp", "fsdp", "ddp+compile"])
def test_two_process_gloo_matches_single_process(corpus, tmp_path, single_process_losses, mode):
    out = tmp_path / mode
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    flags = {"ddp": [], "fsdp": ["--fsdp"], "ddp+compile": ["--compile"]}[mode]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(ROOT / "train.py"), *GLOO_COMMON, "--data", str(corpus), "--output_dir", str(out),
                        *flags], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = single_process_losses, logged_losses(out)  # the single process runs eager: compiled DDP must match it
    assert len(a) == len(b) == 6
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4
    assert MiniMindForCausalLM.from_pretrained(out).config.hidden_size == 32  # saved unsharded
    # Resume the 2-process run's state in one process (a different world size) and go on.
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *GLOO_COMMON, "--data", str(corpus),
                        "--accumulation_steps", "2", "--max_steps", "8", "--output_dir", str(out), "--resume"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Resumed from" in r.stderr + r.stdout, r.stderr[-3000:]


def test_sft_stage_trains_on_assistant_tokens(tmp_path, capsys):
    convs = tmp_path / "chat.jsonl"
    with convs.open("w", encoding="utf-8") as f:
        for i in range(60):
            f.write(json.dumps({"conversations": [{"role": "user", "content": f"What is {i} plus one?"},
                                                  {"role": "assistant", "content": f"It is {i + 1}."}]}) + "\n")
    result = run(parse_args([*TINY, "--stage", "sft", "--data", str(convs), "--output_dir", str(tmp_path / "o"),
                             "--max_steps", "4"]))
    assert math.isfinite(result["eval_loss"])
    from minimind.data.datasets import SFTDataset
    from minimind.tokenizer import load_tokenizer
    tok = load_tokenizer()
    item = SFTDataset(str(convs), tok, 32)[0]
    learned = tok.decode(item["input_ids"][item["labels"] != -100])
    assert learned.startswith("It is ") and learned.endswith("<|im_end|>") and "plus one" not in learned


def test_minimind_train_subcommand(corpus, tmp_path, capsys):
    from minimind.cli import main

    main(["train", *TINY, "--data", str(corpus), "--max_steps", "2", "--output_dir", str(tmp_path)])
    assert "训练完成!" in capsys.readouterr().out
    saved = json.loads((tmp_path / "args.json").read_text())
    assert saved["max_steps"] == 2 and "func" not in saved


def test_group_by_length_batches_similar_lengths_in_a_random_order():
    from minimind.train.trainer import EpochBatches

    lengths = [(i * 37) % 500 + 1 for i in range(1600)]

    def batches(grouped, epoch=0):
        return list(EpochBatches(1600, 16, 1, 0, 1, seed=3, epoch=epoch, lengths=lengths if grouped else None))

    plain, grouped = batches(False), batches(True)
    assert sorted(i for b in grouped for i in b) == list(range(1600)) and grouped == batches(True)
    spread = lambda bs: sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in bs) / len(bs)  # noqa: E731
    assert spread(grouped) < spread(plain) / 10
    firsts = [lengths[b[0]] for b in grouped]
    assert firsts != sorted(firsts) and batches(True, epoch=1) != grouped  # the batches' order stays random
    padded = lambda bs: sum(max(lengths[i] for i in b) * len(b) for b in bs)  # noqa: E731
    assert padded(grouped) < 0.75 * padded(plain)
