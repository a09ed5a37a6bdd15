"""Weight-only int8 quantization for inference: linear weights 4x smaller, and on a CPU faster decoding.

Every `nn.Linear` weight W (out, in) becomes int8 numbers Q with one scale per output row (symmetric, per channel):

    s_i = max_j |W_ij| / 127        Q_ij = round(W_ij / s_i) in [-127, 127]        y = (x Q^T) * s

The error of a weight is at most s_i / 2, half a step of its row's grid. What stays as it is: the embedding (a
lookup, not a product), the norms, and an MoE router (it is tiny, and a flipped routing decision costs more than
the bytes saved). A tied output head gets its own int8 copy; the embedding keeps full precision.

On a CPU the product of several rows (a prompt, a batch) runs in PyTorch's int8-weight kernel
(`torch._weight_int8pack_mm`, bf16 activations in, converted back to the model's dtype out). That kernel is exact
only when `in` is a multiple of 16, and it is CPU-only; anywhere else the weights are dequantized per call
(`F.linear(x, Q * s)`), which keeps the memory saving but not the speed. A faster one-row product (a decode step)
can be installed on each layer (`row_product`; `minimind.kernels.use_row_kernels` does it where the CPU has
AVX512-VNNI). Quantize after loading, for inference: a quantized model is not for training or `save_pretrained`.

    model = quantize_int8(model)      # in place; minimind generate / chat / serve / eval --quantize int8

int4 (`quantize_int4`, `--quantize int4`, CPU only) follows llama.cpp's q4_1: every 32 consecutive weights of a row
share a scale d and an offset m, the group's smallest weight: d = (max - min) / 15, q = round((W - m) / d) in
[0, 15], W ~= q d + m, so the group's smallest and largest weights are exact and every other one is within d / 2;
5 bits a weight with the scales, against int8's 8 and fp32's 32. The product runs in PyTorch's int4 CPU kernel
(`torch._weight_int4pack_mm_for_cpu`, bf16 activations), which takes a layer only when its `in` is a multiple of 32
and its `out` of 16 (every preset's are).

    model = quantize_int4(model)      # in place; --quantize int4
"""

import torch
import torch.nn.functional as F
from torch import nn

KERNEL_MULTIPLE = 16  # torch._weight_int8pack_mm is exact only when in_features is a multiple of this


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q int8 (out, in), s float32 (out,)) with weight ~= Q * s[:, None]; an all-zero row gets scale 1."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """A bias-free linear layer with int8 weights and one float scale per output feature."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int8Linear has no bias; minimind's linear layers have none")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = int8_rows(linear.weight)
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale)
        self.register_buffer("kernel_scale", scale.to(torch.bfloat16), persistent=False)  # what the kernel takes
        # A faster product for one row (a decode step), installed by `minimind.kernels.use_row_kernels`:
        # row_product(self, x) -> y, as `forward` would give it.
        self.row_product = None

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return (self.weight.float() * self.scale[:, None]).to(dtype)

    def uses_kernel(self, x) -> bool:
        """Whether `forward(x)` runs PyTorch's int8 CPU kernel (else the exact dequantized product)."""
        return x.device.type == "cpu" and self.in_features % KERNEL_MULTIPLE == 0

    def forward(self, x):
        if self.row_product is not None and x.shape[:-1].numel() == 1:
            return self.row_product(self, x)
        if self.uses_kernel(x):
            rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
            y = torch._weight_int8pack_mm(rows, self.weight, self.kernel_scale)
            return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row scales"


INT4_GROUP = 32  # weights of a row that share one int4 scale and offset, as in llama.cpp's q4_1
INT4_OUT_MULTIPLE = 16  # torch's int4 CPU kernel packs output features in sixteens


def int4_groups(weight: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q int32 (out, in) in [0, 15], d and m float32 (out, in / group)) with weight ~= q * d + m, group by group
    (q4_1's rounding: m = the group's smallest weight, d = (largest - smallest) / 15; a constant group gets d = 1)."""
    out_features, in_features = weight.shape
    w = weight.detach().float().reshape(out_features, in_features // group, group)
    m = w.amin(-1)
    d = (w.amax(-1) - m) / 15
    d = torch.where(d > 0, d, torch.ones_like(d))
    q = torch.round((w - m[..., None]) / d[..., None]).clamp(0, 15).to(torch.int32)
    return q.reshape(out_features, in_features), d, m


class Int4Linear(nn.Module):
    """A bias-free linear layer with int4 weights, a scale and an offset per 32 weights of a row (q4_1's scheme; CPU
    only)."""

    def __init__(self, linear: nn.Linear, group: int = INT4_GROUP):
        super().__init__()
        out_features, in_features = linear.weight.shape
        if linear.bias is not None:
            raise ValueError("Int4Linear has no bias; minimind's linear layers have none")
        if linear.weight.device.type != "cpu":
            raise ValueError(f"int4 weights run on a CPU only (torch's int4 CPU kernel); this layer is on "
                             f"{linear.weight.device}: use --quantize int8 there")
        if in_features % group or out_features % INT4_OUT_MULTIPLE:
            raise ValueError(f"int4 needs in_features a multiple of {group} and out_features a multiple of "
                             f"{INT4_OUT_MULTIPLE}; this layer is {in_features} -> {out_features}: use int8")
        self.in_features, self.out_features, self.group = in_features, out_features, group
        q, d, m = int4_groups(linear.weight, group)
        self.register_buffer("weight", torch._convert_weight_to_int4pack_for_cpu(q, 1))  # (out, in / 2) uint8
        # (in / group, out, 2): scale and zero point as the kernel takes them, w = (q - 8) * scale + zero
        self.register_buffer("scale_zeros", torch.stack([d.t(), (m + 8 * d).t()], -1).to(torch.bfloat16))

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        """The weights the kernel multiplies by, (out, in): the layer applied to the identity."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        return torch._weight_int4pack_mm_for_cpu(eye, self.weight, self.group, self.scale_zeros).t().to(dtype)

    def forward(self, x):
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch._weight_int4pack_mm_for_cpu(rows, self.weight, self.group, self.scale_zeros)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4, groups of {self.group}"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every plain `nn.Linear` but an MoE router with an `Int8Linear`, in place; returns the model (in eval
    mode). Merge a LoRA adapter first (`minimind.lora.merge_lora`): its layers are not plain linears."""
    return _quantize(model, Int8Linear)


def quantize_int4(model: nn.Module) -> nn.Module:
    """As `quantize_int8`, with `Int4Linear` layers (CPU only; every layer's shape must suit the kernel, or a
    ValueError names the first that does not). The embedding and the norms keep their precision."""
    return _quantize(model, Int4Linear)


def _quantize(model: nn.Module, layer_type) -> nn.Module:
    from .lora import LoRALinear

    targets = []
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            if isinstance(child, LoRALinear):
                raise ValueError("merge the LoRA adapter into the model (minimind.lora.merge_lora) before quantizing")
            if type(child) is nn.Linear and not (name == "gate" and hasattr(parent, "experts")):
                targets.append((f"{parent_name}.{name}".lstrip("."), parent, name, child))
    quantized = []
    for full_name, parent, name, child in targets:  # every layer is checked before any is replaced
        try:
            quantized.append(layer_type(child).to(child.weight.device))
        except ValueError as e:
            raise ValueError(f"{full_name}: {e}") from None
    for (_, parent, name, _), layer in zip(targets, quantized):
        setattr(parent, name, layer)
    return model.eval()


def quantized_kind(model: nn.Module) -> str | None:
    """"int8" or "int4" if the model has layers of that kind, else None."""
    for m in model.modules():
        if isinstance(m, Int8Linear):
            return "int8"
        if isinstance(m, Int4Linear):
            return "int4"
    return None


def count_weights(model: nn.Module) -> int:
    """The model's parameter count with int8 and int4 layers counted as the weights they stand for (a tied output
    head once)."""
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    return sum(p.numel() for p in model.parameters()) + sum(
        m.in_features * m.out_features for name, m in model.named_modules()
        if isinstance(m, (Int8Linear, Int4Linear)) and not (tied and name == "lm_head"))
