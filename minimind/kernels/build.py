"""minimind's own CPU kernels for batch-1 decoding (`csrc/`): one-row matrix products on the CPU's dot-product
instructions (`rows.h`), as torch ops that run eagerly and inside a compiled graph (`matvec.cpp`), and the whole
decode step of a dense or mixture-of-experts model as one call (`decode.cpp`, used through
`minimind.kernels.native`).

    ops = vector_ops()                               # frozenset({"f32", "bf16", "q8", "q4"}) or a part; empty: none
    y = torch.ops.minimind.matvec_bf16(x, [wq, wk, wv])   # x (K,), w* (N_i, K) bf16 -> (N_q + N_k + N_v,) float32
    y = torch.ops.minimind.matvec_q8(x, [q], [scale], [rowsum])  # q (N, K) int8, scale (N,), rowsum (N,) int32
    step = torch.classes.minimind.DecodeModel(...)   # see minimind.kernels.native.native_step

The sources are compiled on first use with the C++ compiler torch.compile uses on a CPU (`$CXX`, else `c++`) for this
machine's instruction set (`-march=native`), about 20 seconds (one line on stderr says so), and kept in
`$MINIMIND_CACHE/kernels` (default `~/.cache/minimind/kernels`) under a name that hashes the sources, torch's version
and the flags, so that a later process loads it at once. The file is written under a temporary name and renamed
when complete, so an interrupted build leaves nothing half-written behind. Linux on x86-64 only. Where there is no
compiler or the build fails, `vector_ops()` is empty and one line on stderr says why; where the CPU lacks AVX-512,
AVX512-BF16 or AVX512-VNNI, the kind of weights that would need it is left out of `vector_ops()`. Either way callers
keep PyTorch's own kernels. `MINIMIND_CPU_KERNELS=0` turns them off.
"""

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

CSRC = Path(__file__).with_name("csrc")  # matvec.cpp, decode.cpp and the row loops they share (rows.h)
_lock = threading.Lock()
_ops: frozenset[str] | None = None


def cache_dir() -> Path:
    root = os.environ.get("MINIMIND_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                           os.path.expanduser("~/.cache"), "minimind")
    return Path(root) / "kernels"


def vector_ops() -> frozenset[str]:
    """The kinds of weights this machine's kernels run on vector instructions ("f32", "bf16", "q8", "q4"), building and
    loading the kernels on the first call; empty when they are off or unavailable."""
    global _ops
    if _ops is None:
        with _lock:
            if _ops is None:
                _ops = _load()
    return _ops


def _load() -> frozenset[str]:
    if os.environ.get("MINIMIND_CPU_KERNELS", "1") == "0":
        return frozenset()
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        return frozenset()
    try:
        library = _build()
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:  # one line, once a process
        print(f"minimind's CPU decoding kernels are not available ({e}); decoding uses PyTorch's kernels",
              file=sys.stderr, flush=True)
        return frozenset()
    _register_fakes()
    return frozenset(op for op in torch.ops.minimind.vector_ops().split(",") if op)


def _build() -> Path:
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX") or "c++"
    if shutil.which(compiler) is None:
        raise OSError(f"no C++ compiler {compiler!r} on PATH (set CXX)")
    torch_lib = Path(torch.__file__).parent / "lib"
    flags = ["-O3", "-march=native", "-std=c++20", "-fPIC", "-fopenmp", "-w",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
             *(f"-I{p}" for p in cpp_extension.include_paths())]
    libs = [f"-L{torch_lib}", "-lc10", "-ltorch", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}"]
    sources = sorted(CSRC.glob("*.cpp"))
    text = [p.read_text() for p in sorted([*sources, *CSRC.glob("*.h")])]
    key = hashlib.sha256("\0".join([*text, torch.__version__, compiler, *flags, *libs]).encode())
    target = cache_dir() / f"kernels-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    print(f"building minimind's CPU decode kernels (once, ~20 s; cached in {target.parent}) ...", file=sys.stderr,
          flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        # each source compiled at once in a process of its own (~12 s each, mostly torch's headers), then linked
        objects = [os.path.join(scratch, f"{p.stem}.o") for p in sources]
        jobs = [subprocess.Popen([compiler, *flags, "-c", str(p), "-o", o], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True) for p, o in zip(sources, objects)]
        partial = os.path.join(scratch, "kernels.so")
        link = [compiler, "-shared", "-fopenmp", *objects, *libs, "-o", partial]
        try:
            for p, job in zip(sources, jobs):
                _, errors = job.communicate(timeout=600)
                if job.returncode != 0:
                    raise OSError(f"{compiler} failed to build {p.name}: {first_error(errors)}")
        finally:  # a failed source: the others stop too, before their scratch directory goes
            for job in jobs:
                if job.poll() is None:
                    job.kill()
                    job.wait()
                if getattr(job, "stderr", None) is not None:
                    job.stderr.close()
        done = subprocess.run(link, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise OSError(f"{compiler} failed to link minimind's kernels: {first_error(done.stderr)}")
        os.replace(partial, target)  # whole or not at all
    return target


def first_error(output: str) -> str:
    """A compiler's output in one line: its first line that says "error", else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "no output")


def _register_fakes():
    """Shapes for torch.compile's tracing: every op returns its weights' rows, concatenated, in float32."""
    def rows(x, weights, *_):
        return x.new_empty(sum(w.shape[0] for w in weights), dtype=torch.float32)
    for op in ("matvec_bf16", "matvec_q8"):
        torch.library.register_fake(f"minimind::{op}")(rows)
