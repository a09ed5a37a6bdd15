"""Batch-1 decoding on a CPU as one C++ call a token: `minimind.DecodeModel` (`csrc/decode.cpp`) runs the
whole step of a model (embedding, every block, the final norm and the head) in one OpenMP parallel region, with
minimind's one-row product loops for fp32, bf16, int8 and int4 weights (`csrc/rows.h`). Dense and
mixture-of-experts models: a MoE block routes the row in the step (the router's softmax, its top k, their weights
renormalized as the model's router does) and runs only the chosen and the shared experts.

    step = native_step(model)            # None where the model or the machine does not suit it (`native_problem`)
    logits = step(token, position, column, seen, cache.keys, cache.values)   # (1, V) float32

`DecodeBatch` (`minimind.infer.engine`) steps a batch of one row on a CPU through it by default, and with
`compile=True` (in place of the compiled one-row graph; benchmarks/generate.md compares them).

What it computes is the model's forward for one token, in fp32 around the products: a bf16 model's hidden states
are not rounded to bf16 between operations as in its eager forward (closer to the fp32 model, not equal to the
bf16 one), an int8 model's products are the eager ones (the same kernel, the same rounding of x), and an int4
model's read PyTorch's packed int4 weights in place with x in fp32 (its eager kernel rounds x to bf16).
"""

import ctypes
import functools
import mmap

import torch
from torch import nn

from ..quantize import Int4Linear, Int8Linear
from .build import vector_ops
from .matvec import use_row_kernels

_NONE = torch.empty(0)  # the scale and row-sum of a layer that has none


def native_problem(model) -> str | None:
    """Why `model` cannot decode through `minimind.DecodeModel` on this machine, or None if it can."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device.type != "cpu" for t in tensors):
        return "the model is not on the CPU"
    if any(type(t.data) is not torch.Tensor for t in tensors) or (
            torch.distributed.is_available() and torch.distributed.is_initialized()):
        return "a model in distributed training (its tensors are sharded or synchronized)"
    config = model.config
    if getattr(config, "use_moe", False) and (config.scoring_func != "softmax" or
                                              config.moe_router not in ("minimind2", "minimind3")):
        return f"a mixture-of-experts router the step does not know ({config.scoring_func}, {config.moe_router})"
    ops = vector_ops()
    if not ops:
        return "minimind's CPU kernels are not available"
    layers = model.model.layers
    for i, block in enumerate(layers):
        for name, layer in linears(block):
            problem = layer_problem(layer, ops)
            if problem:
                return f"model.layers.{i}.{name}: {problem}"
    problem = layer_problem(model.lm_head, ops)
    if problem:
        return f"lm_head: {problem}"
    if model.model.embed_tokens.weight.dtype not in (torch.float32, torch.bfloat16):
        return f"an embedding of {model.model.embed_tokens.weight.dtype}"
    return None


def linears(block) -> list[tuple[str, nn.Module]]:
    """A block's products in the order `minimind.DecodeModel` takes them: q, k, v, o, then gate, up, down; a
    mixture-of-experts block's router, then gate, up, down of each routed expert, then of each shared one."""
    a, f = block.self_attn, block.mlp
    out = [("self_attn.q_proj", a.q_proj), ("self_attn.k_proj", a.k_proj), ("self_attn.v_proj", a.v_proj),
           ("self_attn.o_proj", a.o_proj)]
    ffns = [("mlp", f)]
    if hasattr(f, "experts"):
        out.append(("mlp.gate", f.gate))
        ffns = [(f"mlp.experts.{i}", e) for i, e in enumerate(f.experts)] + \
               [(f"mlp.shared_experts.{i}", e) for i, e in enumerate(f.shared_experts)]
    for name, ffn in ffns:
        out += [(f"{name}.gate_proj", ffn.gate_proj), (f"{name}.up_proj", ffn.up_proj),
                (f"{name}.down_proj", ffn.down_proj)]
    return out


def layer_problem(layer: nn.Module, ops: frozenset[str]) -> str | None:
    if type(layer) is Int8Linear:
        return None if "q8" in ops else "an int8 layer without minimind's int8 kernel"
    if type(layer) is Int4Linear:
        if "q4" not in ops:
            return "int4 weights without a vector kernel for them on this CPU"
        if layer.out_features % 64:
            return f"an int4 layer of {layer.out_features} outputs (the step reads int4 rows 64 at a time)"
        if not int4_layout_known():
            return f"torch {torch.__version__} packs int4 weights in a layout the step does not read"
        return None
    if type(layer) is not nn.Linear:
        return f"{type(layer).__name__} layers are not supported (plain linear, int8 or int4 layers only; merge a " \
               "LoRA adapter first)"
    if layer.bias is not None:
        return "a linear layer with a bias"
    kind = {torch.float32: "f32", torch.bfloat16: "bf16"}.get(layer.weight.dtype)
    if kind not in ops:
        return f"{layer.weight.dtype} weights without a vector kernel for them on this CPU"
    return None


@functools.cache
def int4_layout_known() -> bool:
    """Whether this torch's `_convert_weight_to_int4pack_for_cpu` lays out weights as `csrc/rows.h: q4_rows` reads
    them (blocks of 64 rows; per input, 32 bytes, byte j = row j's value | row j + 32's << 4): a private layout, so
    checked on a probe rather than assumed."""
    q = torch.randint(0, 16, (128, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    try:
        packed = torch._convert_weight_to_int4pack_for_cpu(q, 1).to(torch.int32)
    except (AttributeError, RuntimeError):
        return False
    if packed.numel() != 128 * 32:
        return False
    blocks = packed.reshape(2, 64, 32)  # (row block, input, byte)
    unpacked = torch.cat([blocks & 15, blocks >> 4], dim=2).permute(0, 2, 1).reshape(128, 64)
    return torch.equal(unpacked, q)


HUGE_PAGE = 2 << 20
MADV_COLLAPSE = 25  # linux/mman.h (Python's mmap module names it from 3.14 on)


def into_huge_pages(tensors: list[torch.Tensor]) -> bool:
    """Move the tensors' data into 2 MiB pages (Linux transparent huge pages), in place: each tensor object keeps its
    identity, shape, dtype and values, and gets a storage of its own (so that savers which look for tensors sharing
    memory, safetensors' and transformers', see none), in one anonymous memory map. The old storages are freed if
    nothing else holds them. Returns whether the kernel took the advice (False off Linux: the move is made anyway).
    A decode step reads every weight once: in 2 MiB pages it takes far fewer TLB misses than in 4 KiB ones."""
    unique = list({t.data_ptr(): t for t in tensors if t.is_contiguous() and t.device.type == "cpu"}.values())
    sizes = [-(-t.nbytes // 64) * 64 for t in unique]
    total = -(-sum(sizes) // HUGE_PAGE) * HUGE_PAGE
    if not total:
        return False
    # private and anonymous (a shared map would be shmem, whose huge pages are off by default); its zero pages are
    # not touched yet: they come at the copy
    arena = mmap.mmap(-1, total + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = -ctypes.addressof(ctypes.c_char.from_buffer(arena)) % HUGE_PAGE
    advised = hasattr(arena, "madvise") and hasattr(mmap, "MADV_HUGEPAGE")
    if advised:
        try:
            arena.madvise(mmap.MADV_HUGEPAGE, start, total)
        except OSError:
            advised = False
    offset = start
    with torch.inference_mode(False), torch.no_grad():
        for t, size in zip(unique, sizes):
            view = torch.frombuffer(arena, dtype=t.dtype, count=t.numel(), offset=offset).view(t.shape)
            view.copy_(t)
            t.data = view
            offset += size
    if advised:  # pages the copy got as 4 KiB ones, collapsed now (Linux 6.1 and later)
        try:
            arena.madvise(MADV_COLLAPSE, start, total)
        except OSError:
            pass
    return advised


def native_step(model):
    """The model's batch-1 decode step as one `minimind.DecodeModel.step` call, or None where `native_problem` says
    why not. The model's tensors are gathered once here: build it again after changing the model's layers or moving
    its tensors (the engine does, through `kept_on`); weights changed in place are seen. Building it moves the
    weights of the products into 2 MiB pages (`into_huge_pages`)."""
    if native_problem(model) is not None:
        return None
    use_row_kernels(model)  # the int8 layers' row sums
    layers = [m for block in model.model.layers for _, m in linears(block)] + [model.lm_head]
    into_huge_pages([layer.weight for layer in layers])
    weights, scales, rowsums = [], [], []
    for layer in layers:
        int8, int4 = type(layer) is Int8Linear, type(layer) is Int4Linear
        weights.append(layer.weight.detach().contiguous())
        scales.append(layer.scale.float().contiguous() if int8 else layer.scale_zeros if int4 else _NONE)
        rowsums.append(layer.rowsum if int8 else _NONE)
    norms = []
    for block in model.model.layers:
        norms += [block.input_layernorm.weight, block.post_attention_layernorm.weight]
        if block.self_attn.qk_norm:
            norms += [block.self_attn.q_norm.weight, block.self_attn.k_norm.weight]
    sources = [*norms, model.model.norm.weight]
    norms = [w.detach().float().contiguous() for w in sources]
    # the fp32 copies of bf16 norms, refreshed at a step if the model's own changed since (a model in training)
    copies = [[w, copy, w._version] for w, copy in zip(sources, norms) if copy.data_ptr() != w.data_ptr()]
    config = model.config
    moe = model.model.layers[0].mlp if config.use_moe else None
    routing = (0, 0, 0, False) if moe is None else (
        moe.n_experts, moe.top_k, len(moe.shared_experts), moe.norm_topk_prob and (moe.top_k > 1 or moe.minimind3))
    decoder = torch.classes.minimind.DecodeModel(
        model.model.embed_tokens.weight.detach().contiguous(), weights, scales, rowsums, norms,
        model.model.freqs_cos.float().contiguous(), model.model.freqs_sin.float().contiguous(),
        config.num_attention_heads, config.num_key_value_heads, config.head_dim, float(config.rms_norm_eps), *routing)

    def step(token: int, position: int, column: int, seen: torch.Tensor, keys: list[torch.Tensor],
             values: list[torch.Tensor]) -> torch.Tensor:
        """One token's forward at RoPE `position`: its key and value written at cache `column` of every layer's
        (1, Hkv, capacity, D) buffers, attention over the columns <= `column` that `seen` (capacity,) bool keeps.
        Returns its logits (1, V) float32."""
        for entry in copies:
            if entry[0]._version != entry[2]:
                with torch.inference_mode():
                    entry[1].copy_(entry[0])
                entry[2] = entry[0]._version
        return decoder.step(token, keys, values, seen, column, position)[None]
    return step
