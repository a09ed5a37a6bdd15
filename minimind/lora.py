"""LoRA, written by hand: low-rank adapters on a frozen MiniMind model (Hu et al., 2021).

A targeted `nn.Linear` y = x W^T becomes

    y = x W^T + (alpha / r) * dropout(x) A^T B^T        W (out, in) frozen; A (r, in), B (out, r) trained

A starts random (Kaiming-uniform, as nn.Linear) and B at zero, so the adapted model starts equal to the base.
Only A and B train: with rank 8 on every projection of the `small` preset that is 0.58M parameters, 2.3% of the
model's 25.8M, and a 2.3 MB adapter file.

    model = apply_lora(model, rank=8, alpha=16, dropout=0.05)   # default targets: attention + FFN projections
    ... train ...
    save_adapter(model, "out")           # out/adapter_model.safetensors + out/adapter_config.json (PEFT)
    base = load_adapter(base, "out")     # the same adapter on a fresh base model
    merged = merge_lora(model)           # W <- W + (alpha / r) B A; plain nn.Linear again, saves as a normal model

`LoRALinear` keeps the base weight under its old name (`...q_proj.weight`) and adds `...q_proj.lora_A` /
`...q_proj.lora_B`, so the base weights load into an adapted model unchanged and the adapter file holds only the
`lora_` tensors. Command line: `minimind lora --pretrained_path BASE ...` (see `minimind.train.lora_finetune`).

The files are PEFT's: tensors named `base_model.model.<module>.lora_A.weight` / `.lora_B.weight` and a LoraConfig
(`peft_type`, `r`, `lora_alpha`, `target_modules`), so `peft.PeftModel.from_pretrained` puts a minimind adapter on
the exported `LlamaForCausalLM` (`minimind export --format hf`: same module names), and an adapter that `peft`
trained on that export loads here (`--adapter DIR`), rsLoRA and per-module ranks / alphas included. Adapters that
minimind wrote before it used PEFT's layout (config keys rank / alpha / targets) still load, and so do the public
MiniMind project's own LoRA files (`--adapter lora_medical_768.pth`, its `save_lora`): a state dict of
`<module>.lora.A.weight` (r, in) and `<module>.lora.B.weight` (out, r), fp16, under our module names, added as
y = x W^T + x A^T B^T, i.e. alpha = r, with no config file (`read_minimind_lora`).
"""

import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .io import atomic_write, check_fit, read_json_object
from .presets import LORA_TARGETS as DEFAULT_TARGETS

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FORMAT = "minimind-lora"  # the "format" of minimind's adapter configs before PEFT's layout (still read)
PEFT_PREFIX = "base_model.model."  # PEFT's names: base_model.model.<module>.lora_A.weight
BASE_METADATA = "minimind_base_model"  # the safetensors metadata key of the base model's shape summary
# The base model's fields an adapter depends on; checked when it is loaded.
BASE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
               "vocab_size", "use_moe", "n_routed_experts", "n_shared_experts", "head_dim", "qk_norm",
               "moe_intermediate_size")


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


def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter in PEFT's names: {"base_model.model.<module>.lora_A.weight": (r, in), "...lora_B.weight":
    (out, r)}, the keys `PeftModel.save_pretrained` writes for a causal LM."""
    return {PEFT_PREFIX + k + ".weight": v for k, v in lora_state_dict(model).items()}


def adapter_config(model: nn.Module, base_path: str | None = None) -> dict:
    """What adapter_config.json holds: PEFT's LoraConfig fields (peft_type LORA, r, lora_alpha, lora_dropout,
    target_modules, ...), so `peft.PeftModel.from_pretrained` reads it."""
    modules = lora_modules(model)
    if not modules:
        raise ValueError("the model has no LoRA layers (apply_lora first)")
    first = next(iter(modules.values()))
    ranks = {m.rank for m in modules.values()}
    alphas = {m.alpha for m in modules.values()}
    if len(ranks) > 1 or len(alphas) > 1:
        raise ValueError("the LoRA layers differ in rank or alpha; save_adapter writes one rank and alpha for all")
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_path, "revision": None,
            "inference_mode": True, "r": first.rank, "lora_alpha": first.alpha, "lora_dropout": first.dropout.p,
            "target_modules": sorted({n.rpartition(".")[2] for n in modules}), "fan_in_fan_out": False,
            "bias": "none", "use_rslora": False, "modules_to_save": None, "init_lora_weights": True,
            "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}}


def save_adapter(model: nn.Module, out_dir, base_path: str | None = None, name: str = ADAPTER_WEIGHTS) -> Path:
    """Write the adapter in PEFT's layout: out_dir/adapter_model.safetensors (fp32, only the LoRA tensors, under
    PEFT's names) and out_dir/adapter_config.json (a PEFT LoraConfig), each atomically; the base model's shape
    summary goes into the safetensors metadata, where load_adapter checks it. Returns the weights file's path."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.float().cpu().contiguous() for k, v in peft_state_dict(model).items()}
    config = adapter_config(model, base_path)
    model_config = getattr(model, "config", None)
    base = {f: getattr(model_config, f) for f in BASE_FIELDS if hasattr(model_config, f)}
    path = out / name
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", BASE_METADATA: json.dumps(base)})
    with atomic_write(out / ADAPTER_CONFIG) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def _peft_config(config: dict, config_file: Path) -> dict:
    """PEFT's LoraConfig fields (from PEFT or from minimind) checked for what a plain LoRA layer computes; an older
    minimind config (rank / alpha / targets) is read as the same thing."""
    if config.get("format") == ADAPTER_FORMAT:  # minimind's own layout before PEFT's
        return {"r": config["rank"], "lora_alpha": config["alpha"], "lora_dropout": config.get("dropout", 0.0),
                "target_modules": config["targets"], "base_model": config.get("base_model") or {},
                "base_model_name_or_path": config.get("base_model_path")}
    if "peft_type" not in config:
        raise ValueError(f"{config_file}: not a LoRA adapter config; expected PEFT's fields (peft_type, r, "
                         "lora_alpha, target_modules) as `minimind lora` and `peft` write them")
    if config["peft_type"] != "LORA":
        raise ValueError(f"{config_file}: peft_type {config['peft_type']!r}; only LoRA adapters (peft_type LORA) "
                         "load into minimind")
    unsupported = [f"{k}={config[k]!r}" for k, ok in (("use_dora", False), ("fan_in_fan_out", False),
                                                      ("bias", "none"), ("modules_to_save", None),
                                                      ("lora_bias", False), ("target_parameters", None))
                   if config.get(k, ok) not in (ok, [] if ok is None else ok)]
    if unsupported:
        raise ValueError(f"{config_file}: {', '.join(unsupported)}: minimind loads plain LoRA adapters only (no "
                         "DoRA, no trained biases or whole modules); merge this one in peft (merge_and_unload) and "
                         "load the merged model instead")
    return config


MINIMIND_LORA_KEY = re.compile(r"(?:module\.)?(.+)\.lora\.([AB])\.weight")  # MiniMind's save_lora names


def read_minimind_lora(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of the public MiniMind project's LoRA file (see the module docstring), as `read_adapter`
    gives them: the tensors under our names, the config PEFT's fields for a plain LoRA of scale 1 (alpha = r)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that is not a plain state dict, a truncated file
        raise ValueError(f"{path}: not a readable .pth state dict ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: not a LoRA state dict (it holds {type(state).__name__})")
    tensors = {}
    for key, value in state.items():
        m = MINIMIND_LORA_KEY.fullmatch(key)
        if m is None or not isinstance(value, torch.Tensor) or value.dim() != 2:
            raise ValueError(f"{path}: {key} is not a MiniMind LoRA matrix (<module>.lora.A.weight / .lora.B.weight, "
                             "as MiniMind's save_lora writes); a full model goes in MODEL or --pretrained_path, not "
                             "--adapter")
        tensors[f"{m.group(1)}.lora_{m.group(2)}"] = value
    ranks = {v.shape[0] for k, v in tensors.items() if k.endswith(".lora_A")}
    if len(ranks) != 1:
        raise ValueError(f"{path}: the LoRA A matrices have ranks {sorted(ranks)}; a MiniMind LoRA file has one rank")
    rank = ranks.pop()
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": float(rank), "lora_dropout": 0.0,
              "target_modules": sorted({k.rpartition(".")[0].rpartition(".")[2] for k in tensors})}
    return config, tensors


def read_adapter(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of a saved adapter: a directory holding adapter_model.safetensors and adapter_config.json,
    or a .safetensors file with adapter_config.json beside it, or a MiniMind LoRA .pth. The config comes back with
    PEFT's field names (plus "base_model", the base's shape summary when the file has one), the tensors under
    minimind's module names ("<module>.lora_A" / "<module>.lora_B"), whichever layout was saved (PEFT's, minimind's
    older one, MiniMind's)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix in (".pth", ".pt") and path.is_file():
        return read_minimind_lora(path)
    weights = path / ADAPTER_WEIGHTS if path.is_dir() else path
    config_file = weights.parent / ADAPTER_CONFIG
    if path.is_dir() and not weights.is_file() and (path / "adapter_model.bin").is_file():
        raise ValueError(f"{path}: this adapter is a pickled adapter_model.bin; minimind reads safetensors only: "
                         "save it again with peft's save_pretrained(..., safe_serialization=True)")
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no adapter weights here; expected a directory written by `minimind lora` "
                                f"or by peft ({ADAPTER_WEIGHTS} + {ADAPTER_CONFIG}) or an adapter .safetensors file")
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: the adapter's config is missing (it is written beside the weights)")
    config = _peft_config(read_json_object(config_file, "LoRA adapter config"), config_file)
    try:
        tensors = load_file(str(weights))
        with safe_open(str(weights), "pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{weights}: not a readable safetensors file ({e}); it may be truncated or corrupt") from None
    if BASE_METADATA in metadata:
        config["base_model"] = json.loads(metadata[BASE_METADATA])
    renamed = {}
    for key, value in tensors.items():
        name = key.removeprefix(PEFT_PREFIX).removesuffix(".weight").replace(".lora_A.default", ".lora_A") \
            .replace(".lora_B.default", ".lora_B")
        if not name.endswith((".lora_A", ".lora_B")):
            raise ValueError(f"{weights}: tensor {key} is not a LoRA A or B matrix; minimind loads plain LoRA "
                             "adapters on linear layers only (no lora_embedding, no modules_to_save)")
        renamed[name] = value
    return config, renamed


def load_adapter(model: nn.Module, path) -> nn.Module:
    """Apply a saved adapter (PEFT's layout, from `minimind lora` or from `peft` on the exported model) to a base
    model: check it was made for this architecture, wrap each layer the file names in a LoRALinear (its rank from
    the tensors, its alpha from lora_alpha / alpha_pattern, rsLoRA's alpha / sqrt(r) scaling honoured) and load A
    and B, checking every name and shape. In place; returns the model (frozen base, trainable adapter; call .eval()
    for inference)."""
    config, tensors = read_adapter(path)
    base = config.get("base_model") or {}
    model_config = getattr(model, "config", None)
    differ = [f"{k}: adapter {v} vs model {getattr(model_config, k)}" for k, v in base.items()
              if model_config is not None and hasattr(model_config, k) and getattr(model_config, k) != v]
    if differ:
        raise ValueError(f"{path}: this adapter was trained on a different base model ({'; '.join(differ)}); "
                         f"load it onto the base it was made for"
                         + (f" ({config['base_model_name_or_path']})" if config.get("base_model_name_or_path")
                            else ""))
    if lora_modules(model):
        raise ValueError("the model already has LoRA layers; merge them first (merge_lora) or start from the base")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    adapted = {k.rpartition(".")[0] for k in tensors}
    missing = sorted(adapted - set(linears))
    if missing:
        raise ValueError(f"{path}: the adapter does not fit this model: it adapts {missing[0]}, which is not a linear "
                         f"layer of the model ({len(missing)} such layer(s)); its linear layers are named like "
                         f"{next(iter(linears), '?')}")
    names = [n for n in linears if n in adapted]  # in module order
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = [n for n in names if embeddings is not None and linears[n].weight is embeddings.weight]
    if tied:
        raise ValueError(f"{path}: the adapter adapts {tied[0]}, which shares its weight with the token embedding "
                         "(tied embeddings) here; minimind does not load adapters on tied layers: merge it in peft "
                         "(merge_and_unload) and load the merged model instead")
    for p in model.parameters():
        p.requires_grad_(False)
    alpha_pattern = config.get("alpha_pattern") or {}
    for name in names:
        m = linears[name]
        rank = tensors[f"{name}.lora_A"].shape[0] if f"{name}.lora_A" in tensors else int(config["r"])
        alpha = float(next((a for k, a in alpha_pattern.items() if re.search(rf"(^|\.){k}$", name)),
                           config["lora_alpha"]))
        if config.get("use_rslora"):
            alpha = alpha * math.sqrt(rank)  # rsLoRA scales by alpha / sqrt(r); a LoRALinear by alpha / r
        _set_module(model, name, LoRALinear(m, rank, alpha, float(config.get("lora_dropout") or 0.0))
                    .train(m.training))
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
