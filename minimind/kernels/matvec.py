"""Batch-1 decoding's matrix products, written for torch.compile.

Decoding one token multiplies one row vector by every weight matrix: y_i = sum_j W_ij x_j. A library GEMM called
with one row (`F.linear`, MKL's or oneDNN's kernels) streams the weights at well under the machine's memory
bandwidth on a CPU, and its fixed cost per call adds up over the ~60 products of a step. Written instead as a
broadcast product and a sum over `in`, the product is a plain reduction that Inductor compiles into a vectorised
loop over the weight rows, reading each weight once, converting it in registers (bf16, or int8 times its row's
scale) and fusing it with the norm, activation or residual around it (`benchmarks/matvec.py` times both).

The reduction converts every bf16 or int8 weight to fp32 before its multiply-add, which bounds it once the weights
sit in cache. Where the CPU has dot-product instructions for them (AVX512-BF16, AVX512-VNNI), bf16 and int8 layers
call minimind's own kernels instead (`minimind.kernels.build`): one op call per layer, opaque to Inductor.
fp32 layers keep the reduction, which already streams them at the memory's rate.

    step_model = with_matvecs(model)   # shares every tensor; what `minimind.infer.engine.compiled_step` compiles

Only inside a compiled region and only for a single row: eagerly the broadcast product would be materialised (slow),
and for a batch a GEMM reuses each weight across the rows, which a per-row reduction does not; both fall back to
the layer's own forward.
"""

import copy

import torch
from torch import nn

from ..quantize import Int8Linear
from .build import vector_ops


def kernel_kind(layer: nn.Module, ops: frozenset[str]) -> str | None:
    """Which of minimind's CPU kernels (`build`) computes `layer` for one row: "q8" (an `Int8Linear` that
    uses it), "bf16" (a bf16 `nn.Linear`), or None (a compiled reduction, below). fp32 weights stay with the
    reduction: it streams them as fast as the kernel does and fuses the norms and activations around them."""
    if type(layer) is Int8Linear and layer.row_product is q8_row:
        return "q8"
    if "bf16" in ops and type(layer) is nn.Linear and layer.weight.dtype == torch.bfloat16:
        return "bf16"
    return None


def q8_row(layer: Int8Linear, x) -> torch.Tensor:
    """`Int8Linear.row_product` through minimind's int8 kernel: x rounded to int8 with one scale for the row
    (max |x| / 127), integer dot products, then both scales; x (..., in) with one row -> (..., out) in x's dtype."""
    y = torch.ops.minimind.matvec_q8(x.reshape(-1), [layer.weight], [layer.scale], [layer.rowsum])
    return y.reshape(*x.shape[:-1], layer.out_features).to(x.dtype)


def use_row_kernels(model: nn.Module) -> nn.Module:
    """Give every `Int8Linear` of `model` on a CPU minimind's one-row int8 product (`q8_row`) where this machine's
    kernels have it (AVX512-VNNI; `vector_ops`), in place; idempotent. Returns the model."""
    layers = [m for m in model.modules() if type(m) is Int8Linear and m.weight.device.type == "cpu"]
    if layers and "q8" in vector_ops():
        for layer in layers:
            if layer.row_product is not q8_row:
                layer.register_buffer("rowsum", layer.weight.sum(1, dtype=torch.int32), persistent=False)
                layer.row_product = q8_row
    return model


def kernel_call(kind: str, x, layers) -> torch.Tensor:
    """One call of the `kind` kernel for the layers' weights, x (K,) -> their outputs, concatenated, float32."""
    if kind == "q8":
        return torch.ops.minimind.matvec_q8(x, [m.weight for m in layers], [m.scale for m in layers],
                                            [m.rowsum for m in layers])
    return torch.ops.minimind.matvec_bf16(x, [m.weight for m in layers])


class MatVec(nn.Module):
    """Wraps a bias-free `nn.Linear` or an `Int8Linear` (its tensors shared): for one row under torch.compile,
    minimind's CPU kernel where there is one (`kernel_kind`), else y = sum_j W_ij x_j (times the row's scale for int8),
    accumulated in float32 and returned in x's dtype. Without the kernels, int8 rounds x, y and the scales to bf16
    as its eager kernel does, so that compiled and eager decoding choose the same tokens (with them, eager int8
    runs the same kernel)."""

    def __init__(self, layer: nn.Module, ops: frozenset[str] = frozenset()):
        super().__init__()
        self.layer = layer
        self.kind = kernel_kind(layer, ops)

    def forward(self, x):
        if not torch.compiler.is_compiling() or x.shape[:-1].numel() != 1:
            return self.layer(x)
        layer = self.layer
        if self.kind is not None:
            return kernel_call(self.kind, x.reshape(-1), [layer]).reshape(*x.shape[:-1], -1).to(x.dtype)
        if isinstance(layer, Int8Linear):
            if layer.uses_kernel(x):  # the kernel's bf16 rounding of x, y and the scales, for the same tokens
                rows = x[..., None, :].to(torch.bfloat16).float()
                y = (rows * layer.weight.float()).sum(-1) * layer.kernel_scale.float()
                return y.to(torch.bfloat16).to(x.dtype)
            return ((x[..., None, :].float() * layer.weight.float()).sum(-1) * layer.scale).to(x.dtype)
        return (x[..., None, :].float() * layer.weight.float()).sum(-1).to(x.dtype)  # (..., out)


def with_matvecs(model: nn.Module) -> nn.Module:
    """A copy of `model` whose bias-free `nn.Linear` and `Int8Linear` layers are wrapped in `MatVec`. The copy
    shares every parameter and buffer with `model` (no weight is copied), so it sees in-place weight updates; the
    module tree is its own. Other layers (an unmerged LoRA layer, a biased linear) stay as they are."""
    tensors = [*model.parameters(), *model.buffers()]
    ops = vector_ops() if any(t.device.type == "cpu" for t in tensors) else frozenset()
    shared = {id(t): t for t in tensors}
    clone = copy.deepcopy(model, memo=shared)
    for parent in list(clone.modules()):
        for name, child in list(parent.named_children()):
            if (type(child) is nn.Linear and child.bias is None) or type(child) is Int8Linear:
                setattr(parent, name, MatVec(child, ops))
    return clone
