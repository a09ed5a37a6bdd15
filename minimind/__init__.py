"""minimind: train small language models from scratch, end to end.

The names below load on first use (PEP 562), so that `import minimind` and the command line's `--help` do not
wait for torch and transformers. Loading the model registers MiniMind with transformers' Auto classes
(`AutoConfig`, `AutoModelForCausalLM`) and gives it the decode engine's `generate` (`minimind.infer`):
`from minimind import MiniMindConfig` (or any other name but PRESETS) does both.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {  # name: the module that defines it
    "MiniMindConfig": "config",
    "preset": "config",
    "PRESETS": "presets",
    "MiniMindForCausalLM": "model",
    "MiniMindModel": "model",
    "KVCache": "kv_cache",
    "register_auto_classes": "model",
}

__all__ = ["KVCache", "MiniMindConfig", "MiniMindForCausalLM", "MiniMindModel", "PRESETS", "preset",
           "register_auto_classes"]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'minimind' has no attribute {name!r}")
    if _EXPORTS[name] != "presets":
        # the model, with the Auto classes' registration and the decode engine's `generate`
        importlib.import_module(".infer", __name__)
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later reads skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
