"""`minimind eval`: loss, perplexity and bits per byte against a computation by hand."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model

from minimind.cli import main
from minimind.eval.perplexity import document_windows, evaluate
from minimind.tokenizer import load_tokenizer, save_tokenizer

TEXTS = ["In the beginning God created the heaven and the earth.", "你好，世界 🙂", "x",
         "def f(x):\n    return x * 2\n" * 3]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model(0, hidden=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256).eval()


def by_hand(model, tokenizer, texts):
    """Each document alone as <|im_start|> text <|im_end|>: summed next-token cross-entropy, token count, bytes."""
    nats, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([[1] + tokenizer.encode(text, add_special_tokens=False) + [2]])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        nats += F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return nats, count, sum(len(t.encode("utf-8")) for t in texts)


def test_eval_equals_the_perplexity_computed_by_hand(model, tokenizer):
    nats, count, n_bytes = by_hand(model, tokenizer, TEXTS)
    result = evaluate(model, tokenizer, TEXTS, seq_len=128, batch_tokens=64)  # several batches, with padding
    assert result["tokens"] == count and result["bytes"] == n_bytes and result["documents"] == len(TEXTS)
    assert result["loss"] == pytest.approx(nats / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nats / count), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)


def test_long_documents_are_windowed_with_every_token_predicted_once(model, tokenizer):
    ids = list(range(10))
    windows = document_windows(ids, 4)
    assert windows == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert sum(len(w) - 1 for w in windows) == len(ids) - 1
    assert document_windows(list(range(5)), 4) == [[0, 1, 2, 3], [3, 4]]
    # windowed scoring: the same tokens, each with less context than the whole document
    short = evaluate(model, tokenizer, TEXTS, seq_len=8)
    full = evaluate(model, tokenizer, TEXTS, seq_len=128)
    assert short["tokens"] == full["tokens"] and short["loss"] != full["loss"]


def test_eval_command_json(model, tokenizer, tmp_path, capsys):
    model.save_pretrained(tmp_path / "m")
    save_tokenizer(tokenizer, tmp_path / "m")
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS), encoding="utf-8")
    main(["eval", str(tmp_path / "m"), "--data", str(data), "--json", "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    nats, count, n_bytes = by_hand(model, tokenizer, TEXTS)
    assert result["tokens"] == count and result["loss"] == pytest.approx(nats / count, rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    main(["eval", str(tmp_path / "m"), "--limit", "3", "--device", "cpu"])  # the built-in held-out split
    out = capsys.readouterr().out
    assert "built-in held-out split" in out and "perplexity" in out and "bits per byte" in out


def test_eval_errors(model, tokenizer):
    with pytest.raises(ValueError, match="no texts"):
        evaluate(model, tokenizer, [])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        evaluate(model, tokenizer, TEXTS, seq_len=1000)
