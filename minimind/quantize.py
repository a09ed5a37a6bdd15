"""Weight-only int8 quantization for inference: linear weights 4x smaller, and on a CPU faster decoding.

Every `nn.Linear` weight W (out, in) becomes int8 numbers Q with one scale per output row (symmetric, per channel):

    s_i = max_j |W_ij| / 127        Q_ij = round(W_ij / s_i) in [-127, 127]        y = (x Q^T) * s

The error of a weight is at most s_i / 2, half a step of its row's grid. What stays as it is: the embedding (a
lookup, not a product), the norms, and an MoE router (it is tiny, and a flipped routing decision costs more than
the bytes saved). A tied output head gets its own int8 copy; the embedding keeps full precision.

Why it is faster: decoding one token multiplies a vector by every weight matrix, so each step streams all the
weights from memory and the time goes into bytes, not arithmetic (benchmarks/generate.md). int8 weights are a quarter
of fp32's bytes. On a CPU the product runs in PyTorch's int8-weight kernel (`torch._weight_int8pack_mm`, bf16
activations in, converted back to the model's dtype out). That kernel is exact only when `in` is a multiple of 16
(it gives wrong numbers otherwise), and it is CPU-only here; anywhere else the row is dequantized per call
(`F.linear(x, Q * s)`), which keeps the memory saving but not the speed. Quantize after loading, for inference: a
quantized model is not for training or `save_pretrained`.

    model = quantize_int8(model)      # in place; minimind generate / chat / serve / eval --quantize int8
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

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return (self.weight.float() * self.scale[:, None]).to(dtype)

    def forward(self, x):
        if x.device.type == "cpu" and self.in_features % KERNEL_MULTIPLE == 0:
            rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
            y = torch._weight_int8pack_mm(rows, self.weight, self.kernel_scale)
            return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row scales"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every plain `nn.Linear` but an MoE router with an `Int8Linear`, in place; returns the model (in eval
    mode). Merge a LoRA adapter first (`minimind.lora.merge_lora`): its layers are not plain linears."""
    from .lora import LoRALinear

    targets = []
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            if isinstance(child, LoRALinear):
                raise ValueError("merge the LoRA adapter into the model (minimind.lora.merge_lora) before quantizing")
            if type(child) is nn.Linear and not (name == "gate" and hasattr(parent, "experts")):
                targets.append((parent, name, child))
    for parent, name, child in targets:
        setattr(parent, name, Int8Linear(child).to(child.weight.device))
    return model.eval()


def count_weights(model: nn.Module) -> int:
    """The model's parameter count with int8 layers counted as the weights they stand for (a tied output head once)."""
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    return sum(p.numel() for p in model.parameters()) + sum(
        m.weight.numel() for name, m in model.named_modules()
        if isinstance(m, Int8Linear) and not (tied and name == "lm_head"))
