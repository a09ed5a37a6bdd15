"""A write onto a full filesystem fails with one clear message that says so, and leaves no file that looks complete.

The unit tests fake the failure (an ENOSPC error, or torch's errno-less error with no space left); the end-to-end
ones run training and export onto a real 1-3 MiB tmpfs where the machine lets us mount one (root, as CI runs)."""

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
