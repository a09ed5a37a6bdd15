"""Parameter counts per component and weight memory, computed from a config on the meta device."""

import torch

from .config import MiniMindConfig
from .model import MiniMindForCausalLM

COMPONENTS = ("embedding", "output head", "attention", "ffn", "router", "routed experts", "shared experts", "norms")


def component_of(name: str) -> str:
    if name.startswith("model.embed_tokens"):
        return "embedding"
    if name.startswith("lm_head"):
        return "output head"
    if ".self_attn." in name:
        return "attention"
    if ".mlp.gate." in name:
        return "router"
    if ".mlp.experts." in name:
        return "routed experts"
    if ".mlp.shared_experts." in name:
        return "shared experts"
    if ".mlp." in name:
        return "ffn"
    return "norms"


def parameter_counts(config: MiniMindConfig) -> dict[str, int]:
    """Parameters per component, plus 'total' and 'active' (per token: k of the routed experts run)."""
    with torch.device("meta"):
        model = MiniMindForCausalLM(config)
    counts = dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():  # tied lm_head is the embedding, listed once
        counts[component_of(name)] += p.numel()
    counts = {k: v for k, v in counts.items() if v}
    counts["total"] = sum(counts.values())
    routed = counts.get("routed experts", 0)
    counts["active"] = counts["total"] - routed + routed * config.num_experts_per_tok // config.n_routed_experts
    return counts


def describe(config: MiniMindConfig) -> str:
    """A human-readable report: architecture, parameter counts per component, weight memory."""
    counts = parameter_counts(config)
    generation = "MiniMind-3 (QK-norm)" if config.qk_norm else "MiniMind 2"
    lines = [f"MiniMind model: {generation} architecture", "-" * 44]
    fields = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "qk_norm",
              "intermediate_size", "vocab_size", "max_position_embeddings", "rope_theta", "rms_norm_eps",
              "tie_word_embeddings"]
    if config.use_moe:
        fields += ["n_routed_experts", "num_experts_per_tok", "n_shared_experts", "moe_intermediate_size",
                   "moe_router", "aux_loss_alpha"] + (["seq_aux"] if config.moe_router == "minimind2" else [])
    fields += ["inference_rope_scaling"]
    for f in fields:
        lines.append(f"{f:<26}{getattr(config, f)}")
    lines += ["", "parameters", "-" * 44]
    total = counts["total"]
    for name, n in counts.items():
        if name in ("total", "active"):
            continue
        lines.append(f"{name:<26}{n:>14,}  {100 * n / total:5.1f}%")
    lines.append(f"{'total':<26}{total:>14,}  ({total / 1e6:.1f}M)")
    if config.use_moe:
        lines.append(f"{'active per token':<26}{counts['active']:>14,}  ({counts['active'] / 1e6:.1f}M)")
    lines += ["", "weight memory", "-" * 44,
              f"{'fp32':<26}{total * 4 / 2**20:>11,.1f} MiB",
              f"{'bf16 / fp16':<26}{total * 2 / 2**20:>11,.1f} MiB"]
    return "\n".join(lines)
