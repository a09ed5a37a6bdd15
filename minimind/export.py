"""Export to the formats other tools read.

A dense MiniMind model *is* a Llama model with the same parameter names, so the Hugging Face
export is a config translation plus the unchanged state dict.
"""

from transformers import LlamaConfig

from .config import MiniMindConfig


def llama_config(config: MiniMindConfig) -> LlamaConfig:
    """The `LlamaConfig` whose `LlamaForCausalLM` computes the same function as a dense MiniMind model."""
    if config.use_moe:
        raise ValueError("an MoE MiniMind model has no Llama equivalent; only dense models export to Llama")
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        y = config.rope_scaling
        rope = {"rope_type": "yarn", "rope_theta": config.rope_theta, "factor": float(y["factor"]),
                "original_max_position_embeddings": y["original_max_position_embeddings"],
                "beta_fast": y["beta_fast"], "beta_slow": y["beta_slow"],
                "attention_factor": y["attention_factor"]}
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters=rope,
        tie_word_embeddings=config.tie_word_embeddings,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )
