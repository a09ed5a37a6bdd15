"""The built-in corpus builds offline from installed packages, with a fixed split and SFT / DPO sets."""

import socket

import pytest

from minimind.data import corpus


@pytest.fixture(scope="module")
def train():
    return corpus.documents("train")


@pytest.fixture(scope="module")
def val():
    return corpus.documents("val")


def test_builds_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the built-in corpus tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    bible, chat, pydoc = corpus.bible_documents(), corpus.chatterbot_documents(), corpus.pydoc_documents()
    assert len(bible) == 1189 and bible[0].text.startswith("Genesis 1\n1 In the beginning God created")
    assert sum(len(d.text) for d in bible) > 4_000_000
    languages = {d.source.split("/")[1] for d in chat}
    assert {"english", "chinese"} <= languages and len(chat) > 7000
    assert any("def " in d.text or "lambda" in d.text for d in pydoc)


def test_split_is_fixed_disjoint_and_small(train, val):
    assert not {d.text for d in train} & {d.text for d in val}
    chars = sum(len(d.text) for d in train + val)
    assert 0.01 <= sum(len(d.text) for d in val) / chars <= 0.02
    assert 0.01 <= len(val) / len(train + val) <= 0.02
    assert all(corpus.in_val(d.text) for d in val)
    assert corpus.pretrain_texts("val") == [d.text for d in val]  # deterministic order
    with pytest.raises(ValueError, match="unknown split"):
        corpus.pretrain_texts("test")


def test_pretrain_texts_cover_english_chinese_and_code():
    texts = corpus.pretrain_texts("train")
    assert any("In the beginning" in t for t in texts)
    assert any("你好" in t for t in texts)
    assert any("def " in t for t in texts)


def test_sft_conversations_alternate_and_end_with_the_assistant():
    records = corpus.sft_conversations("train")
    assert len(records) > 7000
    assert any(len(r["conversations"]) > 2 for r in records)  # multi-turn where the dialogue is
    for r in records:
        roles = [m["role"] for m in r["conversations"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert all(isinstance(m["content"], str) for m in r["conversations"])


def test_dpo_pairs_share_the_prompt_and_differ_in_the_reply():
    pairs = corpus.dpo_pairs("train")
    assert len(pairs) > 7000
    for p in pairs:
        assert p["chosen"][:-1] == p["rejected"][:-1]
        assert p["chosen"][-1]["role"] == p["rejected"][-1]["role"] == "assistant"
        assert p["chosen"][-1]["content"] != p["rejected"][-1]["content"]
    assert pairs == corpus.dpo_pairs("train")


def test_report_counts_documents_characters_tokens():
    from minimind.tokenizer import load_tokenizer

    rows = corpus.report(load_tokenizer())
    total = {r["split"]: r for r in rows if r["source"] == "total"}
    assert total["train"]["documents"] == len(corpus.documents("train"))
    assert total["train"]["characters"] > 5_000_000 and total["train"]["tokens"] > 1_000_000
    text = corpus.format_report(rows)
    assert "bible" in text and "chatterbot" in text and "pydoc" in text and "SFT conversations" in text
