"""minimind: train small language models from scratch, end to end."""

from transformers import AutoConfig, AutoModelForCausalLM

from .config import PRESETS, MiniMindConfig, preset
from .model import KVCache, MiniMindForCausalLM, MiniMindModel

__version__ = "0.1.0"

AutoConfig.register("minimind", MiniMindConfig, exist_ok=True)
AutoModelForCausalLM.register(MiniMindConfig, MiniMindForCausalLM, exist_ok=True)

__all__ = ["MiniMindConfig", "MiniMindForCausalLM", "MiniMindModel", "KVCache", "PRESETS", "preset"]
