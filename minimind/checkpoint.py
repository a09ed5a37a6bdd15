"""Finding a model's config and weights on disk: presets, model directories, .pth and .safetensors files."""

import json
from pathlib import Path

from .config import PRESETS, MiniMindConfig, preset
from .io import check_fit, read_json_object


def load_config(spec: str, config_path: str | None = None) -> MiniMindConfig:
    """A config from a preset name, a model directory, a config.json, or a weights file with config.json beside it."""
    if spec in PRESETS and not Path(spec).exists():
        return preset(spec)
    path = Path(spec)
    if config_path is None:
        if path.is_dir():
            config_path = path / "config.json"
        elif path.suffix == ".json":
            config_path = path
        elif path.suffix in (".pth", ".pt", ".safetensors"):
            config_path = path.parent / "config.json"
        elif not path.exists():
            raise FileNotFoundError(f"{spec}: no such file or directory, and not a preset "
                                    f"(presets: {', '.join(PRESETS)})")
        else:
            raise ValueError(f"{spec}: not a model directory, config.json, .pth or .safetensors file")
    config_path = Path(config_path)
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: config.json not found; pass --config PATH to give the model's config")
    fields = read_json_object(config_path, "config")
    fields.pop("model_type", None)
    fields.pop("architectures", None)
    return MiniMindConfig(**fields)


def read_state_dict(path: str | Path) -> dict:
    """Weights from a `.pth`/`.pt` state dict (loaded with weights_only=True), a `.safetensors` file, or a
    model directory (its model.safetensors, else model_final.pth). Errors name the file and say what to do."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "model_final.pth"):
            if (path / name).is_file():
                return read_state_dict(path / name)
        raise FileNotFoundError(f"{path}: no model.safetensors or model_final.pth in this directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e}); it may be truncated or corrupt") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors vary by how the file is damaged
        raise ValueError(f"{path}: cannot load as a PyTorch state dict ({type(e).__name__}: {str(e)[:200]}); "
                         "it may be truncated, corrupt, or not a weights-only checkpoint") from None
    if isinstance(state, dict) and "model_state_dict" in state:  # the seed's checkpoint dict
        state = state["model_state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):  # our training state
        state = state["model"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (name -> tensor)")
    # DDP (module.) and torch.compile (_orig_mod.) wrap the names of whatever saved them without unwrapping
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


def load_weights(model, path: str | Path) -> None:
    """Load weights into `model` after checking every name and shape; a mismatch is one readable report."""
    state = read_state_dict(path)
    expected = model.state_dict()
    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    check_fit(state, expected, f"{path}: the weights do not fit this model",
              hint="check the architecture flags (--preset, --hidden_size, --num_layers, --num_heads, "
                   "--num_kv_heads, --vocab_size, --use_moe) against the checkpoint's config.json")
    model.load_state_dict(state, strict=True)


# --- devices and precisions ---------------------------------------------------------------------------------------

# The one table of precision names (the flags' fp32/bf16/fp16, GGUF's f32/f16, torch's own) -> torch dtype names.
DTYPES = {"fp32": "float32", "f32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "f16": "float16", "float16": "float16"}


def best_device() -> str:
    """cuda, else mps, else cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(name, device="cpu", cpu_bf16: bool = False):
    """The torch dtype for a precision name (see DTYPES) or "auto", on `device`.

    "auto" is half precision where the hardware does it: on a GPU bf16 where supported, else fp16. A CPU gets bf16
    only with `cpu_bf16` and native bf16 (AVX512-BF16 / AMX), else fp32, as does MPS. Training passes
    cpu_bf16=True: it autocasts (weights stay fp32) and a bf16-capable CPU runs that faster. Inference keeps the
    default: there the dtype is the weights', and bf16 weights on a CPU are slower and less exact than fp32."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    device = torch.device(device)
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if (cpu_bf16 and device.type == "cpu" and torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of auto, fp32, bf16, fp16")
    return getattr(torch, DTYPES[name])


def load_model(spec, config=None, device="cpu", dtype=None, adapter=None):
    """(model, tokenizer) ready for inference (eval mode) from a training output directory, a Hugging Face style
    model directory, or a `.pth` / `.pt` / `.safetensors` weights file with its config.json beside it (or given as
    `config`). The tokenizer comes from the same directory when it has tokenizer files, else the shipped one (a
    warning says so). `dtype`: None (as built, fp32), a name of DTYPES, "auto" (see `resolve_dtype`) or a torch
    dtype. `adapter`: a LoRA
    adapter to apply (see `minimind.lora.load_adapter`).
    """
    import logging

    import torch

    from .model import MiniMindForCausalLM
    from .tokenizer import check_tokenizer_fits, load_tokenizer

    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{spec}: no such file or directory; MODEL is a training output directory, a model "
                                "directory, or a .pth / .safetensors file")
    if path.is_dir():
        if not any((path / name).is_file() for name in ("model.safetensors", "model_final.pth")):
            raise ValueError(f"{spec}: not a model directory (no model.safetensors or model_final.pth in it); MODEL "
                             "is a training output directory, a model directory, or a .pth / .safetensors file")
    elif path.suffix not in (".pth", ".pt", ".safetensors"):
        raise ValueError(f"{spec}: not a model; MODEL is a training output directory, a model directory, or a "
                         ".pth / .safetensors file")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; expected cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: CUDA is not available on this machine; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device}: MPS is not available on this machine; use --device cpu")
    cfg = load_config(str(path), config)
    model = MiniMindForCausalLM(cfg)
    load_weights(model, path)

    folder = path if path.is_dir() else path.parent
    if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(folder)
    else:
        tokenizer = load_tokenizer(None)
        logging.getLogger("minimind").warning(f"{spec}: no tokenizer files beside the model; using the shipped "
                                              f"{len(tokenizer)}-token tokenizer")
    check_tokenizer_fits(tokenizer, cfg)

    if adapter is not None:
        from .lora import load_adapter

        model = load_adapter(model, adapter)
    if dtype is not None:
        dtype = resolve_dtype(dtype, device)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval(), tokenizer


def training_args(spec) -> dict:
    """The arguments of the training run that wrote the model at `spec` (its args.json), or {} when there are none."""
    path = Path(spec)
    folder = path if path.is_dir() else path.parent
    try:
        args = json.loads((folder / "args.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return args if isinstance(args, dict) else {}
