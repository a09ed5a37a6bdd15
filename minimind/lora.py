"""LoRA, written by hand: low-rank adapters on a frozen MiniMind model (Hu et al., 2021).

A targeted `nn.Linear` y = x W^T becomes

    y = x W^T + (alpha / r) * dropout(x) A^T B^T        W (out, in) frozen; A (r, in), B (out, r) trained

A starts random (Kaiming-uniform, as nn.Linear) and B at zero, so the adapted model starts equal to the base.
Only A and B train: with rank 8 on every projection of the `small` preset that is 0.58M parameters, 2.3% of the
model's 25.8M, and a 2.3 MB adapter file.

    model = apply_lora(model, rank=8, alpha=16, dropout=0.05)   # default targets: attention + FFN projections
    ... train ...
    save_adapter(model, "out")           # out/adapter_model.safetensors + out/adapter_config.json
    base = load_adapter(base, "out")     # the same adapter on a fresh base model
    merged = merge_lora(model)           # W <- W + (alpha / r) B A; plain nn.Linear again, saves as a normal model

`LoRALinear` keeps the base weight under its old name (`...q_proj.weight`) and adds `...q_proj.lora_A` /
`...q_proj.lora_B`, so the base weights load into an adapted model unchanged and the adapter file holds only the
`lora_` tensors. Command line: `minimind lora --pretrained_path BASE ...` (see `minimind.train.lora`).
"""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .io import atomic_write, check_fit, read_json_object
from .presets import LORA_TARGETS as DEFAULT_TARGETS

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FORMAT = "minimind-lora"
# The base model's fields an adapter depends on; checked when it is loaded.
BASE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
               "vocab_size", "use_moe", "n_routed_experts", "n_shared_experts")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: y = x W^T + b + (alpha / r) * dropout(x) A^T B^T."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # (out, in), the base weight under its original name
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kw))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **kw))  # (out, r): starts as the base
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # (..., in) -> (..., r) -> (..., out)
        return y + update * self.scale

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) * B @ A, shape (out, in): what merging adds to W. Computed in fp32."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scale

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}"


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """name -> LoRALinear, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.05,
               targets=DEFAULT_TARGETS) -> nn.Module:
    """Freeze every parameter of `model` and wrap each nn.Linear whose last name is in `targets` (e.g. `q_proj`
    matches `model.layers.3.self_attn.q_proj`; MoE experts' projections match too) in a LoRALinear. In place;
    returns the model."""
    targets = tuple(targets)
    if lora_modules(model):
        raise ValueError("the model already has LoRA layers; merge them first (merge_lora) or start from the base")
    chosen = [(name, m) for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and name.rpartition(".")[2] in targets]
    found = {name.rpartition(".")[2] for name, _ in chosen}
    missing = [t for t in targets if t not in found]
    if missing:
        linear = sorted({n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"LoRA targets {', '.join(missing)} match no linear layer of the model; "
                         f"its linear layers are: {', '.join(linear)}")
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    for name, m in chosen:
        if embeddings is not None and m.weight is embeddings.weight:
            raise ValueError(f"{name} shares its weight with the token embedding (tied embeddings); a LoRA on it "
                             "would change the embedding too when merged; leave it out of the targets")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, m in chosen:
        _set_module(model, name, LoRALinear(m, rank, alpha, dropout).train(m.training))  # eval stays eval
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter alone: {"<module>.lora_A": (r, in), "<module>.lora_B": (out, r)} for every LoRA layer."""
    state = {}
    for name, m in lora_modules(model).items():
        state[f"{name}.lora_A"] = m.lora_A.detach()
        state[f"{name}.lora_B"] = m.lora_B.detach()
    return state


def adapter_config(model: nn.Module, base_path: str | None = None) -> dict:
    """What adapter_config.json holds: rank, alpha, dropout, targets, and a summary of the base model's config."""
    modules = lora_modules(model)
    if not modules:
        raise ValueError("the model has no LoRA layers (apply_lora first)")
    first = next(iter(modules.values()))
    config = getattr(model, "config", None)
    base = {f: getattr(config, f) for f in BASE_FIELDS if hasattr(config, f)} if config is not None else {}
    return {"format": ADAPTER_FORMAT, "rank": first.rank, "alpha": first.alpha, "dropout": first.dropout.p,
            "targets": sorted({n.rpartition(".")[2] for n in modules}), "base_model": base,
            "base_model_path": base_path}


def save_adapter(model: nn.Module, out_dir, base_path: str | None = None, name: str = ADAPTER_WEIGHTS) -> Path:
    """Write the adapter to out_dir/adapter_model.safetensors (fp32, only the lora_ tensors) and its
    out_dir/adapter_config.json, each atomically. Returns the weights file's path."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.float().cpu().contiguous() for k, v in lora_state_dict(model).items()}
    config = adapter_config(model, base_path)
    path = out / name
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata={"format": ADAPTER_FORMAT})
    with atomic_write(out / ADAPTER_CONFIG) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def read_adapter(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of a saved adapter: a directory holding adapter_model.safetensors and adapter_config.json,
    or a .safetensors file with adapter_config.json beside it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    weights = path / ADAPTER_WEIGHTS if path.is_dir() else path
    config_file = weights.parent / ADAPTER_CONFIG
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no adapter weights here; expected a directory written by `minimind lora` "
                                f"({ADAPTER_WEIGHTS} + {ADAPTER_CONFIG}) or an adapter .safetensors file")
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: the adapter's config is missing (it is written beside the weights)")
    config = read_json_object(config_file, "LoRA adapter config")
    if not all(k in config for k in ("rank", "alpha", "targets")):
        raise ValueError(f"{config_file}: not a LoRA adapter config; expected the keys rank, alpha, targets")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{weights}: not a readable safetensors file ({e}); it may be truncated or corrupt") from None
    return config, tensors


def load_adapter(model: nn.Module, path) -> nn.Module:
    """Apply a saved adapter to a base model: check it was made for this architecture, wrap the target layers
    (apply_lora with the saved rank / alpha / dropout / targets) and load A and B, checking every name and shape.
    In place; returns the model (frozen base, trainable adapter; call .eval() for inference)."""
    config, tensors = read_adapter(path)
    base = config.get("base_model") or {}
    model_config = getattr(model, "config", None)
    differ = [f"{k}: adapter {v} vs model {getattr(model_config, k)}" for k, v in base.items()
              if model_config is not None and hasattr(model_config, k) and getattr(model_config, k) != v]
    if differ:
        raise ValueError(f"{path}: this adapter was trained on a different base model ({'; '.join(differ)}); "
                         f"load it onto the base it was made for"
                         + (f" ({config['base_model_path']})" if config.get("base_model_path") else ""))
    apply_lora(model, rank=int(config["rank"]), alpha=float(config["alpha"]), dropout=float(config.get("dropout", 0)),
               targets=config["targets"])
    check_fit(tensors, lora_state_dict(model), f"{path}: the adapter does not fit this model")
    with torch.no_grad():
        for name, m in lora_modules(model).items():
            m.lora_A.copy_(tensors[f"{name}.lora_A"])
            m.lora_B.copy_(tensors[f"{name}.lora_B"])
    return model


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, W <- W + (alpha / r) B A, and put plain nn.Linear modules back, so
    the model saves and loads as a normal MiniMind model. Every parameter is trainable again. In place; returns the
    model."""
    for name, m in lora_modules(model).items():
        linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")  # no allocation
        linear.weight = m.weight
        linear.weight.add_(m.delta_weight().to(m.weight.dtype))
        if m.bias is not None:
            linear.bias = m.bias
        _set_module(model, name, linear)
    for p in model.parameters():
        p.requires_grad_(True)
    return model
