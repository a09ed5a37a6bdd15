"""Named model sizes and the defaults the command line shows, as plain values: importable without torch, so that
`--help` lists them at once.
"""

# The seed quick reference's presets (plus a tiny one for tests and quick CPU runs).
PRESETS = {
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=6400, max_position_embeddings=1024),
    "small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                  vocab_size=6400, max_position_embeddings=2048),
    "medium": dict(hidden_size=1024, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=4,
                   vocab_size=32000, max_position_embeddings=4096),
    "large": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=8,
                  vocab_size=32000, max_position_embeddings=8192),
    "small-moe": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                      vocab_size=6400, max_position_embeddings=2048, use_moe=True, num_experts_per_tok=2,
                      n_routed_experts=8, n_shared_experts=1, aux_loss_alpha=0.1),
}
PRESETS["moe"] = PRESETS["small-moe"]

# The public MiniMind's third generation (its released minimind-3 and minimind-3-moe): per-head query/key RMSNorm
# (qk_norm), which brings MiniMind-3's other defaults (config.MINIMIND3_DEFAULTS): FFN width
# ceil(pi * hidden / 64) * 64 = 2432, rms_norm_eps 1e-6; the MoE has 4 routed experts of that width, top-1, no shared
# expert, Qwen3-MoE's router and load-balancing loss (coefficient 5e-4). head_dim = hidden / heads = 96.
PRESETS["minimind3"] = dict(hidden_size=768, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                            qk_norm=True, vocab_size=6400, max_position_embeddings=32768)
PRESETS["minimind3-moe"] = dict(PRESETS["minimind3"], use_moe=True, n_routed_experts=4)

# The default model's shape, as the training commands' flags name it (the seed train.py's flags and defaults: the
# settings are None until the run starts, so that a --preset fills what was not given), and the config field each
# flag sets. A model's shape comes from here, PRESETS above, and the flags given; MiniMindConfig fills the rest.
DEFAULT_MODEL = {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 2, "vocab_size": 6400,
                 "use_moe": 0}
FLAG_TO_FIELD = {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
                 "num_kv_heads": "num_key_value_heads", "vocab_size": "vocab_size", "use_moe": "use_moe"}

# The linear layers LoRA adapts unless told otherwise: every projection of attention and of the feed-forward.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
