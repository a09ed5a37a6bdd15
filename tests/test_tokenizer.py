"""The shipped tokenizer: loading, round trips, special ids, the chat template; training one; the vocab check."""

import json

import pytest
import tokenizers
from transformers import AutoTokenizer

from minimind import preset
from minimind.cli import main
from minimind.data import corpus
from minimind.tokenizer import (
    CHAT_TEMPLATE,
    SHIPPED,
    check_tokenizer_fits,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

SAMPLES = [
    "In the beginning God created the heaven and the earth.",
    "你好，我可以借用一杯糖吗？天气很好。",
    "Emoji: 🙂👍🏽🚀 and a family 👨‍👩‍👧",
    "def f(x):\n    return {'a': x ** 2}  # comment\n\n\tif x != 0: pass\r\n",
    "  leading and trailing spaces   ",
    "Mixed: naïve café, Ελληνικά, русский, 日本語, 한국어, العربية",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_shipped_tokenizer_loads_with_autotokenizer():
    tok = AutoTokenizer.from_pretrained(str(SHIPPED))
    assert len(tok) == 6400
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    config = json.loads((SHIPPED / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # loadable by transformers 4.x too
    assert config["chat_template"] == CHAT_TEMPLATE


def test_load_tokenizer_default_is_the_shipped_one(tok):
    assert tok.is_fast and len(tok) == 6400
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert max(ids) < 6400
    assert tok.decode(ids) == text


def test_no_special_tokens_added_by_default(tok):
    assert tok("hello")["input_ids"] == tok("hello", add_special_tokens=False)["input_ids"]


def test_compresses_english_and_chinese(tok):
    english = SAMPLES[0]
    assert len(tok(english)["input_ids"]) < len(english) / 3
    chinese = "我很好，谢谢。你呢？"
    assert len(tok(chinese)["input_ids"]) < 1.5 * len(chinese)  # a Chinese character is 3 bytes


def test_chat_template_renders_exactly(tok):
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "你好"},
    ]
    expected = ("<|im_start|>system\nYou are helpful.<|im_end|>\n"
                "<|im_start|>user\nHi!<|im_end|>\n"
                "<|im_start|>assistant\nHello, how can I help?<|im_end|>\n"
                "<|im_start|>user\n你好<|im_end|>\n")
    assert tok.apply_chat_template(messages, tokenize=False) == expected
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        expected + "<|im_start|>assistant\n"
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == 1 and tok.decode(ids) == expected + "<|im_start|>assistant\n"


def test_chat_template_rejects_unknown_role(tok):
    with pytest.raises(Exception, match="unknown role 'bot'"):
        tok.apply_chat_template([{"role": "bot", "content": "x"}], tokenize=False)


@pytest.mark.skipif(tuple(int(x) for x in tokenizers.__version__.split(".")[:2]) < (0, 23),
                    reason="the shipped tokenizer was trained with tokenizers 0.23; 0.22's BPE trainer orders tied "
                           "merges differently (its tokenizer is as good, not the same bytes)")
def test_shipped_tokenizer_is_what_train_produces_on_the_default_corpus(tmp_path):
    train_tokenizer(corpus.pretrain_texts("train"), 6400, tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (SHIPPED / "tokenizer.json").read_bytes()


def test_train_small_tokenizer(tmp_path):
    texts = ["the quick brown fox jumps over the lazy dog"] * 50 + ["敏捷的棕色狐狸跳过了懒狗"] * 50
    tok = train_tokenizer(texts, 300, tmp_path / "tok")
    assert len(tok) == 300 and (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    again = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    for text in SAMPLES:  # byte-level: anything round-trips, even unseen scripts
        assert again.decode(again(text)["input_ids"]) == text
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(texts, 100, tmp_path / "tiny")


def test_cli_tokenizer_train(tmp_path, capsys):
    data = tmp_path / "corpus.txt"
    data.write_text("hello world, this is a tiny corpus.\n\nanother paragraph, 你好世界.\n" * 20)
    main(["tokenizer", "train", "--data", str(data), "--vocab_size", "280", "--out", str(tmp_path / "tok")])
    assert "280-token" in capsys.readouterr().out
    assert len(load_tokenizer(tmp_path / "tok")) == 280


def test_loads_minimind_style_directory_and_tokenizer_json(tmp_path):
    # MiniMind's own layout: tokenizer.json + a tokenizer_config.json with its special tokens, no chat template
    (tmp_path / "tokenizer.json").write_bytes((SHIPPED / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "model_max_length": 32768,
        "add_bos_token": False, "add_eos_token": False}))
    tok = load_tokenizer(tmp_path)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False).startswith("<|im_start|>")
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.decode(tok("héllo")["input_ids"]) == "héllo"


def test_save_tokenizer_writes_a_config_transformers_4_can_load(tok, tmp_path):
    save_tokenizer(tok, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["chat_template"] == CHAT_TEMPLATE
    again = load_tokenizer(tmp_path)
    assert len(again) == 6400 and (again.pad_token_id, again.bos_token_id, again.eos_token_id) == (0, 1, 2)
    assert again("héllo 你好")["input_ids"] == tok("héllo 你好")["input_ids"]


def test_load_tokenizer_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such tokenizer"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_check_tokenizer_fits(tok):
    check_tokenizer_fits(tok, preset("tiny"))  # 6400 == 6400
    with pytest.raises(ValueError, match=r"6400 tokens.*vocab_size is 4000"):
        check_tokenizer_fits(tok, preset("tiny", vocab_size=4000))


def test_loading_from_a_model_directory_prints_nothing(tmp_path):
    """AutoTokenizer reads a model directory's config.json; in a fresh Python that has not loaded minimind's model,
    transformers would warn that it does not know the model type "minimind"."""
    import subprocess
    import sys

    from helpers import save_model_dir, tiny_model

    save_model_dir(tiny_model(), tmp_path)
    code = f"from minimind.tokenizer import load_tokenizer; print(len(load_tokenizer({str(tmp_path)!r})))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "6400" and "minimind" not in r.stderr, r.stderr


def test_split_digits_reads_a_number_the_same_everywhere(tmp_path):
    texts = ["the sum is 5535 and 123 * 45 = 5535", '{"expression": "123 * 45"}', "\n5535\n"] * 40
    plain, split = train_tokenizer(texts, 300, tmp_path / "plain"), train_tokenizer(texts, 300, tmp_path / "split",
                                                                                   split_digits=True)
    digits = {s: [split.decode([i]) for i in split.encode(s, add_special_tokens=False)] for s in (" 5535", "\n5535")}
    assert digits[" 5535"][-4:] == digits["\n5535"][-4:] == ["5", "5", "3", "5"]
    assert len(plain.encode(" 5535", add_special_tokens=False)) < 4  # without it, digits merge (per context)
    assert split.decode(split.encode("x 12.5 * -3", add_special_tokens=False)) == "x 12.5 * -3"


def test_digits_in_groups_of_three_are_one_token_each_from_0_to_999(tmp_path):
    tok = train_tokenizer(["the sum is 5535 and 123 * 45 = 5535"] * 40, 1400, tmp_path, split_digits=3)
    groups = [f"{i:0{n}d}" for n in (1, 2, 3) for i in range(10 ** n)]
    assert all(len(tok.encode(g, add_special_tokens=False)) == 1 for g in groups)
    for text in (" 123456", "\n123456", '"123456'):  # left to right, whatever comes before
        assert [tok.decode([i]) for i in tok.encode(text, add_special_tokens=False)][-2:] == ["123", "456"]
    assert [tok.decode([i]) for i in tok.encode("x 5535", add_special_tokens=False)][-2:] == ["553", "5"]
    assert tok.decode(tok.encode("x 12.5 * -3 = -37.5", add_special_tokens=False)) == "x 12.5 * -3 = -37.5"


def test_cli_tokenizer_train_on_conversations(tmp_path, capsys):
    """A conversations file (as MiniMind trains its tokenizer on its SFT file) is read as the chat template renders
    it, tools included; a record with neither text nor messages is an error naming its line."""
    data = tmp_path / "sft.jsonl"
    record = {"tools": [{"type": "function", "function": {"name": "calculator", "parameters": {}}}],
              "messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]}
    data.write_text((json.dumps(record) + "\n") * 30 + json.dumps({"text": "plain text, too"}) + "\n")
    main(["tokenizer", "train", "--data", str(data), "--split_digits", "--vocab_size", "400",
          "--out", str(tmp_path / "tok")])
    assert f"byte-level BPE tokenizer (digits split) on {data} in" in capsys.readouterr().out
    vocab = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["model"]["vocab"]
    assert "calculator" in vocab or "Ġcalculator" in vocab  # learnt from the rendered tools
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(record) + "\n" + json.dumps({"prompt": "no text"}) + "\n")
    with pytest.raises(SystemExit):
        main(["tokenizer", "train", "--data", str(bad), "--vocab_size", "300", "--out", str(tmp_path / "t2")])
    err = capsys.readouterr().err
    assert 'bad.jsonl:2: no "text", "messages" or "conversations" field' in err and "Traceback" not in err
