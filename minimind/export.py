"""Export to the formats other tools read: a Hugging Face directory (Llama; Mixtral for MoE) and a GGUF file.

A dense MiniMind model *is* a Llama model with the same parameter names, so the Hugging Face export is a config
translation plus the unchanged state dict: the directory loads with plain `AutoModelForCausalLM.from_pretrained`,
no custom code. An MoE model exports as Mixtral (`MixtralForCausalLM`): Mixtral has no shared experts, so each
shared expert is folded into every routed expert (their SwiGLU widths concatenated: gate and up stacked, down side
by side), which is exact because the top-k weights sum to 1: sum_k w_k (e_k(x) + s(x)) = sum_k w_k e_k(x) + s(x).
That needs renormalized top-k weights (norm_topk_prob, num_experts_per_tok >= 2), as Mixtral always renormalizes;
other MoE models are refused. The folded experts are wider, so the shared experts' work is done once per chosen
expert. The GGUF export writes llama.cpp's `llama` architecture with the tokenizer as byte-level BPE
("gpt2") metadata, and permutes the Q and K projections into llama.cpp's RoPE layout as llama.cpp's own
converter does (Hugging Face rotates the two halves of a head, llama.cpp adjacent pairs).

    minimind export out/ --format hf --out out-hf
    minimind export out/ --format gguf --dtype q8_0 --out model.gguf

The GGUF file of an MoE model is Mixtral-shaped the same way (router `ffn_gate_inp`, the folded experts stacked in
`ffn_*_exps`), which llama.cpp runs as `llama`. Every file is written under a temporary name and renamed into
place, so an interrupted export never leaves a complete-looking file.
"""

import json
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import LlamaConfig, MixtralConfig

from .config import MiniMindConfig

FORMATS = ("hf", "gguf")
HF_DTYPES = {"fp32": torch.float32, "f32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
             "f16": torch.float16}
GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")
GGUF_ALIASES = {"fp32": "f32", "fp16": "f16"}


def shared_fields(config: MiniMindConfig) -> dict:
    """The config fields Llama and Mixtral share with a MiniMind model."""
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        y = config.rope_scaling
        rope = {"rope_type": "yarn", "rope_theta": config.rope_theta, "factor": float(y["factor"]),
                "original_max_position_embeddings": y["original_max_position_embeddings"],
                "beta_fast": y["beta_fast"], "beta_slow": y["beta_slow"],
                "attention_factor": y["attention_factor"]}
    return dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
                num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim,
                max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
                rope_parameters=rope, tie_word_embeddings=config.tie_word_embeddings, hidden_act="silu",
                pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id)


def llama_config(config: MiniMindConfig) -> LlamaConfig:
    """The `LlamaConfig` whose `LlamaForCausalLM` computes the same function as a dense MiniMind model."""
    if config.use_moe:
        raise ValueError("an MoE MiniMind model has no Llama equivalent; see mixtral_config")
    return LlamaConfig(intermediate_size=config.intermediate_size, attention_bias=False, mlp_bias=False,
                       **shared_fields(config))


def mixtral_config(config: MiniMindConfig) -> MixtralConfig:
    """The `MixtralConfig` whose `MixtralForCausalLM` computes the same function as an MoE MiniMind model whose
    experts' weights are folded by `mixtral_state_dict`."""
    if not config.use_moe:
        raise ValueError("a dense MiniMind model exports as Llama; see llama_config")
    if config.num_experts_per_tok < 2 or not config.norm_topk_prob:
        raise ValueError(f"this MoE model routes with num_experts_per_tok={config.num_experts_per_tok}, "
                         f"norm_topk_prob={config.norm_topk_prob}: Mixtral always renormalizes the top-k weights "
                         "to sum to 1, so only models with norm_topk_prob=True and num_experts_per_tok >= 2 export "
                         "to --format hf exactly")
    return MixtralConfig(intermediate_size=config.intermediate_size * (1 + config.n_shared_experts),
                         num_local_experts=config.n_routed_experts, num_experts_per_tok=config.num_experts_per_tok,
                         router_aux_loss_coef=config.aux_loss_alpha, router_jitter_noise=0.0, sliding_window=None,
                         **shared_fields(config))


def mixtral_state_dict(state: dict, config: MiniMindConfig) -> dict:
    """An MoE MiniMind state dict in Mixtral's names (`block_sparse_moe.gate`, `block_sparse_moe.experts.E.w1/w2/w3`,
    the layout transformers 4 and 5 both load), each shared expert folded into every routed expert."""
    out = {k: v for k, v in state.items() if ".mlp." not in k}
    for layer in range(config.num_hidden_layers):
        mlp, moe = f"model.layers.{layer}.mlp", f"model.layers.{layer}.block_sparse_moe"
        out[f"{moe}.gate.weight"] = state[f"{mlp}.gate.weight"]
        shared = [f"{mlp}.shared_experts.{i}" for i in range(config.n_shared_experts)]
        for e in range(config.n_routed_experts):
            parts = [f"{mlp}.experts.{e}", *shared]
            out[f"{moe}.experts.{e}.w1.weight"] = torch.cat([state[f"{p}.gate_proj.weight"] for p in parts], dim=0)
            out[f"{moe}.experts.{e}.w3.weight"] = torch.cat([state[f"{p}.up_proj.weight"] for p in parts], dim=0)
            out[f"{moe}.experts.{e}.w2.weight"] = torch.cat([state[f"{p}.down_proj.weight"] for p in parts], dim=1)
    return out


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


# --- Hugging Face ------------------------------------------------------------------------------------------

def add_legacy_rope_fields(path: Path, config: MiniMindConfig) -> None:
    """transformers 5 reads RoPE from `rope_parameters`; 4.x from `rope_theta` and `rope_scaling`. Write both."""
    fields = json.loads(path.read_text(encoding="utf-8"))
    fields["rope_theta"] = config.rope_theta
    if config.rope_scaling is not None:
        y = config.rope_scaling
        fields["rope_scaling"] = {"rope_type": "yarn", "factor": float(y["factor"]),
                                  "original_max_position_embeddings": y["original_max_position_embeddings"],
                                  "beta_fast": y["beta_fast"], "beta_slow": y["beta_slow"],
                                  "attention_factor": y["attention_factor"]}
    path.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def export_hf(model, tokenizer, out: str | Path, dtype: str = "fp32", force: bool = False) -> Path:
    """Write `model` and `tokenizer` as a Hugging Face directory that plain transformers loads: config.json
    (LlamaForCausalLM for a dense model, MixtralForCausalLM for an MoE one), model.safetensors,
    generation_config.json and the tokenizer files."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    from .tokenizer import save_tokenizer

    config = model.config
    if dtype not in HF_DTYPES:
        raise ValueError(f"--dtype {dtype}: not a Hugging Face export precision; choose fp32, bf16 or fp16")
    out = check_output(out, force, "dir")
    torch_dtype = HF_DTYPES[dtype]
    state = {k: v.detach().to("cpu", torch_dtype).contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # Llama re-ties it to model.embed_tokens.weight on load
    if config.use_moe:
        target, state = mixtral_config(config), mixtral_state_dict(state, config)
        target.architectures = ["MixtralForCausalLM"]
    else:
        target = llama_config(config)
        target.architectures = ["LlamaForCausalLM"]
    target.dtype = torch_dtype
    with staging_dir(out) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        target.save_pretrained(str(tmp))
        add_legacy_rope_fields(tmp / "config.json", config)
        GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id).save_pretrained(str(tmp))
        save_tokenizer(tokenizer, tmp)
        publish_dir(tmp, out)
    return out


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
             "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight", "input_layernorm.weight": "attn_norm.weight",
             "post_attention_layernorm.weight": "ffn_norm.weight"}
    if leaf not in names:
        raise ValueError(f"{name}: no GGUF name for this parameter")
    return f"{block}.{names[leaf]}"


def gguf_tensors(state: dict, config: MiniMindConfig):
    """(name, tensor) in our names, except that an MoE layer's Mixtral-named experts (see `mixtral_state_dict`) come
    stacked, as llama.cpp keeps them: `...block_sparse_moe.experts.w1` (experts, ff, hidden), w3 alike, w2
    (experts, hidden, ff)."""
    experts = {}
    for key, t in state.items():
        if ".block_sparse_moe.experts." not in key:
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
    is written: shared experts folded into the routed ones, expert tensors stacked). dtype: f32, f16, bf16 or q8_0
    for the matrices (norms stay f32, as llama.cpp's converter keeps them; a q8_0 matrix whose rows are not a
    multiple of 32 falls back to f16)."""
    import gguf
    import numpy as np

    config = model.config
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    if config.use_moe:  # as Mixtral, which llama.cpp runs as `llama` with expert tensors
        mixtral, state = mixtral_config(config), mixtral_state_dict(state, config)
    dtype = GGUF_ALIASES.get(dtype, dtype)
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"--dtype {dtype}: not a GGUF export precision; choose one of {', '.join(GGUF_DTYPES)}")
    out = check_output(out, force, "file")
    if out.suffix != ".gguf":
        raise ValueError(f"--out {out}: a GGUF file name ends in .gguf")
    Q = gguf.GGMLQuantizationType
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    tokens, types, merges = gguf_vocab(tokenizer, config.vocab_size)

    tmp = staging_path(out)
    try:
        w = gguf.GGUFWriter(tmp, arch="llama")
        w.add_name(name)
        w.add_file_type(file_type)
        w.add_context_length(config.max_position_embeddings)
        w.add_embedding_length(config.hidden_size)
        w.add_block_count(config.num_hidden_layers)
        if config.use_moe:
            w.add_feed_forward_length(mixtral.intermediate_size)  # the folded experts' width
            w.add_expert_count(config.n_routed_experts)
            w.add_expert_used_count(config.num_experts_per_tok)
        else:
            w.add_feed_forward_length(config.intermediate_size)
        w.add_head_count(config.num_attention_heads)
        w.add_head_count_kv(config.num_key_value_heads)
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

        for key, t in gguf_tensors(state, config):
            if key == "lm_head.weight" and config.tie_word_embeddings:
                continue  # llama.cpp reuses token_embd, as its own converter writes it
            if key.endswith("self_attn.q_proj.weight"):
                t = to_llama_cpp_rope(t, config.num_attention_heads)
            elif key.endswith("self_attn.k_proj.weight"):
                t = to_llama_cpp_rope(t, config.num_key_value_heads)
            data = t.numpy()
            target = dtype if data.ndim >= 2 else "f32"
            if target == "q8_0" and data.shape[-1] % 32:
                target = "f16"
            if target == "f32":
                w.add_tensor(gguf_tensor_name(key), data)
            elif target == "f16":
                w.add_tensor(gguf_tensor_name(key), data.astype(np.float16))
            else:
                qtype = Q.BF16 if target == "bf16" else Q.Q8_0
                w.add_tensor(gguf_tensor_name(key), gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def export(spec: str, fmt: str, out: str, config: str | None = None, dtype: str | None = None,
           force: bool = False) -> Path:
    """Load the model at `spec` (any MODEL that `minimind.checkpoint.load_model` takes) and export it as `fmt`
    ("hf" or "gguf") to `out`. dtype: fp32/bf16/fp16 for hf (default fp32), f32/f16/bf16/q8_0 for gguf
    (default f16)."""
    from .checkpoint import load_model

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt}: unknown export format; choose hf (Hugging Face Llama directory) or gguf "
                         "(llama.cpp / Ollama file)")
    check_output(out, force, "dir" if fmt == "hf" else "file")  # before the (slow) load; checked again on writing
    model, tokenizer = load_model(spec, config, device="cpu")
    name = Path(spec).resolve().name if Path(spec).is_dir() else Path(spec).resolve().parent.name
    try:
        if fmt == "hf":
            return export_hf(model, tokenizer, out, dtype or "fp32", force)
        return export_gguf(model, tokenizer, out, dtype or "f16", force, name=name or "minimind")
    except OSError as err:  # a folder that cannot be written, a full disk: nothing half-written is left
        raise ValueError(f"--out {out}: cannot write there ({err.strerror or err}); choose another path") from None
