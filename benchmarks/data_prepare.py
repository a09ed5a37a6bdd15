"""Benchmark: `minimind data prepare` on a 100 MB corpus, and reading the shards back.

The corpus is the built-in one repeated (each copy's documents shuffled and numbered) until it reaches the size,
written as MiniMind-style `{"text": ...}` JSON lines into a scratch folder (not part of the repository).

Measured:
- prepare: time and tokens/s of `prepare_shards` (read JSON lines, tokenize in batches with the Rust tokenizer's
  threads, write uint16 shards), against the reference of the plain per-document loop
  `tokenizer(text)["input_ids"]` (MiniMind's way: one Python call per document) on the same documents;
- read-back: tokens/s of `PretrainDataset(shard_dir)` item by item and through a DataLoader (batch 32, seq 512).

    python benchmarks/data_prepare.py [--mb 100] [--dir /tmp/minimind-bench]
"""

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

from minimind.data import corpus
from minimind.data.datasets import PretrainDataset, collate
from minimind.data.files import read_texts
from minimind.data.tokens import prepare_shards
from minimind.tokenizer import load_tokenizer


def make_corpus(path: Path, megabytes: int) -> int:
    """Write about `megabytes` MB of {"text": ...} lines built from the built-in corpus; returns the byte count."""
    texts = corpus.pretrain_texts("train")
    rng, size, copy = random.Random(0), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < megabytes * 1e6:
            order = texts[:]
            rng.shuffle(order)
            for t in order:
                line = json.dumps({"text": f"[{copy}] {t}"}, ensure_ascii=False) + "\n"
                f.write(line)
                size += len(line.encode("utf-8"))
                if size >= megabytes * 1e6:
                    break
            copy += 1
    return size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="corpus size in MB")
    parser.add_argument("--dir", default="/tmp/minimind-bench", help="scratch folder for the corpus and shards")
    parser.add_argument("--reference_mb", type=float, default=10, help="MB of the corpus the reference loop runs on")
    args = parser.parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    data = root / "corpus.jsonl"
    tokenizer = load_tokenizer()
    print(f"cpu cores: {os.cpu_count()}, torch {torch.__version__}, python {sys.version.split()[0]}")

    t = time.perf_counter()
    size = make_corpus(data, args.mb)
    print(f"corpus: {size / 1e6:.1f} MB written in {time.perf_counter() - t:.1f}s")

    t = time.perf_counter()
    index = prepare_shards(data, tokenizer, root / "shards")
    prep = time.perf_counter() - t
    tokens = index["tokens"]
    print(f"prepare: {index['documents']:,} documents, {tokens:,} tokens, {len(index['shards'])} shard(s) in "
          f"{prep:.1f}s = {tokens / prep / 1e6:.2f}M tokens/s, {size / prep / 1e6:.1f} MB/s")

    # reference: one tokenizer call per document, on the first reference_mb of the same corpus
    budget, texts = args.reference_mb * 1e6, []
    for text in read_texts(data):
        texts.append(text)
        budget -= len(text.encode("utf-8")) + 12
        if budget <= 0:
            break
    t = time.perf_counter()
    ref_tokens = sum(len(tokenizer(text)["input_ids"]) + 2 for text in texts)
    ref = time.perf_counter() - t
    print(f"reference per-document loop on {args.reference_mb:g} MB: {ref_tokens / ref / 1e6:.2f}M tokens/s "
          f"-> prepare is {tokens / prep / (ref_tokens / ref):.1f}x faster")

    ds = PretrainDataset(root / "shards", tokenizer, 512)
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    items = time.perf_counter() - t
    print(f"read-back, item by item: {len(ds):,} sequences of 512 in {items:.2f}s = "
          f"{len(ds) * 512 / items / 1e6:.1f}M tokens/s")
    loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, collate_fn=collate)
    t = time.perf_counter()
    n = sum(batch["input_ids"].numel() for batch in loader)
    batches = time.perf_counter() - t
    print(f"read-back, DataLoader (batch 32, shuffled, 0 workers): {n / batches / 1e6:.1f}M tokens/s")


if __name__ == "__main__":
    main()
