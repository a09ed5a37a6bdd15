"""Data: every format reads the same documents, packing keeps every token once, shards equal direct tokenization,
SFT/DPO labels cover exactly the assistant spans, and each kind of bad input gives its one-line error."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

import minimind.data.datasets
from minimind.cli import main
from minimind.data.datasets import DPODataset, PretrainDataset, SFTDataset, StreamingPretrainDataset, collate
from minimind.data.files import DataError, read_texts
from minimind.data.messages import encode_chat
from minimind.data.tokens import load_shards, prepare_shards
from minimind.tokenizer import load_tokenizer

DOCS = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (i % 7 + 1) + "你好，世界 🙂"
        for i in range(60)]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMIND_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def direct_stream(tok, docs):
    ids = []
    for d in docs:
        ids += [tok.bos_token_id] + tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return np.array(ids)


def all_items(ds):
    return [ds[i]["input_ids"] for i in range(len(ds))]


# --- pretraining ------------------------------------------------------------------------------------------------

def test_packing_keeps_every_token_exactly_once(tmp_path, tok):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in DOCS])
    seq_len = 32
    train, val = PretrainDataset(path, tok, seq_len), PretrainDataset(path, tok, seq_len, split="val")
    stream = direct_stream(tok, DOCS)
    n = len(stream) // seq_len
    assert len(train) + len(val) == n and len(val) == (n // 100 if n >= 100 else 1)
    sequences = {int(i): train[k]["input_ids"] for k, i in enumerate(train.index)}
    sequences.update({int(i): val[k]["input_ids"] for k, i in enumerate(val.index)})
    packed = torch.cat([sequences[i] for i in range(n)]).numpy()
    assert np.array_equal(packed, stream[: n * seq_len])  # in order, no token lost or repeated, no padding
    item = train[0]
    assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (seq_len,)
    assert torch.equal(item["input_ids"], item["labels"])
    assert train.num_tokens == len(train) * seq_len
    assert (tok.bos_token_id == stream[0]) and stream[-1] == tok.eos_token_id


def test_txt_parquet_folder_and_glob_read_the_same_documents(tmp_path, tok):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    (tmp_path / "corpus").mkdir()
    write_jsonl(tmp_path / "corpus" / "a.jsonl", [{"text": d} for d in DOCS[:20]])
    (tmp_path / "corpus" / "b.txt").write_text("\n\n".join(DOCS[20:40]) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": DOCS[40:], "id": list(range(20))}), tmp_path / "corpus" / "c.parquet")
    assert list(read_texts(tmp_path / "corpus")) == DOCS
    assert list(read_texts(str(tmp_path / "corpus" / "*"))) == DOCS
    assert list(read_texts(tmp_path / "corpus" / "b.txt")) == DOCS[20:40]
    folder = PretrainDataset(tmp_path / "corpus", tok, 16)
    single = PretrainDataset(write_jsonl(tmp_path / "all.jsonl", [{"text": d} for d in DOCS]), tok, 16)
    assert all(torch.equal(a, b) for a, b in zip(all_items(folder), all_items(single)))


def test_txt_documents_are_blank_line_separated(tmp_path):
    (tmp_path / "t.txt").write_text("line one\nline two\n\n\n\nsecond doc\n  \nthird\n", encoding="utf-8")
    assert list(read_texts(tmp_path / "t.txt")) == ["line one\nline two", "second doc", "third"]


def test_token_cache_makes_a_second_run_skip_tokenizing(tmp_path, tok, cache, monkeypatch):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in DOCS])
    first = all_items(PretrainDataset(path, tok, 32))
    assert list(cache.glob("tokens-*.npy"))

    def fail(*args, **kwargs):
        raise AssertionError("tokenized again despite the cache")

    monkeypatch.setattr(minimind.data.datasets, "tokenize_stream", fail)  # where PretrainDataset calls it
    second = all_items(PretrainDataset(path, tok, 32))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    write_jsonl(path, [{"text": d} for d in DOCS[:30]])  # new content, new key
    with pytest.raises(AssertionError, match="tokenized again"):
        PretrainDataset(path, tok, 32)


def test_shards_read_back_equal_direct_tokenization(tmp_path, tok):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in DOCS * 3])
    index = prepare_shards(path, tok, tmp_path / "shards", shard_tokens=500, batch_docs=7)
    assert len(index["shards"]) > 3 and index["documents"] == 180 and index["dtype"] == "uint16"
    assert index["tokens"] == sum(s["tokens"] for s in index["shards"])
    stream, _ = load_shards(tmp_path / "shards", tok)
    assert np.array_equal(stream.read(0, len(stream)), direct_stream(tok, DOCS * 3))
    for split in ("train", "val"):
        from_shards = PretrainDataset(tmp_path / "shards", tok, 48, split=split)
        direct = PretrainDataset(path, tok, 48, split=split, cache_dir=False)
        assert len(from_shards) == len(direct) > 0
        assert all(torch.equal(a, b) for a, b in zip(all_items(from_shards), all_items(direct)))


def test_shards_made_with_another_tokenizer_are_refused(tmp_path, tok):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in DOCS])
    prepare_shards(path, tok, tmp_path / "shards")
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    index["tokenizer_hash"] = "0" * 16
    (tmp_path / "shards" / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="index.json: the shards were prepared with another tokenizer"):
        PretrainDataset(tmp_path / "shards", tok, 32)


def test_cli_data_prepare(tmp_path, capsys):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in DOCS])
    main(["data", "prepare", "--data", str(path), "--out", str(tmp_path / "shards")])
    assert "60 documents" in capsys.readouterr().out and (tmp_path / "shards" / "shard-00000.bin").is_file()


def test_streaming_yields_the_packed_stream(tmp_path, tok):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in DOCS])
    stream = StreamingPretrainDataset(path, tok, 32, batch_docs=8)
    items = [x["input_ids"] for x in stream]
    expected = direct_stream(tok, DOCS)
    # each batch of 8 documents is packed on, the leftover tokens carried into the next batch
    assert np.array_equal(torch.cat(items).numpy(), expected[: len(items) * 32])
    assert len(items) == len(expected) // 32
    assert list(StreamingPretrainDataset(path, tok, 32, split="val")) == []  # fewer than 100 batches
    loader = torch.utils.data.DataLoader(stream, batch_size=4, collate_fn=collate)
    assert next(iter(loader))["input_ids"].shape == (4, 32)


def test_builtin_corpus_pretrain_dataset(tok):
    ds = PretrainDataset(None, tok, 256, split="val")
    assert len(ds) > 10 and ds[0]["input_ids"][0].item() == tok.bos_token_id
    assert "built-in corpus" in ds.summary


# --- SFT --------------------------------------------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "用中文说"},
    {"role": "assistant", "content": "等于四。🙂"},
]


def learnt(tok, item, prefix=""):
    ids, labels = item[prefix + "input_ids"], item[prefix + "labels"]
    kept = labels != -100
    assert torch.equal(labels[kept], ids[kept])
    return tok.decode(ids[kept].tolist())


def test_sft_mask_covers_exactly_the_assistant_spans(tmp_path, tok):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"conversations": CONVERSATION}, {"messages": CONVERSATION[1:3]}])
    ds = SFTDataset(path, tok, 512)
    item = ds[0]
    assert tok.decode(item["input_ids"].tolist()) == tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert learnt(tok, item) == "It is 4.<|im_end|>等于四。🙂<|im_end|>"
    # and nothing but those spans: the unlearnt tokens are exactly the rest of the rendering
    rest = tok.decode(item["input_ids"][item["labels"] == -100].tolist())
    assert rest == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?"
                    "<|im_end|>\n<|im_start|>assistant\n\n<|im_start|>user\n用中文说<|im_end|>\n"
                    "<|im_start|>assistant\n\n")
    val = SFTDataset(path, tok, 512, split="val")  # 2 records: the last one is val
    assert len(ds) == 1 and len(val) == 1 and learnt(tok, val[0]) == "It is 4.<|im_end|>"


def test_sft_truncation_drops_whole_turns(tok):
    full = len(tok(tok.apply_chat_template(CONVERSATION, tokenize=False), add_special_tokens=False)["input_ids"])
    ids, labels = encode_chat(tok, CONVERSATION, full - 1)
    assert tok.decode(ids) == tok.apply_chat_template(CONVERSATION[:3], tokenize=False)
    ids, labels = encode_chat(tok, CONVERSATION, 12)  # not even the first exchange fits: cut, keeping the start
    assert len(ids) == 12 and len(labels) == 12
    # DPO keeps the final response and drops the oldest exchanges (after the system message)
    ids, labels = encode_chat(tok, CONVERSATION, full - 1, only_last=True)
    assert tok.decode(ids) == tok.apply_chat_template(CONVERSATION[:1] + CONVERSATION[3:], tokenize=False)
    assert tok.decode([i for i, label in zip(ids, labels) if label != -100]) == "等于四。🙂<|im_end|>"


def test_sft_builtin_dataset_and_collate(tok):
    ds = SFTDataset(None, tok, 128)
    batch = collate([ds[i] for i in range(8)])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[1] <= 128 and (batch["labels"] != -100).any()


# --- DPO --------------------------------------------------------------------------------------------------------

def test_dpo_masks_cover_the_response(tmp_path, tok):
    path = write_jsonl(tmp_path / "dpo.jsonl", [
        {"prompt": "Say hi", "chosen": "Hi there!", "rejected": "No."},
        {"chosen": CONVERSATION, "rejected": CONVERSATION[:-1] + [{"role": "assistant", "content": "不知道"}]},
    ])
    ds = DPODataset(path, tok, 512)
    item = ds[0]
    assert learnt(tok, item, "chosen_") == "Hi there!<|im_end|>"
    assert learnt(tok, item, "rejected_") == "No.<|im_end|>"
    assert tok.decode(item["chosen_input_ids"].tolist()) == \
        "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\nHi there!<|im_end|>\n"
    val = DPODataset(path, tok, 512, split="val")[0]
    assert learnt(tok, val, "chosen_") == "等于四。🙂<|im_end|>"  # only the final response, not earlier turns
    assert learnt(tok, val, "rejected_") == "不知道<|im_end|>"
    batch = collate([ds[0], val])
    assert set(batch) >= {"chosen_attention_mask", "rejected_attention_mask"}


def test_dpo_builtin_pairs(tok):
    ds = DPODataset(None, tok, 256, split="val")
    item = ds[0]
    assert not torch.equal(item["chosen_input_ids"], item["rejected_input_ids"])


# --- collate ----------------------------------------------------------------------------------------------------

def test_collate_pads_right_and_masks():
    batch = collate([{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7])},
                     {"input_ids": torch.tensor([8]), "labels": torch.tensor([8])}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    same = collate([{"input_ids": torch.tensor([1, 2]), "labels": torch.tensor([1, 2])}] * 2)
    assert same["attention_mask"].tolist() == [[1, 1], [1, 1]] and same["input_ids"].shape == (2, 2)


# --- bad input --------------------------------------------------------------------------------------------------

GOOD = '{"text": "fine"}\n'


def bad_inputs(tmp_path):
    """(name, path or spec, dataset class, expected message start) for each kind of bad input."""
    p = tmp_path
    (p / "malformed.jsonl").write_text(GOOD * 2 + '{"text": "oops",}\n')
    (p / "missing.jsonl").write_text(GOOD * 2 + '{"content": "no text"}\n')
    (p / "role.jsonl").write_text(json.dumps({"conversations": CONVERSATION}) + "\n" * 2 +
                                  json.dumps({"conversations": [{"role": "bot", "content": "x"}]}) + "\n")
    (p / "empty.jsonl").write_text("")
    (p / "binary.txt").write_bytes(bytes(range(256)) * 4)
    return [
        ("malformed JSON", p / "malformed.jsonl", PretrainDataset, f"{p / 'malformed.jsonl'}:3: malformed JSON"),
        ("missing field", p / "missing.jsonl", PretrainDataset, f'{p / "missing.jsonl"}:3: no "text" field'),
        ("unknown role", p / "role.jsonl", SFTDataset,
         f"{p / 'role.jsonl'}:3: conversations[0].role is \"bot\", not a known role; "
         "expected system, developer, user, assistant or tool"),
        ("empty file", p / "empty.jsonl", PretrainDataset, f"{p / 'empty.jsonl'}: the file is empty"),
        ("binary file", p / "binary.txt", PretrainDataset, f"{p / 'binary.txt'}: not a text file"),
        ("missing path", p / "nope.jsonl", PretrainDataset, f"{p / 'nope.jsonl'}: no such file or directory"),
        ("empty glob", str(p / "nothing*.jsonl"), SFTDataset, f"{p / 'nothing*.jsonl'}: the pattern matches no files"),
    ]


def test_each_bad_input_gives_its_one_line_error(tmp_path, tok):
    for name, path, cls, message in bad_inputs(tmp_path):
        with pytest.raises(DataError) as e:
            cls(path, tok, 64)
        assert str(e.value).startswith(message), name
        assert "\n" not in str(e.value), name


def test_more_bad_records(tmp_path, tok):
    cases = {
        '{"text": 5}': 'x.jsonl:1: "text" is a int; expected a string',
        '[1, 2]': "x.jsonl:1: a JSON list, not an object",
        '{"conversations": []}': 'x.jsonl:1: conversations is not a non-empty list',
        '{"conversations": [{"role": "user", "content": "hi"}]}': "x.jsonl:1: no assistant message",
        '{"prompt": "p", "chosen": "c"}': 'x.jsonl:1: no "chosen" and "rejected" fields',
        '{"chosen": "c", "rejected": "r"}': 'x.jsonl:1: "chosen" is a string but there is no "prompt"',
    }
    for line, message in cases.items():
        (tmp_path / "x.jsonl").write_text(line + "\n")
        cls = PretrainDataset if "text" in line or "[1" in line else DPODataset if "chosen" in line else SFTDataset
        with pytest.raises(DataError, match=message.replace("[", r"\[").replace("(", r"\(")):
            cls(tmp_path / "x.jsonl", tok, 64)
    (tmp_path / "x.parquet").write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(DataError, match="x.parquet: not a Parquet file"):
        PretrainDataset(tmp_path / "x.parquet", tok, 64)
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"content": ["a", "b"]}), tmp_path / "y.parquet")
    with pytest.raises(DataError, match=r"y.parquet: no 'text' column \(columns: content\)"):
        PretrainDataset(tmp_path / "y.parquet", tok, 64)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        PretrainDataset(tmp_path / "x.csv", tok, 64)


def test_skip_bad_records_warns_with_the_count(tmp_path, tok, caplog):
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[:30]) + "{broken\n" + '{"x": 1}\n')
    with caplog.at_level(logging.WARNING, logger="minimind"):
        ds = PretrainDataset(path, tok, 32, skip_bad_records=True)
    assert len(ds) > 0
    assert "mixed.jsonl: skipped 2 bad records (first: " in caplog.text
    assert "mixed.jsonl:31: malformed JSON" in caplog.text


def test_cli_bad_input_is_one_clear_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text(GOOD + "not json\n")
    r = subprocess.run([sys.executable, "-m", "minimind", "data", "prepare", "--data", str(tmp_path / "bad.jsonl"),
                        "--out", str(tmp_path / "out")], check=False, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    expected = (f"minimind data: error: {tmp_path / 'bad.jsonl'}:2: malformed JSON (Expecting value at column 1); "
                "expected one JSON object per line")
    assert r.stderr.strip().splitlines() == [expected]
