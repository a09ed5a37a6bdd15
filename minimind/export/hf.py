"""Export as a Hugging Face directory that plain transformers loads, no custom code.

Which transformers architecture, by model:
- dense MiniMind 2: `LlamaForCausalLM`; dense MiniMind-3 (qk_norm): `Qwen3ForCausalLM`. Same parameter names, so the
  export is a config translation plus the unchanged state dict.
- MoE MiniMind-3 (qk_norm): `Qwen3MoeForCausalLM`, whose names (`mlp.gate`, `mlp.experts.E.*_proj`) are ours too.
  Qwen3-MoE renormalizes the top-k weights when `norm_topk_prob`, which our `moe_router` says when we do.
- MoE MiniMind 2: `MixtralForCausalLM`.

Neither Mixtral nor Qwen3-MoE has shared experts, so each shared expert (MiniMind 2 has one) is folded into every
routed expert (their SwiGLU widths concatenated: gate and up stacked, down side by side), which is exact because the
top-k weights sum to 1: sum_k w_k (e_k(x) + s(x)) = sum_k w_k e_k(x) + s(x). That needs renormalized top-k weights
(norm_topk_prob; MiniMind 2's router renormalizes only when num_experts_per_tok >= 2). Mixtral always renormalizes,
so a MiniMind 2 MoE without renormalized weights is refused. The folded experts are wider, so the shared experts'
work is done once per chosen expert.
"""

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, MixtralConfig, Qwen3Config, Qwen3MoeConfig

from ..checkpoint import resolve_dtype
from ..config import MiniMindConfig
from ..io import atomic_write, check_output

HF_DTYPES = ("fp32", "f32", "bf16", "fp16", "f16")  # the precisions a Hugging Face export takes (checkpoint.DTYPES)


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
    if config.use_moe or config.qk_norm:
        raise ValueError("only a dense model without qk_norm exports as Llama; see mixtral_config and qwen3_config")
    return LlamaConfig(intermediate_size=config.intermediate_size, attention_bias=False, mlp_bias=False,
                       **shared_fields(config))


def renormalizes(config: MiniMindConfig) -> bool:
    """Whether the model's top-k expert weights sum to 1 (MiniMind 2's router leaves a single expert's weight as its
    probability)."""
    return config.norm_topk_prob and (config.num_experts_per_tok > 1 or config.moe_router == "minimind3")


def folded_width(config: MiniMindConfig) -> int:
    """The width of a routed expert with every shared expert folded in."""
    return config.moe_intermediate_size + config.n_shared_experts * config.intermediate_size


def check_foldable(config: MiniMindConfig, target: str):
    """Folding shared experts into the routed ones is exact only when the top-k weights sum to 1."""
    if config.n_shared_experts and not renormalizes(config):
        raise ValueError(f"this MoE model has {config.n_shared_experts} shared expert(s) and routes with "
                         f"num_experts_per_tok={config.num_experts_per_tok}, norm_topk_prob={config.norm_topk_prob}: "
                         f"{target} has no shared experts, and folding them into the routed ones is exact only when "
                         "the top-k weights are renormalized to sum to 1")


def qwen3_config(config: MiniMindConfig) -> Qwen3Config:
    """The `Qwen3Config` whose `Qwen3ForCausalLM` computes the same function as a dense MiniMind-3 (qk_norm) model."""
    if config.use_moe or not config.qk_norm:
        raise ValueError("only a dense model with qk_norm exports as Qwen3; see qwen3_moe_config and llama_config")
    return Qwen3Config(intermediate_size=config.intermediate_size, attention_bias=False, use_sliding_window=False,
                       sliding_window=None, **shared_fields(config))


def qwen3_moe_config(config: MiniMindConfig) -> Qwen3MoeConfig:
    """The `Qwen3MoeConfig` whose `Qwen3MoeForCausalLM` computes the same function as an MoE model with qk_norm (its
    shared experts, if any, folded into the routed ones by `folded_experts_state_dict`)."""
    if not (config.use_moe and config.qk_norm):
        raise ValueError("only an MoE model with qk_norm exports as Qwen3-MoE; see qwen3_config and mixtral_config")
    check_foldable(config, "Qwen3-MoE")
    return Qwen3MoeConfig(intermediate_size=config.intermediate_size, moe_intermediate_size=folded_width(config),
                          num_experts=config.n_routed_experts, num_experts_per_tok=config.num_experts_per_tok,
                          norm_topk_prob=renormalizes(config), decoder_sparse_step=1, mlp_only_layers=[],
                          router_aux_loss_coef=config.aux_loss_alpha, attention_bias=False, use_sliding_window=False,
                          sliding_window=None, **shared_fields(config))


def mixtral_config(config: MiniMindConfig) -> MixtralConfig:
    """The `MixtralConfig` whose `MixtralForCausalLM` computes the same function as an MoE MiniMind model whose
    experts' weights are folded by `mixtral_state_dict`."""
    if not config.use_moe or config.qk_norm:
        raise ValueError("only an MoE model without qk_norm exports as Mixtral; see llama_config and qwen3_moe_config")
    if not renormalizes(config):
        raise ValueError(f"this MoE model routes with num_experts_per_tok={config.num_experts_per_tok}, "
                         f"norm_topk_prob={config.norm_topk_prob}: Mixtral always renormalizes the top-k weights "
                         "to sum to 1, so only models with norm_topk_prob=True and num_experts_per_tok >= 2 export "
                         "to --format hf exactly")
    return MixtralConfig(intermediate_size=folded_width(config),
                         num_local_experts=config.n_routed_experts, num_experts_per_tok=config.num_experts_per_tok,
                         router_aux_loss_coef=config.aux_loss_alpha, router_jitter_noise=0.0, sliding_window=None,
                         **shared_fields(config))


def folded_experts_state_dict(state: dict, config: MiniMindConfig) -> dict:
    """An MoE state dict with each shared expert folded into every routed expert (gate and up rows stacked, down
    columns side by side) and no `shared_experts` left: our names, which are Qwen3-MoE's."""
    if not config.n_shared_experts:
        return state
    out = {k: v for k, v in state.items() if ".mlp." not in k}
    for layer in range(config.num_hidden_layers):
        mlp = f"model.layers.{layer}.mlp"
        out[f"{mlp}.gate.weight"] = state[f"{mlp}.gate.weight"]
        shared = [f"{mlp}.shared_experts.{i}" for i in range(config.n_shared_experts)]
        for e in range(config.n_routed_experts):
            parts, expert = [f"{mlp}.experts.{e}", *shared], f"{mlp}.experts.{e}"
            for proj, dim in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
                out[f"{expert}.{proj}.weight"] = torch.cat([state[f"{p}.{proj}.weight"] for p in parts], dim=dim)
    return out


def mixtral_state_dict(state: dict, config: MiniMindConfig) -> dict:
    """An MoE MiniMind state dict in Mixtral's names (`block_sparse_moe.gate`, `block_sparse_moe.experts.E.w1/w2/w3`,
    the layout transformers 4 and 5 both load), each shared expert folded into every routed expert."""
    folded = folded_experts_state_dict(state, config)
    out = {k: v for k, v in folded.items() if ".mlp." not in k}
    names = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
    for layer in range(config.num_hidden_layers):
        mlp, moe = f"model.layers.{layer}.mlp", f"model.layers.{layer}.block_sparse_moe"
        out[f"{moe}.gate.weight"] = folded[f"{mlp}.gate.weight"]
        for e in range(config.n_routed_experts):
            for proj, w in names.items():
                out[f"{moe}.experts.{e}.{w}.weight"] = folded[f"{mlp}.experts.{e}.{proj}.weight"]
    return out


def hf_target(config: MiniMindConfig, state: dict):
    """(the transformers config, its architecture name, the state dict in its names) for a model's export."""
    if config.qk_norm and config.use_moe:
        return qwen3_moe_config(config), "Qwen3MoeForCausalLM", folded_experts_state_dict(state, config)
    if config.qk_norm:
        return qwen3_config(config), "Qwen3ForCausalLM", state
    if config.use_moe:
        return mixtral_config(config), "MixtralForCausalLM", mixtral_state_dict(state, config)
    return llama_config(config), "LlamaForCausalLM", state


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
    (Llama or Mixtral for MiniMind 2, Qwen3 or Qwen3-MoE for a qk_norm model: see the module), model.safetensors,
    generation_config.json and the tokenizer files."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    from ..tokenizer import save_tokenizer

    config = model.config
    if dtype not in HF_DTYPES:
        raise ValueError(f"--dtype {dtype}: not a Hugging Face export precision; choose fp32, bf16 or fp16")
    out = check_output(out, force, "dir")
    torch_dtype = resolve_dtype(dtype)
    state = {k: v.detach().to("cpu", torch_dtype).contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # Llama re-ties it to model.embed_tokens.weight on load
    target, architecture, state = hf_target(config, state)
    target.architectures = [architecture]
    target.dtype = torch_dtype
    with atomic_write(out, directory=True) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        target.save_pretrained(str(tmp))
        add_legacy_rope_fields(tmp / "config.json", config)
        GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id).save_pretrained(str(tmp))
        save_tokenizer(tokenizer, tmp)
    return out
