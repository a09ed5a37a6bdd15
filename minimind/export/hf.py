"""Export as a Hugging Face directory that plain transformers loads, no custom code.

A dense MiniMind model *is* a Llama model with the same parameter names, so the export is a config translation
plus the unchanged state dict. An MoE model exports as Mixtral (`MixtralForCausalLM`): Mixtral has no shared
experts, so each shared expert is folded into every routed expert (their SwiGLU widths concatenated: gate and up
stacked, down side by side), which is exact because the top-k weights sum to 1: sum_k w_k (e_k(x) + s(x)) =
sum_k w_k e_k(x) + s(x). That needs renormalized top-k weights (norm_topk_prob, num_experts_per_tok >= 2), as
Mixtral always renormalizes; other MoE models are refused. The folded experts are wider, so the shared experts'
work is done once per chosen expert.
"""

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, MixtralConfig

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

    from ..tokenizer import save_tokenizer

    config = model.config
    if dtype not in HF_DTYPES:
        raise ValueError(f"--dtype {dtype}: not a Hugging Face export precision; choose fp32, bf16 or fp16")
    out = check_output(out, force, "dir")
    torch_dtype = resolve_dtype(dtype)
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
    with atomic_write(out, directory=True) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        target.save_pretrained(str(tmp))
        add_legacy_rope_fields(tmp / "config.json", config)
        GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id).save_pretrained(str(tmp))
        save_tokenizer(tokenizer, tmp)
    return out
