"""Finding a model's config and weights on disk: presets, model directories, .pth and .safetensors files."""

import json
from pathlib import Path

from .config import PRESETS, MiniMindConfig, preset


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
    try:
        fields = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_path}: not a valid JSON config ({e})") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{config_path}: expected a JSON object of config fields")
    fields.pop("model_type", None)
    fields.pop("architectures", None)
    return MiniMindConfig(**fields)
