"""Export as one GGUF file for llama.cpp and Ollama.

A MiniMind 2 model is written as llama.cpp's `llama` architecture, with the Q and K projections permuted into
llama.cpp's RoPE layout as llama.cpp's own converter does (Hugging Face rotates the two halves of a head, llama.cpp
adjacent pairs); its MoE is Mixtral-shaped as in the Hugging Face export (router `ffn_gate_inp`, the folded experts
stacked in `ffn_*_exps`), which llama.cpp runs as `llama`. A MiniMind-3 (qk_norm) model is written as `qwen3`, its
MoE as `qwen3moe` (per-head `attn_q_norm` / `attn_k_norm`; halves-rotating RoPE, so no permutation). The tokenizer
goes in as byte-level BPE ("gpt2") metadata.
"""

import json
import math
from pathlib import Path

import torch

from ..config import MiniMindConfig
from ..io import atomic_write, check_output
from .hf import (
    folded_experts_state_dict,
    folded_width,
    mixtral_config,
    mixtral_state_dict,
    qwen3_moe_config,
    renormalizes,
)

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1")

GGUF_ALIASES = {"fp32": "f32", "fp16": "f16"}

GGUF_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
                   "q4_0": "MOSTLY_Q4_0", "q4_1": "MOSTLY_Q4_1"}  # gguf.LlamaFileType's names


# --- GGUF --------------------------------------------------------------------------------------------------

def to_llama_cpp_rope(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a Q or K projection from Hugging Face's RoPE layout (each head: first half, second half) to
    llama.cpp's and Meta's (adjacent pairs), as llama.cpp's converter does. (n_heads * D, C) -> same shape."""
    return weight.reshape(n_heads, 2, -1, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def from_llama_cpp_rope(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `to_llama_cpp_rope`: adjacent-pair RoPE rows back to the Hugging Face (and our) layout."""
    return weight.reshape(n_heads, -1, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def gguf_tensor_name(name: str) -> str | None:
    """llama.cpp's name for one of our parameters (None: lm_head, handled by the caller)."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if name in fixed:
        return fixed[name]
    parts = name.split(".")  # model.layers.N.<module>.<proj>.weight
    if parts[:2] != ["model", "layers"]:
        raise ValueError(f"{name}: no GGUF name for this parameter")
    block = f"blk.{parts[2]}"
    leaf = ".".join(parts[3:])
    names = {"block_sparse_moe.gate.weight": "ffn_gate_inp.weight",
             "block_sparse_moe.experts.w1": "ffn_gate_exps.weight",
             "block_sparse_moe.experts.w3": "ffn_up_exps.weight",
             "block_sparse_moe.experts.w2": "ffn_down_exps.weight",
             "mlp.gate.weight": "ffn_gate_inp.weight", "mlp.experts.gate_proj": "ffn_gate_exps.weight",
             "mlp.experts.up_proj": "ffn_up_exps.weight", "mlp.experts.down_proj": "ffn_down_exps.weight",
             "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight", "input_layernorm.weight": "attn_norm.weight",
             "post_attention_layernorm.weight": "ffn_norm.weight"}
    if leaf not in names:
        raise ValueError(f"{name}: no GGUF name for this parameter")
    return f"{block}.{names[leaf]}"


def gguf_tensors(state: dict, config: MiniMindConfig):
    """(name, tensor) in our names, except that an MoE layer's experts come stacked, as llama.cpp keeps them:
    Mixtral-named (see `mixtral_state_dict`) `...block_sparse_moe.experts.w1` (experts, ff, hidden), w3 alike, w2
    (experts, hidden, ff); ours (Qwen3-MoE's) `...mlp.experts.gate_proj`, up_proj, down_proj alike."""
    experts = {}
    for key, t in state.items():
        if ".experts." not in key:
            yield key, t
            continue
        prefix, rest = key.split(".experts.")
        expert, proj = rest.split(".")[:2]
        experts.setdefault(f"{prefix}.experts.{proj}", {})[int(expert)] = t
    for key, parts in experts.items():
        yield key, torch.stack([parts[e] for e in range(config.n_routed_experts)])


def gguf_vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of a byte-level BPE tokenizer as llama.cpp's "gpt2" model wants them, padded
    to the model's vocab_size with unused `[PADn]` tokens as llama.cpp's converter does."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre = spec.get("model", {}), spec.get("pre_tokenizer") or {}
    byte_level = pre.get("type") == "ByteLevel" and pre.get("use_regex", True)  # GPT-2's split, then bytes
    if model.get("type") != "BPE" or not byte_level or spec.get("normalizer") is not None:
        raise ValueError("GGUF export needs a byte-level BPE tokenizer (BPE model, ByteLevel pre-tokenizer, no "
                         f"normalizer), as `minimind tokenizer train` makes; this one has model "
                         f"{model.get('type')!r}, pre-tokenizer {pre.get('type')!r}")
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)  # token -> id
    by_id = {i: t for t, i in vocab.items()}
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            if i in added:
                types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
            else:
                types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def export_gguf(model, tokenizer, out: str | Path, dtype: str = "f16", force: bool = False, name: str = "minimind"):
    """Write `model` and `tokenizer` as one GGUF file of llama.cpp's `llama` architecture (an MoE model as Mixtral
    is written: shared experts folded into the routed ones, expert tensors stacked), or `qwen3` / `qwen3moe` for a
    qk_norm model. dtype: f32, f16, bf16, q8_0, q4_0 or q4_1 for the matrices (norms stay f32, as llama.cpp's
    converter keeps them; a q8_0 / q4_x matrix whose rows are not a multiple of 32 falls back to f16). A ValueError,
    before anything is written, for what the file cannot hold; the file appears whole or not at all."""
    import gguf

    config = model.config
    arch, state = gguf_arch_and_state(model)
    dtype = GGUF_ALIASES.get(dtype, dtype)
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"--dtype {dtype}: not a GGUF export precision; choose one of {', '.join(GGUF_DTYPES)}")
    out = check_output(out, force, "file")
    if out.suffix != ".gguf":
        raise ValueError(f"--out {out}: a GGUF file name ends in .gguf")
    vocab = gguf_vocab(tokenizer, config.vocab_size)  # a ValueError for a tokenizer GGUF cannot hold
    with atomic_write(out) as tmp:
        w = gguf.GGUFWriter(tmp, arch=arch)
        w.add_name(name)
        w.add_file_type(getattr(gguf.LlamaFileType, GGUF_FILE_TYPES[dtype]))
        add_model_metadata(w, config, arch)
        add_tokenizer_metadata(w, tokenizer, vocab)
        add_tensors(w, state, config, arch, dtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


def gguf_arch_and_state(model) -> tuple[str, dict]:
    """llama.cpp's architecture for `model` ("llama", "qwen3" or "qwen3moe") and its state dict in fp32, its experts
    laid out as that architecture reads them; a ValueError where the architecture cannot compute the model."""
    config = model.config
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    arch = ("qwen3moe" if config.use_moe else "qwen3") if config.qk_norm else "llama"
    if arch == "qwen3moe":
        qwen3_moe_config(config)  # refuses what Qwen3-MoE cannot compute
        if not renormalizes(config):  # llama.cpp's qwen3moe always renormalizes the top-k weights
            raise ValueError(f"this MoE model weights its single expert by its probability (num_experts_per_tok="
                             f"{config.num_experts_per_tok}, norm_topk_prob={config.norm_topk_prob}); llama.cpp's "
                             "qwen3moe always renormalizes the top-k weights, so it cannot be exported to GGUF exactly")
        state = folded_experts_state_dict(state, config)
    elif config.use_moe:  # as Mixtral, which llama.cpp runs as `llama` with expert tensors
        mixtral_config(config)  # refuses what Mixtral cannot compute
        state = mixtral_state_dict(state, config)
    return arch, state


def add_model_metadata(w, config, arch: str):
    """The model's shape, RoPE and YaRN settings as GGUF keys."""
    import gguf

    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    if config.use_moe:
        w.add_expert_count(config.n_routed_experts)
        w.add_expert_used_count(config.num_experts_per_tok)
    if arch == "qwen3moe":
        w.add_feed_forward_length(config.intermediate_size)
        w.add_expert_feed_forward_length(folded_width(config))
    else:
        w.add_feed_forward_length(folded_width(config) if config.use_moe else config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_rope_dimension_count(config.head_dim)
    w.add_rope_freq_base(float(config.rope_theta))
    w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    w.add_vocab_size(config.vocab_size)
    if config.rope_scaling is not None:  # YaRN, static, as MiniMind applies it
        y = config.rope_scaling
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(y["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(y["original_max_position_embeddings"]))
        w.add_rope_scaling_yarn_beta_fast(float(y["beta_fast"]))
        w.add_rope_scaling_yarn_beta_slow(float(y["beta_slow"]))
        # llama.cpp multiplies cos/sin by YaRN's magnitude scale 1 + 0.1 ln(factor) on top of this factor;
        # MiniMind applies attention_factor alone, so divide that scale out.
        w.add_rope_scaling_attn_factors(float(y["attention_factor"]) / (1 + 0.1 * math.log(y["factor"])))


def add_tokenizer_metadata(w, tokenizer, vocab: tuple[list[str], list[int], list[str]]):
    """The byte-level BPE vocabulary (`gguf_vocab`'s tokens, types and merges), special tokens and chat template as
    GGUF keys."""
    tokens, types, merges = vocab
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # the GPT-2 split regex, which a ByteLevel pre-tokenizer uses
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for token_id, add in ((tokenizer.bos_token_id, w.add_bos_token_id), (tokenizer.eos_token_id,
                          w.add_eos_token_id), (tokenizer.pad_token_id, w.add_pad_token_id)):
        if token_id is not None:
            add(token_id)
    # As our tokenizer files: nothing is added by encoding. The chat template writes <|im_start|> itself.
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    if tokenizer.chat_template:
        w.add_chat_template(tokenizer.chat_template)


def add_tensors(w, state: dict, config, arch: str, dtype: str):
    """Every tensor under llama.cpp's name, the matrices in `dtype` (f16 where a quantized row would not fit its
    blocks of 32), the vectors in f32; Q and K permuted into `llama`'s RoPE layout."""
    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    for key, t in gguf_tensors(state, config):
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd, as its own converter writes it
        if arch == "llama" and key.endswith("self_attn.q_proj.weight"):  # qwen3 rotates halves, as we do
            t = to_llama_cpp_rope(t, config.num_attention_heads)
        elif arch == "llama" and key.endswith("self_attn.k_proj.weight"):
            t = to_llama_cpp_rope(t, config.num_key_value_heads)
        data = t.numpy()
        target = dtype if data.ndim >= 2 else "f32"
        if target in ("q8_0", "q4_0", "q4_1") and data.shape[-1] % 32:
            target = "f16"
        if target == "f32":
            w.add_tensor(gguf_tensor_name(key), data)
        elif target == "f16":
            w.add_tensor(gguf_tensor_name(key), data.astype(np.float16))
        else:
            qtype = {"bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1}[target]
            w.add_tensor(gguf_tensor_name(key), gguf.quants.quantize(data, qtype), raw_dtype=qtype)
