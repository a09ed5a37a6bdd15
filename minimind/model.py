"""The MiniMind model: a Llama-style decoder-only transformer, dense or mixture-of-experts.

Read top to bottom: RMSNorm, rotary embeddings (with YaRN), attention (grouped-query, through
`F.scaled_dot_product_attention`, writing into the KV cache of `minimind/kv_cache.py`), the SwiGLU
feed-forward, the MoE layer, the block, the model. Parameter names are MiniMind's, which are Hugging
Face Llama's (`model.layers.0.self_attn.q_proj` ...), so a dense state dict loads unchanged into
`transformers.LlamaForCausalLM` and back, and the public MiniMind checkpoints load here.

Notable choices:
- GQA is left to SDPA (`enable_gqa=True`); K/V are never materialised per query head. A layer can be given a
  faster attention for some shapes (`Attention.fast_attention`; `minimind.kernels` has the CPU ones); none is
  installed here.
- The KV cache is preallocated and written in place; it grows by doubling, never by a `cat` per token.
- MoE dispatch sorts token slots by expert and runs each expert once on its contiguous group, the
  same path in training and inference (no Python loop over tokens).
- `loss` is the shifted next-token cross-entropy alone; the MoE load-balancing loss is returned
  separately as `aux_loss` (a 0-dim tensor, zero for dense models) for the caller to add, as MiniMind.
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel

from .config import MiniMindConfig
from .kv_cache import KVCache


class RMSNorm(nn.Module):
    """weight * x / sqrt(mean(x^2) + eps), computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.type_as(x)


def rope_frequencies(head_dim: int, theta: float, rope_scaling: dict | None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies theta^(-2i/d), with YaRN's per-dimension interpolation when scaling is on."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if rope_scaling is None:
        return inv_freq.float(), 1.0
    factor = rope_scaling["factor"]
    orig_max = rope_scaling["original_max_position_embeddings"]
    # Dimension whose wavelength completes `rotations` turns over the original context.
    def dim_for(rotations):
        return head_dim * math.log(orig_max / (rotations * 2 * math.pi)) / (2 * math.log(theta))
    low = max(math.floor(dim_for(rope_scaling["beta_fast"])), 0)
    high = min(math.ceil(dim_for(rope_scaling["beta_slow"])), head_dim // 2 - 1)
    # ramp = 0: high-frequency dims, kept (extrapolated); ramp = 1: low-frequency dims, divided by factor.
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
    inv_freq = inv_freq * (1 - ramp) + inv_freq / factor * ramp
    return inv_freq.float(), float(rope_scaling.get("attention_factor", 1.0))


def rope_cos_sin(config: MiniMindConfig, length: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (length, head_dim) for positions 0..length-1, attention factor folded in."""
    inv_freq, attn_factor = rope_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (L, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, D)
    return (angles.cos() * attn_factor).to(device), (angles.sin() * attn_factor).to(device)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(q, k, cos, sin):
    """q (B, H, T, D), k (B, Hkv, T, D); cos/sin broadcastable to (B, 1, T, D)."""
    q_out = q * cos + rotate_half(q) * sin
    k_out = k * cos + rotate_half(k) * sin
    return q_out.to(q.dtype), k_out.to(k.dtype)


class Attention(nn.Module):
    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=False)
        if config.qk_norm:  # MiniMind-3 / Qwen3: RMSNorm over each head's query and key, before RoPE
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.qk_norm = config.qk_norm
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.flash = config.flash_attn
        self.layer_idx = 0  # set by the model
        # An optional faster attention for some shapes and devices, installed by `minimind.kernels.use_fast_attention`:
        # fast_attention(self, q, k, v, mask, is_causal, cache) -> y, or None where it does not apply.
        self.fast_attention = None

    def forward(self, x, cos, sin, mask=None, is_causal=False, cache=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, Hkv, S, D), S = past + T
        y = self.fast_attention(self, q, k, v, mask, is_causal, cache) if self.fast_attention is not None else None
        if y is None:
            y = self.attend(q, k, v, mask, is_causal)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*D)
        return self.resid_dropout(self.o_proj(y))

    def attend(self, q, k, v, mask=None, is_causal=False):
        """softmax(q k^T / sqrt(D) + mask) v: q (B, H, T, D), k and v (B, Hkv, S, D) -> (B, H, T, D)."""
        dropout = self.dropout if self.training else 0.0
        if self.flash:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                                  enable_gqa=self.n_kv_heads != self.n_heads)
        # explicit attention, for reading and for checking SDPA
        T, S = q.shape[2], k.shape[2]
        rep = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, H, S, D)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, S)
        if is_causal:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return F.dropout(scores.float().softmax(-1).type_as(q), dropout, self.training) @ v


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), `width` wide (default: the config's intermediate_size)."""

    def __init__(self, config: MiniMindConfig, width: int | None = None):
        super().__init__()
        width = width or config.intermediate_size
        self.gate_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.down_proj = nn.Linear(width, config.hidden_size, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class MoEFeedForward(nn.Module):
    """Top-k routed SwiGLU experts plus always-on shared experts (MiniMind 2; MiniMind-3 has none), with a
    load-balancing aux loss. `moe_router` picks the generation's weighting and loss (see `MOE_ROUTERS`)."""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_experts = config.n_routed_experts
        self.norm_topk_prob = config.norm_topk_prob
        self.alpha = config.aux_loss_alpha
        self.seq_aux = config.seq_aux
        self.minimind3 = config.moe_router == "minimind3"
        self.experts = nn.ModuleList(FeedForward(config, config.moe_intermediate_size)
                                     for _ in range(config.n_routed_experts))
        self.gate = nn.Linear(config.hidden_size, config.n_routed_experts, bias=False)
        self.shared_experts = nn.ModuleList(FeedForward(config) for _ in range(config.n_shared_experts))

    def route(self, x):
        """x (B, T, C) -> top-k weights and expert ids (B*T, k), routing probabilities (B*T, E)."""
        scores = self.gate(x).reshape(-1, self.n_experts).float().softmax(dim=-1)  # (N, E)
        weights, idx = scores.topk(self.top_k, dim=-1)  # (N, k)
        if self.norm_topk_prob and (self.top_k > 1 or self.minimind3):
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights, idx, scores

    def aux_loss(self, scores, idx, batch_size):
        """alpha * sum_i f_i * P_i; equals alpha at uniform routing (MiniMind-3: alpha * k) and grows as routing
        collapses."""
        if not self.training or self.alpha == 0.0:
            return scores.new_zeros(())
        E = self.n_experts
        if self.minimind3:  # load_i: tokens sent to expert i over all tokens, summed over the k choices
            load = torch.bincount(idx.reshape(-1), minlength=E).float() / idx.shape[0]
            return (load * scores.mean(0)).sum() * E * self.alpha
        if self.seq_aux:  # per sequence: f_i counts expert i's share of that sequence's slots
            idx = idx.reshape(batch_size, -1)  # (B, T*k)
            f = torch.zeros(batch_size, E, device=scores.device).scatter_add_(
                1, idx, torch.ones_like(idx, dtype=torch.float32)) / (idx.shape[1] / E)  # (B, E)
            P = scores.reshape(batch_size, -1, E).mean(dim=1)  # (B, E)
            return (f * P).sum(dim=1).mean() * self.alpha
        f = F.one_hot(idx.reshape(-1), E).float().mean(0) * E  # (E,)
        return (f * scores.mean(0)).sum() * self.alpha

    @torch.compiler.disable  # sizes that depend on the routing: run eagerly under torch.compile, never recompiled
    def run_experts(self, grouped, counts):
        """Each expert on its contiguous slice of the expert-sorted slots: grouped (N*k, C), counts (E,)."""
        outs, start = [], 0
        for expert, count in zip(self.experts, counts.tolist()):
            if count:
                outs.append(expert(grouped[start:start + count]))
            start += count
        return torch.cat(outs)

    def forward(self, x):
        B, T, C = x.shape
        weights, idx, scores = self.route(x)
        flat = x.reshape(-1, C)  # (N, C)
        # Sort the N*k (token, expert) slots by expert; each expert then sees one contiguous slice.
        slot_expert = idx.reshape(-1)  # (N*k,)
        order = slot_expert.argsort(stable=True)
        token = order // self.top_k  # token of each sorted slot
        counts = torch.bincount(slot_expert, minlength=self.n_experts)  # (E,)
        out = self.run_experts(flat[token], counts)  # (N*k, C)
        out = out * weights.reshape(-1)[order].unsqueeze(-1).to(out.dtype)
        y = torch.zeros(flat.shape[0], C, dtype=out.dtype, device=x.device).index_add_(0, token, out)
        y = y.view(B, T, C)
        for shared in self.shared_experts:
            y = y + shared(x)
        return y, self.aux_loss(scores, idx, B)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: MiniMindConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(config)
        self.self_attn.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MoEFeedForward(config) if config.use_moe else FeedForward(config)

    def forward(self, x, cos, sin, mask=None, is_causal=False, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, cache)
        h = self.mlp(self.post_attention_layernorm(x))
        if isinstance(h, tuple):  # MoE returns (output, aux_loss)
            h, aux = h
        else:
            aux = None
        return x + h, aux


def attention_mask_for(attention_mask, past: int, T: int, device):
    """Boolean SDPA mask (B, 1, T, past + T), or None with `is_causal`, from a (B, past + T) 0/1 padding mask.

    Returns (mask, is_causal). A padded query row that could attend to nothing attends to itself, so
    SDPA never returns NaN there (those positions are padding; their output is ignored). A 4-D boolean mask
    (B, 1, T, S) is taken as it is: the caller built it whole (the compiled decode step, `minimind.infer.engine`).
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask, False
    S = past + T
    if attention_mask is not None and attention_mask.shape[-1] != S:
        raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions but past ({past}) + "
                         f"input ({T}) = {S}; pass the mask for the whole sequence so far")
    if attention_mask is None or bool(attention_mask.all()):
        if T == 1:
            return None, False
        if past == 0:
            return None, True
        attention_mask = None
    causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(past)  # query i sees keys <= past + i
    if attention_mask is None:
        return causal, False
    mask = causal[None, None] & attention_mask.bool()[:, None, None, :]  # (B, 1, T, S)
    return mask | ~mask.any(dim=-1, keepdim=True), False


class CrossEntropy(torch.autograd.Function):
    """Mean next-token cross-entropy over targets != -100, with a hand-written backward.

    loss = mean_i (logsumexp(z_i) - z_i[y_i]);  d loss / d z_i = (softmax(z_i) - onehot(y_i)) / n.
    Keeps only the logits and one logsumexp per row for backward, where PyTorch's own keeps a full (N, V)
    log-softmax and builds another (N, V) tensor for the NLL gradient.
    """

    @staticmethod
    def forward(ctx, logits, targets):  # logits (N, V), targets (N,)
        valid = targets != -100
        n = valid.sum().clamp(min=1)
        safe = targets.clamp(min=0)
        lse = torch.logsumexp(logits.float(), dim=-1)  # (N,)
        picked = logits.gather(1, safe[:, None]).squeeze(1).float()  # (N,)
        ctx.save_for_backward(logits, lse, safe, valid, n)
        return ((lse - picked) * valid).sum() / n

    @staticmethod
    def backward(ctx, grad):
        logits, lse, safe, valid, n = ctx.saved_tensors
        scale = (valid * (grad / n))[:, None]  # (N, 1)
        g = (logits.float() - lse[:, None]).exp_().mul_(scale)  # softmax * scale
        g.scatter_add_(1, safe[:, None], -scale)  # - onehot * scale
        return g.to(logits.dtype), None


def cross_entropy(logits, targets):
    """Cross-entropy with ignore_index=-100: the hand-written kernel for fp32 logits, PyTorch's otherwise."""
    if logits.dtype == torch.float32:
        return CrossEntropy.apply(logits, targets)
    return F.cross_entropy(logits.float(), targets, ignore_index=-100)


CACHE_NAMES = ("cache", "past_key_values")  # the cache's name since transformers 5.24, and before


@dataclass
class MiniMindOutput:
    """What a forward returns: loss, aux_loss, logits, cache (also readable as `past_key_values`), hidden_states.

    A plain dataclass of our own rather than transformers' `ModelOutput`, whose field names change between releases
    (5.24 renamed `past_key_values` to `cache` and rewrites the old keyword for every subclass). Besides attributes it
    answers the mapping reads that Hugging Face's generation loop makes, under both names of the cache:
    `"cache" in out`, `out["past_key_values"]`, `out.get(...)`, and `out[0]` / `to_tuple()` over the fields that are
    set, as `ModelOutput` does.
    """

    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: "KVCache | None" = None
    hidden_states: torch.Tensor | None = None

    @property
    def past_key_values(self):
        return self.cache

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())

    def __getitem__(self, key):
        if not isinstance(key, str):
            return self.to_tuple()[key]
        name = "cache" if key in CACHE_NAMES else key
        if name not in self.keys():
            raise KeyError(key)
        return getattr(self, name)

    def __contains__(self, key) -> bool:
        return ("cache" if key in CACHE_NAMES else key) in self.keys()

    def get(self, key, default=None):
        return self[key] if key in self else default


class MiniMindPreTrainedModel(PreTrainedModel):
    config_class = MiniMindConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]
    _supports_sdpa = True


class MiniMindModel(MiniMindPreTrainedModel):
    def __init__(self, config: MiniMindConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        cos, sin = rope_cos_sin(config, config.max_position_embeddings)
        self.register_buffer("freqs_cos", cos, persistent=False)
        self.register_buffer("freqs_sin", sin, persistent=False)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:  # rebuilt after meta-device construction (from_pretrained)
            cos, sin = rope_cos_sin(self.config, self.config.max_position_embeddings)
            with torch.no_grad():
                self.freqs_cos.copy_(cos)
                self.freqs_sin.copy_(sin)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=False):
        B, T = input_ids.shape
        if cache is not None and not hasattr(cache, "update"):  # MiniMind-style list of (k, v)
            cache = KVCache.from_legacy(cache)
        if cache is None and use_cache:
            cache = KVCache(len(self.layers))
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            if past + T > self.freqs_cos.shape[0]:
                raise ValueError(f"sequence length {past + T} exceeds max_position_embeddings "
                                 f"({self.freqs_cos.shape[0]})")
            cos, sin = self.freqs_cos[past:past + T], self.freqs_sin[past:past + T]  # (T, D)
        else:
            cos, sin = self.freqs_cos[position_ids].unsqueeze(1), self.freqs_sin[position_ids].unsqueeze(1)
        mask, is_causal = attention_mask_for(attention_mask, past, T, input_ids.device)

        x = self.dropout(self.embed_tokens(input_ids))
        aux_loss = x.new_zeros((), dtype=torch.float32)
        for layer in self.layers:
            x, aux = layer(x, cos.to(x.dtype), sin.to(x.dtype), mask, is_causal, cache)
            if aux is not None:
                aux_loss = aux_loss + aux
        return self.norm(x), aux_loss, cache


class MiniMindForCausalLM(MiniMindPreTrainedModel, GenerationMixin):
    """The model with its output head (tied to the embedding): `forward` returns logits, and the shifted next-token
    loss when given labels. Its `generate` is minimind's decode engine's (`minimind.infer.hf_generate`, attached when
    `minimind.infer` loads, as any `from minimind import ...` of the model does); Hugging Face's own loop stays
    reachable as `transformers.GenerationMixin.generate(model, ...)`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MiniMindConfig):
        super().__init__(config)
        self.model = MiniMindModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()  # initializes the weights, then ties lm_head to the embedding (keeping the embedding's values)
        if config.tie_word_embeddings:  # tied here too: transformers 5.0 does not tie on the meta device
            self.lm_head.weight = self.model.embed_tokens.weight

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                labels=None, logits_to_keep: int = 0, cache=None, **kwargs) -> MiniMindOutput:
        """input_ids (B, T) -> MiniMindOutput(loss, aux_loss, logits (B, T, V), cache, hidden_states).

        labels (B, T) are the input ids themselves (shifted inside); -100 marks positions without loss.
        `logits_to_keep=n` computes logits for the last n positions only (generation). The cache is taken as
        `cache=` or `past_key_values=` (its names after and before transformers 5.24): a `KVCache`, a Hugging Face
        cache, or MiniMind's list of (k, v) pairs; the output has it as `.cache` and `.past_key_values`.
        """
        if past_key_values is not None:
            if cache is not None and cache is not past_key_values:
                raise ValueError("pass the cache once, as cache= or as past_key_values=, not both")
            cache = past_key_values
        hidden, aux_loss, cache = self.model(input_ids, attention_mask, position_ids, cache, use_cache)
        h = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        logits = self.lm_head(h)  # (B, T, V), contiguous
        loss = None
        if labels is not None:
            # Shift the labels, not the logits: slicing (B, T, V) logits would copy them and their gradient.
            targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T): token t predicts labels[t + 1]
            loss = cross_entropy(logits.flatten(0, 1), targets.flatten())
        return MiniMindOutput(loss=loss, aux_loss=aux_loss, logits=logits, cache=cache, hidden_states=hidden)


def register_auto_classes():
    """Let transformers' `AutoConfig` and `AutoModelForCausalLM` load MiniMind directories. Runs when this module
    loads (any `from minimind import MiniMindForCausalLM` or `MiniMindConfig` does it)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register("minimind", MiniMindConfig, exist_ok=True)
    AutoModelForCausalLM.register(MiniMindConfig, MiniMindForCausalLM, exist_ok=True)


register_auto_classes()
