"""Attention written for CPU speed under torch.compile, installed on a model's attention layers by
`use_fast_attention(model)` (each `Attention.fast_attention`); the model's own SDPA path runs wherever these do not
apply, with the same result up to rounding.

- `one_query_attention`: one query per row (a decode step) as broadcast products and sums, which Inductor fuses into
  a few loops over the cache where SDPA is an opaque library call.
- `CausalAttention`: causal self-attention with PyTorch's CPU flash kernel forward and a hand-written backward, for
  compiled bf16 training on a CPU at small sizes (`use_hand_backward` says when).

    from minimind.kernels import use_fast_attention
    use_fast_attention(model)       # idempotent; what the decode engine and the trainer do before torch.compile
"""

import math

import torch


def one_query_attention(q, k, v, mask=None):
    """Attention of one query per row, written as broadcast products and sums: q (B, H, 1, D), k and v (B, Hkv, S, D),
    mask (B, 1, 1, S) bool or None -> (B, H, 1, D). The heads that share a key/value head are grouped rather than
    the keys repeated, and scores and softmax are in float32. Under torch.compile Inductor fuses this into a few
    loops over the cache, where SDPA is one opaque call with a fixed cost (benchmarks/generate.md compares them)."""
    B, H, _, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    q = q.reshape(B, Hkv, H // Hkv, 1, D).float()
    scores = (q * k[:, :, None].float()).sum(-1) / math.sqrt(D)  # (B, Hkv, G, S)
    if mask is not None:
        scores = scores.masked_fill(~mask.reshape(B, 1, 1, S), float("-inf"))
    p = scores.softmax(-1)
    y = (p[..., None] * v[:, :, None].float()).sum(-2)  # (B, Hkv, G, D)
    return y.reshape(B, H, 1, D).to(v.dtype)


class CausalAttention(torch.autograd.Function):
    """Causal self-attention with PyTorch's CPU flash kernel forward and a hand-written backward.

    q (B, H, T, D), k and v (B, Hkv, T, D) -> (B, H, T, D). It recomputes
    the probabilities from the saved q, k and the forward's logsumexp, P = exp(q k^T / sqrt(D) - lse) under the
    causal mask, then, with D_i = sum_d dy_id y_id:
        dV = P^T dY,   dP = dY V^T,   dS = P * (dP - D) / sqrt(D),   dQ = dS K,   dK = dS^T Q
    as batched matrix products, the G = H / Hkv query heads of a key/value head stacked into one product's rows
    (K and V are not repeated). It holds (B, H, T, T) scores during backward, so it runs only for compiled bf16
    training on a CPU, and only while those are small (`use_hand_backward`; benchmarks/README.md has the timings
    that set the bounds).
    """

    @staticmethod
    def forward(ctx, q, k, v):
        G = q.shape[1] // k.shape[1]
        # The kernel takes grouped heads natively only in recent torch (2.7 returns NaN): it gets them repeated.
        y, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1), is_causal=True)
        ctx.save_for_backward(q, k, v, y, lse)
        return y

    @staticmethod
    def backward(ctx, dy):
        q, k, v, y, lse = ctx.saved_tensors
        B, H, T, D = q.shape
        Hkv = k.shape[1]
        G, scale = H // Hkv, D ** -0.5
        qg, dyg = q.reshape(B, Hkv, G * T, D), dy.reshape(B, Hkv, G * T, D)  # rows (g, t) of key/value head
        scores = (qg @ k.transpose(-2, -1)).view(B, Hkv, G, T, T).float()
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        p = torch.where(causal, torch.exp(scores * scale - lse.view(B, Hkv, G, T, 1)), 0.0)
        dp = (dyg @ v.transpose(-2, -1)).view(B, Hkv, G, T, T).float()
        delta = (dy.float() * y.float()).sum(-1).view(B, Hkv, G, T, 1)
        ds = (p * (dp - delta) * scale).to(q.dtype).view(B, Hkv, G * T, T)
        p = p.to(q.dtype).view(B, Hkv, G * T, T)
        dq = (ds @ k).view(B, H, T, D)
        dk = ds.transpose(-2, -1) @ qg  # (B, Hkv, T, D): summed over the group's rows by the product
        dv = p.transpose(-2, -1) @ dyg
        return dq, dk, dv


# The CPU flash kernel is a private op of PyTorch's (there in torch 2.7 and 2.13): where it is gone, SDPA.
FLASH_CPU = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


def use_hand_backward(q, is_causal: bool, mask, cache, dropout: float) -> bool:
    """Whether `CausalAttention` runs instead of SDPA: causal attention without mask, cache or dropout, bf16 on a
    CPU, being trained under torch.compile (eager, its unfused backward only matches SDPA's), with the backward's
    (B, H, T, T) scores at most 2^22 elements (batch 8 x 8 heads x 256 tokens; beyond, SDPA's is faster)."""
    B, H, T, _ = q.shape
    return (FLASH_CPU and is_causal and mask is None and cache is None and dropout == 0.0 and q.device.type == "cpu"
            and q.dtype == torch.bfloat16 and q.requires_grad and torch.compiler.is_compiling()
            and B * H * T * T <= 1 << 22)


def fast_attention(attention, q, k, v, mask, is_causal: bool, cache):
    """The `Attention.fast_attention` hook: `one_query_attention` for a decode step under torch.compile,
    `CausalAttention` where `use_hand_backward` holds, else None (the layer's own attention runs)."""
    T = q.shape[2]
    if T == 1 and not is_causal and not attention.training and torch.compiler.is_compiling():
        return one_query_attention(q, k, v, mask)
    dropout = attention.dropout if attention.training else 0.0
    if attention.flash and use_hand_backward(q, is_causal, mask, cache, dropout):
        return CausalAttention.apply(q, k, v)
    return None


def use_fast_attention(model):
    """Install `fast_attention` on every attention layer of `model` (in place); returns the model."""
    for module in model.modules():
        if hasattr(module, "fast_attention"):
            module.fast_attention = fast_attention
    return model
