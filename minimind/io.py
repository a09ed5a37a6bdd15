"""Files written safely and files read with clear errors: the helpers every part that saves or loads shares.

Everything that writes a file that matters writes it under a temporary name first and renames it into place, so
an interrupted run never leaves a complete-looking file.
"""

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

# --- writing safely ------------------------------------------------------------------------------------------

def check_output(out: str | Path, force: bool, kind: str) -> Path:
    """Refuse to overwrite: an existing file, or a non-empty directory, needs `force`."""
    out = Path(out)
    if kind == "dir":
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out}: exists and is a file; give a directory path")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise ValueError(f"--out {out}: directory exists and is not empty; choose a new path, or pass --force to "
                             "replace the files this command writes there")
    else:
        if out.is_dir():
            raise ValueError(f"--out {out}: is a directory; give a file path such as {out / 'model.gguf'}")
        if out.exists() and not force:
            raise ValueError(f"--out {out}: file exists; choose a new path, or pass --force to overwrite it")
    return out


def publish_dir(tmp: Path, out: Path) -> None:
    """Move a finished temporary directory to `out`: a rename when `out` is new or empty, else file by file
    (each an atomic replace) into the existing directory."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(tmp, out)
        return
    for item in sorted(tmp.iterdir()):
        os.replace(item, out / item.name)
    tmp.rmdir()


def staging_path(out: Path) -> Path:
    """A temporary name beside `out` (same filesystem, so the final rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent / f".{out.name}.tmp-{os.getpid()}"


@contextmanager
def staging_dir(out: Path):
    """A fresh temporary directory beside `out`, removed afterwards (empty by then when the export succeeded)."""
    path = staging_path(out)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def read_json_object(path: Path, what: str) -> dict:
    """The JSON object in the file at `path` (a `what`: "config", "LoRA adapter config"), or a ValueError naming
    the file."""
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON {what} ({e})") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: expected a JSON object of {what} fields")
    return fields


def check_fit(tensors: dict, expected: dict, title: str, hint: str | None = None) -> None:
    """Raise one readable ValueError listing every name missing, unexpected or of the wrong shape, if any."""
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if not (missing or unexpected or mismatched):
        return
    lines = [title]
    for kind, items in (("shape mismatch", mismatched), ("missing from the file", missing),
                        ("not in the model", unexpected)):
        if items:
            lines.append(f"  {kind} ({len(items)}): " + "; ".join(items[:6]) + (" ..." if len(items) > 6 else ""))
    if hint:
        lines.append(f"  {hint}")
    raise ValueError("\n".join(lines))


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same directory, then rename: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
