"""Inference: everything that runs a trained model.

- `sampling.py`: the sampling filters (temperature, top-k, top-p), the repetition penalty, seeds.
- `engine.py`: the one decode engine (`DecodeBatch`): a running batch of rows over one KV cache, prefilled,
  stepped, joined and left; `generate`, the chat, the evaluations, RL rollouts and the server's worker run on it.
- `generate.py`: `generate_tokens` and the text functions on top of it (`generate`, `generate_text`, `stream`).
- `textstream.py`: token ids to text pieces, incrementally, UTF-8 safe, with stop strings.
- `hf_generate.py`: `model.generate(...)` with Hugging Face's calling convention, run by the engine (loading this
  package attaches it to `MiniMindForCausalLM`).
- `chat.py`: the terminal chat (`minimind chat`).
"""

from . import hf_generate  # noqa: F401  (MiniMindForCausalLM.generate)
