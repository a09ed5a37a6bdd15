"""MiniMindConfig: every field the MiniMind model reads, with MiniMind's defaults, plus named presets.

The field names are MiniMind's (and mostly Hugging Face Llama's), so a `config.json` written by the
public MiniMind project loads here and ours loads there.

One config covers both of MiniMind's model generations. MiniMind 2 (the seeds' model) is the default; `qk_norm=True`
makes a MiniMind-3 model (per-head query/key RMSNorm, as Qwen3), whose other defaults then follow MiniMind-3
(`GENERATION_DEFAULTS`, FFN width pi * hidden, its MoE router). A MiniMind-3 `config.json` (with its names
`num_experts`, `router_aux_loss_coef`) reads as a MiniMind-3 model.
"""

import math

from transformers import PreTrainedConfig

from .presets import PRESETS

SCORING_FUNCS = ("softmax",)

# How an MoE layer turns router scores into expert weights and a load-balancing loss, per MiniMind generation:
# - "minimind2": top-k weights renormalized only when k > 1; aux = alpha * sum_i f_i * P_i, per sequence (seq_aux)
#   or over the batch, f_i being expert i's share of the slots times E (alpha at uniform routing).
# - "minimind3" (as Qwen3-MoE): top-k weights renormalized for every k when norm_topk_prob; aux = alpha * E *
#   sum_i load_i * P_i over the batch, load_i summed over the k choices (alpha * k at uniform routing).
MOE_ROUTERS = ("minimind2", "minimind3")

# Keys that only a MiniMind-3 config.json has (its model always normalizes queries and keys per head).
MINIMIND3_KEYS = ("router_aux_loss_coef", "num_experts")

# What `qk_norm` switches. A model with per-head query/key norms is MiniMind-3's generation, and these six defaults
# follow the generation: a field left None (or not given) takes its generation's value; a value given always wins.
#   ffn_ratio: the SwiGLU width is ceil(ffn_ratio * hidden / 64) * 64 unless intermediate_size is given
MINIMIND2_DEFAULTS = dict(ffn_ratio=8 / 3, rms_norm_eps=1e-5, num_experts_per_tok=2, n_shared_experts=1,
                          aux_loss_alpha=0.01, moe_router="minimind2")
MINIMIND3_DEFAULTS = dict(ffn_ratio=math.pi, rms_norm_eps=1e-6, num_experts_per_tok=1, n_shared_experts=0,
                          aux_loss_alpha=5e-4, moe_router="minimind3")
GENERATION_DEFAULTS = {False: MINIMIND2_DEFAULTS, True: MINIMIND3_DEFAULTS}  # by qk_norm


def ffn_width(hidden_size: int, qk_norm: bool) -> int:
    """The default SwiGLU width of a generation (`GENERATION_DEFAULTS`' ffn_ratio), rounded up to a multiple of 64."""
    return 64 * math.ceil(GENERATION_DEFAULTS[qk_norm]["ffn_ratio"] * hidden_size / 64)

def default_head_dim(hidden_size, num_attention_heads):
    """hidden_size / num_attention_heads, or a ValueError where the heads do not divide it (give head_dim then)."""
    if not isinstance(num_attention_heads, int) or num_attention_heads <= 0:
        return None  # validate() names the field
    if hidden_size % num_attention_heads:
        raise ValueError(f"MiniMindConfig.num_attention_heads ({num_attention_heads}) must divide "
                         f"hidden_size ({hidden_size}), or give head_dim")
    return hidden_size // num_attention_heads


# YaRN settings used when `inference_rope_scaling=True` (MiniMind's values).
YARN_SCALING = {
    "type": "yarn",
    "factor": 16,
    "original_max_position_embeddings": 2048,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "attention_factor": 1.0,
}


class MiniMindConfig(PreTrainedConfig):
    """The model's shape and settings. Fields the seeds name keep their names and MiniMind 2's defaults; with
    `qk_norm=True` the fields left None take MiniMind-3's defaults instead (`MINIMIND3_DEFAULTS`: FFN width
    pi * hidden, rms_norm_eps 1e-6, top-1 routing, no shared expert, Qwen3-MoE's router and aux-loss weight).
    `head_dim` defaults to hidden_size / num_attention_heads, `moe_intermediate_size` to the FFN width. A field the
    model cannot build is a ValueError naming it (`validate`)."""

    model_type = "minimind"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the cache: its names from and before transformers 5.24

    def __init__(
        self,
        hidden_size: int = 512,
        num_hidden_layers: int = 8,
        num_attention_heads: int = 8,
        num_key_value_heads: int = 2,
        vocab_size: int = 6400,
        max_position_embeddings: int = 32768,
        intermediate_size: int | None = None,
        head_dim: int | None = None,
        qk_norm: bool | None = None,
        rms_norm_eps: float | None = None,
        rope_theta: float = 1e6,
        inference_rope_scaling: bool = False,
        dropout: float = 0.0,
        flash_attn: bool = True,
        hidden_act: str = "silu",
        initializer_range: float = 0.02,
        # MoE
        use_moe: bool = False,
        num_experts_per_tok: int | None = None,
        n_routed_experts: int = 4,
        n_shared_experts: int | None = None,
        moe_intermediate_size: int | None = None,
        moe_router: str | None = None,
        scoring_func: str = "softmax",
        aux_loss_alpha: float | None = None,
        seq_aux: bool = True,
        norm_topk_prob: bool = True,
        # special tokens (ids of the shipped tokenizer)
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        """Every field with its default, one a line (the seeds name them), so this runs past 60 lines."""
        # A MiniMind-3 config.json (its names: num_experts, router_aux_loss_coef; no qk_norm key, the model always
        # has it) reads as the same model here.
        minimind3 = qk_norm is None and any(k in kwargs for k in MINIMIND3_KEYS)
        n_routed_experts = kwargs.pop("num_experts", n_routed_experts)
        aux_loss_alpha = kwargs.pop("router_aux_loss_coef", aux_loss_alpha)
        qk_norm = bool(qk_norm) or minimind3
        given = dict(rms_norm_eps=rms_norm_eps, num_experts_per_tok=num_experts_per_tok,
                     n_shared_experts=n_shared_experts, aux_loss_alpha=aux_loss_alpha, moe_router=moe_router or None)
        generation = {k: GENERATION_DEFAULTS[qk_norm][k] if v is None else v for k, v in given.items()}
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.intermediate_size = intermediate_size or ffn_width(hidden_size, qk_norm)
        self.head_dim = head_dim if head_dim is not None else default_head_dim(hidden_size, num_attention_heads)
        self.qk_norm = qk_norm
        self.rms_norm_eps = generation["rms_norm_eps"]
        self.rope_theta = rope_theta
        self.inference_rope_scaling = inference_rope_scaling
        # MiniMind's config.json carries the YaRN parameters as `rope_scaling`; kept here as `yarn_scaling`
        # (transformers 5 reserves the name `rope_scaling` for its own RoPE machinery).
        yarn_scaling = kwargs.pop("yarn_scaling", None) or kwargs.pop("rope_scaling", None)
        self.yarn_scaling = dict(YARN_SCALING, **(yarn_scaling or {})) if inference_rope_scaling else None
        self.dropout = dropout
        self.flash_attn = flash_attn
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.use_moe = use_moe
        self.num_experts_per_tok = generation["num_experts_per_tok"]
        self.n_routed_experts = n_routed_experts
        self.n_shared_experts = generation["n_shared_experts"]
        self.moe_intermediate_size = moe_intermediate_size or self.intermediate_size
        self.moe_router = generation["moe_router"]
        self.scoring_func = scoring_func
        self.aux_loss_alpha = generation["aux_loss_alpha"]
        self.seq_aux = seq_aux
        self.norm_topk_prob = norm_topk_prob
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate()

    @property
    def rope_scaling(self) -> dict | None:
        """The YaRN parameters in effect, under MiniMind's name. As in MiniMind, YaRN applies only when
        `inference_rope_scaling` is on and max_position_embeddings exceeds the original context."""
        y = self.yarn_scaling
        if y is None or self.max_position_embeddings <= y["original_max_position_embeddings"]:
            return None
        return y

    @property
    def num_experts(self) -> int:
        """MiniMind-3's (and Qwen3-MoE's) name for n_routed_experts."""
        return self.n_routed_experts

    def validate(self):
        """Raise a ValueError naming the field for any combination the model cannot build."""
        positive = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "vocab_size", "max_position_embeddings", "intermediate_size", "head_dim",
                    "moe_intermediate_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MiniMindConfig.{name} must be a positive integer, got {value!r}")
        if self.head_dim % 2:
            raise ValueError(f"MiniMindConfig.head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"MiniMindConfig.num_key_value_heads ({self.num_key_value_heads}) must divide "
                             f"num_attention_heads ({self.num_attention_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MiniMindConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError("MiniMindConfig.rms_norm_eps and rope_theta must be positive")
        if self.hidden_act != "silu":
            raise ValueError(f"MiniMindConfig.hidden_act: only 'silu' (SwiGLU) is supported, got {self.hidden_act!r}")
        if self.use_moe:
            if self.n_routed_experts < 1:
                raise ValueError(f"MiniMindConfig.n_routed_experts must be >= 1, got {self.n_routed_experts}")
            if not 1 <= self.num_experts_per_tok <= self.n_routed_experts:
                raise ValueError(f"MiniMindConfig.num_experts_per_tok ({self.num_experts_per_tok}) must be between 1 "
                                 f"and n_routed_experts ({self.n_routed_experts})")
            if self.n_shared_experts < 0:
                raise ValueError(f"MiniMindConfig.n_shared_experts must be >= 0, got {self.n_shared_experts}")
            if self.moe_router not in MOE_ROUTERS:
                raise ValueError(f"MiniMindConfig.moe_router: unknown router {self.moe_router!r}; supported: "
                                 f"{', '.join(MOE_ROUTERS)}")
            if self.scoring_func not in SCORING_FUNCS:
                raise ValueError(f"MiniMindConfig.scoring_func: unknown scoring function {self.scoring_func!r}; "
                                 f"supported: {', '.join(SCORING_FUNCS)}")
            if self.aux_loss_alpha < 0:
                raise ValueError(f"MiniMindConfig.aux_loss_alpha must be >= 0, got {self.aux_loss_alpha}")


def preset(name: str, **overrides) -> MiniMindConfig:
    """Build a named preset config (`tiny`, `small`, `medium`, `large`, `small-moe`/`moe`, `minimind3`,
    `minimind3-moe`), with overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return MiniMindConfig(**{**PRESETS[name], **overrides})
