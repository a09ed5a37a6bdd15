"""A write onto a full filesystem fails with one clear message that says so, and leaves no file that looks complete.

The unit tests fake the failure (an ENOSPC error, or torch's errno-less error with no space left); the end-to-end
ones run onto a real small tmpfs where the machine lets us mount one (root, as CI runs): training and export, then
every command that writes (SFT, LoRA, DPO, distillation, GRPO, PPO, agent RL, data prepare, data tooluse, tokenizer
train) with the disk filling up inside each file it writes in turn. Last, a SIGKILL in the middle of the trainer's
saves leaves nothing half-written under a final name."""

import errno
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from minimind.io import DiskFullError, atomic_write

Usage = namedtuple("Usage", "total used free")


def test_an_enospc_error_becomes_a_disk_full_error_and_nothing_is_left(tmp_path):
    target = tmp_path / "state.pt"
    with pytest.raises(DiskFullError, match="no space left on the device to write .*state.pt") as caught:
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, ValueError)
    assert list(tmp_path.iterdir()) == []


def test_an_errno_less_error_on_a_full_filesystem_is_a_disk_full_error(tmp_path, monkeypatch):
    """torch.save on a full disk raises RuntimeError("... unexpected pos ...") without an errno."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 << 20, 10 << 20, 0))
    with pytest.raises(DiskFullError):
        with atomic_write(tmp_path / "model.pth"):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 320 vs 256")
    with pytest.raises(DiskFullError):
        with atomic_write(tmp_path / "out", directory=True):
            raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_through_unchanged(tmp_path):
    (tmp_path / "kept.pt").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="a bug"):
        with atomic_write(tmp_path / "kept.pt"):
            raise RuntimeError("a bug")
    assert (tmp_path / "kept.pt").read_bytes() == b"old"


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MiB tmpfs, or a skip where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def minimind(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "minimind", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


def test_training_onto_a_full_disk_says_so(full_disk):
    run = minimind("train", "--preset", "tiny", "--max_seq_len", "64", "--batch_size", "4", "--max_steps", "2",
                   "--eval_interval", "0", "--hidden_size", "256", "--output_dir", str(full_disk / "run"))
    assert run.returncode == 2, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert "no space left on the device" in last and "Traceback" not in run.stderr
    assert not list(full_disk.rglob("*.pt")) and not list(full_disk.rglob("*.pth"))  # nothing that looks complete
    assert not list(full_disk.rglob("*.safetensors"))


def test_export_onto_a_full_disk_says_so(full_disk, tmp_path):
    from helpers import tiny_model

    from minimind.tokenizer import load_tokenizer, save_tokenizer

    model_dir = tmp_path / "model"
    tiny_model(hidden=256).save_pretrained(model_dir)
    save_tokenizer(load_tokenizer(), model_dir)
    for fmt, out in (("hf", full_disk / "hf"), ("gguf", full_disk / "model.gguf")):
        run = minimind("export", str(model_dir), "--format", fmt, "--dtype", "fp32" if fmt == "hf" else "f32",
                       "--out", str(out))
        assert run.returncode == 2, run.stderr[-2000:]
        assert "no space left on the device" in run.stderr and "Traceback" not in run.stderr
        assert not Path(out).exists()


# --- every command that writes, with the disk full at each of its writes -----------------------------------------
#
# Each command runs once onto a roomy tmpfs to see what it writes; then again, for each file it writes, with the
# space left set to what the files before it take plus half of that file, so the disk fills in the middle of it.
# Every time: exit status 2, one line saying the disk is full, no traceback, and nothing under a final name that
# does not read back whole (the state a kill in the middle of that write would leave, had it not been atomic).
# The commands run in this process (torch imported once) on tiny models: about a second each.

PAGE = 4096
STEPS = ["--max_steps", "2", "--max_seq_len", "64", "--batch_size", "2", "--log_interval", "1", "--eval_interval", "0",
         "--eval_batches", "1", "--dtype", "fp32", "--warmup_steps", "0", "--save_interval", "0"]
RL_FLAGS = ["--num_generations", "2", "--max_new_tokens", "3", "--max_seq_len", "128", "--beta", "0.1"]


@pytest.fixture(scope="module")
def roomy_tmpfs(tmp_path_factory):
    """A 24 MiB tmpfs, or a skip where mounting is not allowed."""
    mount = tmp_path_factory.mktemp("tmpfs")
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny base model and small data files (on the ordinary disk)."""
    import json

    from helpers import save_model_dir, tiny_model

    root = tmp_path_factory.mktemp("inputs")
    save_model_dir(tiny_model(hidden=32, max_position_embeddings=512), root / "base")
    with (root / "chat.jsonl").open("w", encoding="utf-8") as f:
        for i in range(24):
            f.write(json.dumps({"conversations": [{"role": "user", "content": f"What is {i} plus one?"},
                                                  {"role": "assistant", "content": f"It is {i + 1}."}]}) + "\n")
    with (root / "pairs.jsonl").open("w", encoding="utf-8") as f:
        for i in range(24):
            f.write(json.dumps({"prompt": f"What is {i} plus one?", "chosen": f"It is {i + 1}.",
                                "rejected": f"No idea {i}."}) + "\n")
    with (root / "prompts.jsonl").open("w", encoding="utf-8") as f:
        for i in range(24):
            f.write(json.dumps({"prompt": f"What is {i} * 7?", "answer": str(i * 7)}) + "\n")
    (root / "corpus.txt").write_text("\n\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog, number "
                                                 f"{i * 7 % 13}; 第{i}行。" for i in range(1500)), encoding="utf-8")
    return root


def command(name: str, inputs: Path, out: Path) -> list[str]:
    base, chat, pairs, prompts = (str(inputs / n) for n in ("base", "chat.jsonl", "pairs.jsonl", "prompts.jsonl"))
    return {
        "sft": ["train", *STEPS, "--stage", "sft", "--pretrained_path", base, "--data", chat],
        "lora": ["lora", *STEPS, "--pretrained_path", base, "--data", chat, "--lora_rank", "4", "--merge"],
        "dpo": ["dpo", *STEPS, "--pretrained_path", base, "--data", pairs],
        "distill": ["distill", *STEPS, "--teacher", base, "--stage", "sft", "--data", chat, "--hidden_size", "32",
                    "--num_layers", "1", "--num_heads", "2", "--num_kv_heads", "1"],
        "grpo": ["grpo", *STEPS, "--pretrained_path", base, "--data", prompts, *RL_FLAGS],
        "ppo": ["ppo", *STEPS, "--pretrained_path", base, "--data", prompts, *RL_FLAGS],
        "agent": ["agent", *STEPS, "--pretrained_path", base, "--data", prompts, *RL_FLAGS, "--max_seq_len", "256",
                  "--max_turns", "2"],
        "data prepare": ["data", "prepare", "--data", str(inputs / "corpus.txt"), "--shard_tokens", "6000",
                         "--out", str(out)],
        "data tooluse": ["data", "tooluse", "--n", "150", "--out", str(out / "tool.jsonl")],
        "tokenizer train": ["tokenizer", "train", "--data", str(inputs / "corpus.txt"), "--vocab_size", "1000",
                            "--out", str(out)],
    }[name] + (["--output_dir", str(out)] if name.split()[0] not in ("data", "tokenizer") else [])


def write_order(rel: Path) -> tuple:
    """When a command writes the file at `rel` (relative to its output), as a sort key: a training run writes
    args.json and its metrics, the training state, the LoRA adapter (adapter/ with --merge) and its tokenizer, the
    final model files (the .pth, save_pretrained's, the tokenizer's), the loss curve; data prepare its shards, then
    index.json; tokenizer train tokenizer.json, then its configs."""
    name = rel.name
    first = {"args.json": 0, "metrics.jsonl": 0, "training_state.pt": 1, "adapter_model.safetensors": 2,
             "adapter_config.json": 2, "model_final.pth": 4, "config.json": 5, "generation_config.json": 5,
             "model.safetensors": 6, "loss_curve.png": 9, "index.json": 9}
    group = 3 if rel.parts[0] == "adapter" and name not in first else first.get(name, 7)  # 7: tokenizer files
    return group, name != "tokenizer.json", name


def rounded(size: int) -> int:
    return -(-size // PAGE) * PAGE


def leave_free(mount: Path, free: int) -> Path:
    """Empty the tmpfs, then fill it but for `free` bytes (whole pages); returns the output path to use."""
    for item in mount.iterdir():
        shutil.rmtree(item) if item.is_dir() else item.unlink()
    filler = shutil.disk_usage(mount).free - rounded(free)
    if filler > 0:
        with open(mount / "filler", "wb") as f:
            os.posix_fallocate(f.fileno(), 0, filler)
    assert abs(shutil.disk_usage(mount).free - rounded(free)) <= 2 * PAGE
    return mount / "out"


def run_cli(argv, capsys) -> tuple[int, str]:
    """`minimind ARGV` in this process: (exit status, stderr). Any exception but SystemExit fails the test."""
    import gc

    from minimind.cli import main

    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    gc.collect()  # the failed run's open files (its metrics log) closed, their space given back
    return code, capsys.readouterr().err


def damaged(out: Path) -> list[str]:
    """Files under `out` (but the tmpfs's filler) that a reader would take for complete and are not: each must read
    back whole. A temporary left behind counts too."""
    import json

    import torch
    from safetensors.torch import load_file

    problems = []
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p != out / "filler") if out.exists() else []:
        rel = path.relative_to(out)
        try:
            if any(part.startswith(".") for part in rel.parts):
                raise AssertionError("a temporary left behind")
            if path.suffix in (".pt", ".pth"):
                torch.load(path, weights_only=True)
            elif path.suffix == ".safetensors":
                load_file(path)
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".jsonl":
                [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            elif path.suffix == ".png":
                if not path.read_bytes().endswith(b"IEND\xaeB`\x82"):
                    raise AssertionError("a cut PNG")
            elif path.suffix == ".bin":  # a token shard: complete only as index.json lists it
                from minimind.data.tokens import load_shards

                load_shards(path.parent)
            elif path.suffix != ".jinja":
                raise AssertionError("a file this test does not know")
        except Exception as e:
            problems.append(f"{rel}: {type(e).__name__}: {str(e)[:120]}")
    return problems


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", ["sft", "lora", "dpo", "distill", "grpo", "ppo", "agent", "data prepare",
                                  "data tooluse", "tokenizer train"])
def test_a_full_disk_at_any_write_says_so_and_leaves_nothing_half_written(name, roomy_tmpfs, inputs, capsys):
    out = leave_free(roomy_tmpfs, 20 << 20)
    code, err = run_cli(command(name, inputs, out), capsys)
    assert code == 0, err[-2000:]
    assert damaged(roomy_tmpfs) == []
    files = sorted((p.relative_to(out) for p in out.rglob("*") if p.is_file()), key=write_order)
    sizes = {rel: rounded((out / rel).stat().st_size) for rel in files}
    points = []  # (the file the disk fills in, the space left)
    for i, rel in enumerate(files):
        if sizes[rel] >= 2 * PAGE or rel == files[-1]:
            points.append((rel, sum(sizes[r] for r in files[:i]) + sizes[rel] // 2 // PAGE * PAGE))
    # the files big enough to fill the disk inside them (and the last one): a training run's state, model files,
    # tokenizer and loss curve; the shards and the index; the .jsonl; the tokenizer files
    assert len(points) >= {"data prepare": 3, "data tooluse": 1, "tokenizer train": 2}.get(name, 5), points
    for rel, free in [(Path("(first write)"), 0), *points]:
        out = leave_free(roomy_tmpfs, free)
        code, err = run_cli(command(name, inputs, out), capsys)
        assert code == 2, f"disk full in {rel}: exit {code}\n{err[-2000:]}"
        last = err.strip().splitlines()[-1]
        assert "no space left on the device" in last and "Traceback" not in err, f"disk full in {rel}: {err[-2000:]}"
        assert damaged(roomy_tmpfs) == [], f"disk full in {rel}"  # the output and temporaries beside it


KILL_PRELUDE = """
import io, os, signal, sys
from pathlib import Path
import torch, transformers.modeling_utils as mu
from safetensors.torch import save as safetensors_bytes

target = os.environ["KILL_IN"]

def half_then_kill(data, path):
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)

def save(obj, f, *args, **kwargs):
    if target in Path(f).name:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        half_then_kill(buffer.getvalue(), f)
    return real_save(obj, f, *args, **kwargs)

def save_file(tensors, filename, metadata=None):
    if target in Path(filename).name:
        half_then_kill(safetensors_bytes(tensors, metadata), filename)
    return real_save_file(tensors, filename, metadata=metadata)

real_save, torch.save = torch.save, save
real_save_file, mu.safe_save_file = mu.safe_save_file, save_file
from minimind.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("target", ["training_state.pt", "model.safetensors"])
def test_a_kill_in_the_middle_of_a_save_leaves_no_half_written_file(target, inputs, tmp_path):
    """SIGKILL while the trainer writes (half the bytes of) its state file, or the final model's safetensors (after
    its .pth, in the same temporary directory): the final names hold nothing cut short, the leftover is a hidden
    temporary, and a run of the same command then finishes and removes it (its writer is gone)."""
    out = tmp_path / "out"
    argv = command("sft", inputs, out)
    run = subprocess.run([sys.executable, "-c", KILL_PRELUDE, *argv], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "KILL_IN": target})
    assert run.returncode == -9, run.stderr[-2000:]  # killed where it was meant to be
    problems = damaged(tmp_path)  # the output and the temporaries beside it
    assert problems and all(p.endswith("a temporary left behind") for p in problems), problems
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    rerun = subprocess.run([sys.executable, "-m", "minimind", *argv], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert damaged(tmp_path) == [] and (out / "model.safetensors").exists()  # no temporary left either


def test_a_metrics_line_cut_by_a_full_disk_does_not_break_the_resumed_run(tmp_path):
    """metrics.jsonl is appended to, not written atomically: a full disk can cut its last line. The resumed run's
    records start on a line of their own, and the loss curve is drawn from the lines that read."""
    import importlib.util
    import json

    from minimind.train.metrics import MetricsLog

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo', encoding="utf-8")
    metrics = MetricsLog(tmp_path, "none", {})
    metrics.log({"step": 3, "loss": 1.5})
    metrics.close()  # draws the loss curve
    lines = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines[1] == '{"step": 2, "lo' and json.loads(lines[2]) == {"step": 3, "loss": 1.5}
    assert (tmp_path / "loss_curve.png").exists() or importlib.util.find_spec("matplotlib") is None
