"""Files written safely and files read with clear errors: the helpers every part that saves or loads shares.

Everything that writes a file that matters writes it through `atomic_write`: under a temporary name first, renamed
into place, so an interrupted run never leaves a complete-looking file.
"""

import errno
import glob
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def atomic_write(path: str | Path, directory: bool = False):
    """Write `path` under a temporary name beside it (same filesystem), then rename it into place, so that a reader
    never sees half a file and an interrupted writer leaves `path` as it was. Yields the temporary path: a file name
    to write (`with atomic_write(p) as tmp: torch.save(obj, tmp)`), or with `directory`, a fresh empty directory to
    fill, which replaces `path` when `path` is new or empty and else moves in file by file (each an atomic
    replace). On an error the temporary is removed; so are the temporaries of `path` that killed writers left (no
    process of their id runs on this machine)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    for old in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):  # a killed run's (a state file can be GBs)
        pid = old.name.rpartition("-")[2]
        if pid.isdigit() and (int(pid) == os.getpid() or not _running(int(pid))):
            _remove(old)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if not directory:
            os.replace(tmp, path)
        else:
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            if not path.exists():
                os.replace(tmp, path)
            else:
                for item in sorted(tmp.iterdir()):
                    os.replace(item, path / item.name)
    except Exception as e:
        if isinstance(e, DiskFullError) and tmp not in (e.path, *e.path.parents):
            raise  # a write that this one waited on (not one into the temporary): it names its own file
        if disk_full(e, path.parent):
            raise DiskFullError(path) from e
        raise
    finally:
        _remove(tmp)


class DiskFullError(OSError, ValueError):
    """A write that failed because its filesystem is full (a ValueError too: the command line prints it as one
    line, as other errors a user can fix)."""

    def __init__(self, path: Path):
        self.path = path = Path(path)
        free = shutil.disk_usage(path.parent).free
        super().__init__(errno.ENOSPC, f"no space left on the device to write {path} ({free / 2**20:.1f} MiB free "
                                       f"in {path.parent}); nothing was written there: free some space, or write "
                                       "elsewhere, and run the command again")

    def __str__(self):
        return self.strerror  # the message alone, without OSError's "[Errno 28]"


def no_space(error: BaseException) -> bool:
    """Whether `error` (or one it came from) says that a filesystem is full: an OSError with errno ENOSPC (or
    EDQUOT), or an error that quotes its text."""
    seen, depth = error, 0
    while seen is not None and depth < 20:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if os.strerror(errno.ENOSPC) in str(seen):  # safetensors: "I/O error: No space left on device (os error 28)"
            return True
        seen, depth = seen.__cause__ or seen.__context__, depth + 1
    return False


def disk_full(error: BaseException, directory: Path, reserve: int = 1 << 20) -> bool:
    """Whether `error` is a full filesystem: `no_space(error)`, or any error while `directory`'s filesystem has less
    than `reserve` bytes free (torch's writer loses the errno)."""
    if no_space(error):
        return True
    try:
        return shutil.disk_usage(directory).free < reserve
    except OSError:
        return False


def _running(pid: int) -> bool:
    """Whether process `pid` runs on this machine (where that cannot be told, as on Windows: True)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
