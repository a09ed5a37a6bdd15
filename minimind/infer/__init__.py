"""Inference: everything that runs a trained model.

- `sampling.py`: the sampling filters (temperature, top-k, top-p), the repetition penalty, seeds.
- `generate.py`: the decode loop over the KV cache, and the text functions on top of it (`generate`,
  `generate_text`, `stream`).
- `textstream.py`: token ids to text pieces, incrementally, UTF-8 safe, with stop strings.
- `hf.py`: `model.generate(...)` with Hugging Face's calling convention, run by our loop.
- `chat.py`: the terminal chat (`minimind chat`); `evaluate.py`: loss, perplexity, bits per byte (`minimind eval`).
"""
