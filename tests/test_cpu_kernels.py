"""minimind's one-row CPU kernels (`minimind.kernels.build`, `csrc/matvec.cpp`): their numbers against the same
arithmetic written in torch, their errors, where they are used, and the fallback when they cannot be built."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from minimind.kernels.build import vector_ops
from minimind.kernels.matvec import q8_row, use_row_kernels
from minimind.quantize import Int8Linear, int8_rows

OPS = vector_ops()
needs = {op: pytest.mark.skipif(op not in OPS, reason=f"this CPU or build has no vector {op} kernel")
         for op in ("bf16", "q8")}
SHAPES = [(96, 64), (7, 100), (300, 1408)]  # (out, in): tails of every width, rows not a multiple of anything


def q8_reference(x, q, scale):
    """x rounded to int8 with one scale (max |x| / 127), products summed exactly, scaled back."""
    d = x.abs().max() / 127
    return (q.double() @ (torch.round(x / d) * d).double()) * scale.double()


def test_the_kernels_build_here():
    """The reference machines (x86-64 with AVX-512 BF16 and VNNI) build and load both."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    if " avx512_bf16" not in flags or " avx512_vnni" not in flags:
        pytest.skip("this CPU lacks AVX512-BF16 or AVX512-VNNI")
    assert OPS == {"f32", "bf16", "q8", "q4"}


@needs["q8"]
@pytest.mark.parametrize("out_features,in_features", SHAPES)
def test_q8_equals_its_arithmetic(out_features, in_features):
    g = torch.Generator().manual_seed(in_features)
    w, x = torch.randn(out_features, in_features, generator=g), torch.randn(in_features, generator=g)
    q, scale = int8_rows(w)
    y = torch.ops.minimind.matvec_q8(x, [q], [scale], [q.sum(1, dtype=torch.int32)])
    want = q8_reference(x, q, scale)
    assert y.shape == (out_features,) and y.dtype == torch.float32
    assert torch.allclose(y.double(), want, atol=1e-4 * want.abs().max().item())
    exact = w @ x  # and the rounding of x and W together stays small
    assert (y - exact).abs().max() < 0.03 * exact.abs().max()


@needs["bf16"]
@pytest.mark.parametrize("out_features,in_features", SHAPES)
def test_bf16_equals_its_arithmetic(out_features, in_features):
    g = torch.Generator().manual_seed(in_features)
    w = torch.randn(out_features, in_features, generator=g).to(torch.bfloat16)
    x = torch.randn(in_features, generator=g)
    y = torch.ops.minimind.matvec_bf16(x, [w])
    want = w.double() @ x.to(torch.bfloat16).double()  # x rounded to bf16, products summed in fp32
    assert y.shape == (out_features,) and y.dtype == torch.float32
    assert torch.allclose(y.double(), want, atol=1e-5 * in_features ** 0.5 * want.abs().max().item())


@needs["q8"]
@needs["bf16"]
def test_several_weights_give_their_outputs_concatenated():
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(n, 128, generator=g) for n in (64, 16, 16)]
    x = torch.randn(128, generator=g)
    qs = [int8_rows(w) for w in ws]
    y = torch.ops.minimind.matvec_q8(x, [q for q, _ in qs], [s for _, s in qs],
                                     [q.sum(1, dtype=torch.int32) for q, _ in qs])
    assert torch.equal(y, torch.cat([torch.ops.minimind.matvec_q8(x, [q], [s], [q.sum(1, dtype=torch.int32)])
                                     for q, s in qs]))
    wb = [w.to(torch.bfloat16) for w in ws]
    assert torch.equal(torch.ops.minimind.matvec_bf16(x, wb),
                       torch.cat([torch.ops.minimind.matvec_bf16(x, [w]) for w in wb]))


@needs["q8"]
@needs["bf16"]
def test_bad_arguments_are_named():
    x = torch.randn(64)
    q, s = int8_rows(torch.randn(8, 64))
    with pytest.raises(RuntimeError, match="x has 32 values, a weight takes 64"):
        torch.ops.minimind.matvec_q8(x[:32], [q], [s], [q.sum(1, dtype=torch.int32)])
    with pytest.raises(RuntimeError, match=r"weights must be contiguous \(out, in\) BFloat16"):
        torch.ops.minimind.matvec_bf16(x, [torch.randn(8, 64)])
    with pytest.raises(RuntimeError, match="weight 0 has 8 rows but 8 scales and 8 Long row sums"):
        torch.ops.minimind.matvec_q8(x, [q], [s], [q.sum(1)])


@needs["q8"]
def test_int8_layers_use_the_kernel_for_one_row_only(monkeypatch):
    """One row (a decode step), eager: the q8 kernel; several rows (a prompt, a batch): PyTorch's int8 kernel."""
    torch.manual_seed(0)
    layer = Int8Linear(nn.Linear(64, 96, bias=False))
    assert layer.row_product is None  # quantizing alone installs no kernel
    use_row_kernels(layer)
    assert layer.row_product is q8_row and torch.equal(layer.rowsum, layer.weight.sum(1, dtype=torch.int32))
    x = torch.randn(1, 1, 64)
    y = layer(x)
    assert y.shape == (1, 1, 96)
    assert torch.allclose(y[0, 0].double(), q8_reference(x.flatten(), layer.weight, layer.scale), atol=1e-4)
    calls = []
    kernel = torch._weight_int8pack_mm
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda *a: calls.append(1) or kernel(*a))
    layer(x)
    assert calls == []
    layer(torch.randn(1, 3, 64))
    assert calls == [1]


@needs["q8"]
def test_int8_decoding_with_the_kernel_stays_close_to_fp32():
    """The main job's kind of model (tiny, random here): next-token distributions of the q8 decode path against
    fp32, one token at a time over the cache."""
    from helpers import tiny_model

    from minimind.quantize import quantize_int8

    model = tiny_model(hidden=64, num_attention_heads=4, num_key_value_heads=2).eval()
    ids = torch.randint(3, 6400, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids).logits.log_softmax(-1)
        quantize_int8(model)
        cache, got = None, []
        for t in range(ids.shape[1]):  # one row per forward: every product runs the q8 kernel
            out = model(ids[:, t:t + 1], cache=cache, use_cache=True)
            cache = out.cache
            got.append(out.logits[:, -1].log_softmax(-1))
    got = torch.stack(got, 1)
    kl = (want.exp() * (want - got)).sum(-1).mean().item()
    assert 0 < kl < 2e-5, kl  # measured 2.3e-6


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **env})


def test_turned_off_or_unbuildable_they_fall_back(tmp_path):
    """MINIMIND_CPU_KERNELS=0: no kernels, no build. A compiler that fails: one warning naming the cause, no kernels,
    and int8 layers keep PyTorch's kernel."""
    code = ("import warnings; warnings.simplefilter('always')\n"
            "import torch; from torch import nn\n"
            "from minimind.kernels.build import vector_ops\n"
            "from minimind.kernels.matvec import use_row_kernels\n"
            "from minimind.quantize import Int8Linear\n"
            "layer = use_row_kernels(Int8Linear(nn.Linear(32, 8, bias=False)))\n"
            "print(sorted(vector_ops()), layer.row_product is not None)")
    off = run_python(code, MINIMIND_CPU_KERNELS="0", MINIMIND_CACHE=str(tmp_path / "off"))
    assert off.returncode == 0 and off.stdout.strip() == "[] False", off.stderr
    assert not (tmp_path / "off").exists()
    broken = run_python(code, CXX="false", MINIMIND_CACHE=str(tmp_path / "broken"))
    assert broken.returncode == 0 and broken.stdout.strip() == "[] False", broken.stderr
    if sys.platform.startswith("linux") and os.uname().machine == "x86_64":
        assert "CPU decoding kernels are not available (false failed to build decode.cpp" in broken.stderr
        assert not list((tmp_path / "broken" / "kernels").glob("*.so*"))  # nothing half-written left behind
        # a compiler's errors over many lines: one line on stderr, naming the first error
        compiler = tmp_path / "bad-c++"
        compiler.write_text("#!/bin/sh\necho 'In file included from x.h:1:' >&2\n"
                            "echo 'decode.cpp:7:3: error: expected ; before }' >&2\necho '  7 | }' >&2\nexit 1\n")
        compiler.chmod(0o755)
        bad = run_python(code, CXX=str(compiler), MINIMIND_CACHE=str(tmp_path / "bad"))
        said = [line for line in bad.stderr.splitlines() if "minimind" in line]
        assert bad.returncode == 0 and bad.stdout.strip() == "[] False", bad.stderr
        assert said[0].startswith("building minimind's CPU decode kernels (once") and len(said) == 2, bad.stderr
        assert said[1] == f"minimind's CPU decoding kernels are not available ({compiler} failed to build " \
                          "decode.cpp: decode.cpp:7:3: error: expected ; before }); decoding uses PyTorch's kernels"


class FakeCompiler:
    """Stands in for `subprocess` in `minimind.kernels.build`: each compile or link writes its `-o` file and is
    counted, in seconds where the real build takes ~15."""

    def __init__(self):
        self.calls = []

    def _write(self, cmd):
        self.calls.append(cmd)
        Path(cmd[cmd.index("-o") + 1]).write_bytes(b"built")

    def Popen(self, cmd, **kw):  # subprocess's name
        self._write(cmd)
        return SimpleNamespace(communicate=lambda timeout=None: ("", ""), returncode=0, poll=lambda: 0)

    def run(self, cmd, **kw):
        self._write(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")


def test_a_built_library_is_reused_until_a_source_changes(tmp_path, monkeypatch, capsys):
    """The first build writes one library into the cache, saying so in one line on stderr; a later process finds
    that file and runs no compiler (it is not rewritten: same mtime) and says nothing; a changed source names a new
    library, built afresh beside the old."""
    from minimind.kernels import build

    fake = FakeCompiler()
    csrc = tmp_path / "csrc"
    shutil.copytree(build.CSRC, csrc)
    monkeypatch.setattr(build, "CSRC", csrc)
    monkeypatch.setattr(build, "subprocess", SimpleNamespace(Popen=fake.Popen, run=fake.run, PIPE=subprocess.PIPE,
                                                             DEVNULL=subprocess.DEVNULL))
    monkeypatch.setattr(build.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setenv("MINIMIND_CACHE", str(tmp_path / "cache"))

    first = build._build()
    assert first.parent == tmp_path / "cache" / "kernels" and first.read_bytes() == b"built"
    assert len(fake.calls) == len(list(csrc.glob("*.cpp"))) + 1  # each source compiled, then one link
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no scratch files left
    said = capsys.readouterr()
    assert said.out == "" and said.err == f"building minimind's CPU decode kernels (once, ~20 s; cached in " \
                                          f"{first.parent}) ...\n"
    mtime = first.stat().st_mtime_ns
    fake.calls.clear()
    assert build._build() == first and fake.calls == [] and first.stat().st_mtime_ns == mtime
    assert capsys.readouterr().err == ""

    (csrc / "rows.h").write_text((csrc / "rows.h").read_text() + "\n// changed\n")
    changed = build._build()
    assert changed != first and changed.is_file() and fake.calls
    assert first.stat().st_mtime_ns == mtime
