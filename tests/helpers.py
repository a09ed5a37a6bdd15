"""Small models shared by the test files (importable because pytest puts tests/ on sys.path)."""

import torch

from minimind import MiniMindConfig, MiniMindForCausalLM


def tiny_model(seed=0, hidden=32, vocab=6400, **fields):
    """A random 2-layer model with 2 heads and 1 KV head unless `fields` say otherwise."""
    torch.manual_seed(seed)
    fields = {"num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
              "max_position_embeddings": 128, **fields}
    return MiniMindForCausalLM(MiniMindConfig(hidden_size=hidden, vocab_size=vocab, **fields))


def save_model_dir(model, out):
    """`out` as a model directory (config, weights, the shipped tokenizer) that every command takes; returns it."""
    from minimind.tokenizer import load_tokenizer, save_tokenizer

    model.save_pretrained(out)
    save_tokenizer(load_tokenizer(), out)
    return out
