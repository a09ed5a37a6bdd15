"""The datasets the trainer reads, and `collate`.

`PretrainDataset` serves packed sequences of a corpus, a file set or prepared shards (memory-mapped);
`StreamingPretrainDataset` reads corpora larger than memory; `SFTDataset` and `DPODataset` serve rendered
conversations and pairs (`messages.py`), with MiniMind-3's data options (`messages.Augment`) when given. `collate`
pads to the longest in the batch.
"""

import hashlib
import logging

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from ..tokenizer import tokenizer_hash
from .files import TEXT_SUFFIXES, data_error, read_records, read_texts, resolve_files
from .messages import Augment, encode_chat, parse_conversation, parse_pair
from .tokens import (
    SPLITS,
    TokenStream,
    _batches,
    _cached_tokens,
    _file_digest,
    is_shard_dir,
    load_shards,
    split_sequences,
    tokenize_documents,
    tokenize_stream,
)

logger = logging.getLogger("minimind")

# --- pretraining datasets ---------------------------------------------------------------------------------------

class PretrainDataset(Dataset):
    """Packed pretraining sequences: item i is {"input_ids": LongTensor(seq_len), "labels": the same}.

    `data`: None (the built-in corpus, its fixed split), a file, folder or glob of .jsonl/.txt/.parquet, or a folder
    of prepared shards (memory-mapped: the way to train on corpora of many GB). The split of user data is every
    100th packed sequence (see `split_sequences`). Text is tokenized once and cached under `cache_dir` (default
    `cache_root()`; False: no cache). `.num_tokens` is the number of tokens this split yields per epoch;
    `.summary` says what was read."""

    def __init__(self, data, tokenizer, seq_len: int, split: str = "train", skip_bad_records: bool = False,
                 cache_dir=None):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        if seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, got {seq_len}")
        self.seq_len = seq_len
        key = tokenizer_hash(tokenizer)
        if data is None:
            from . import corpus

            texts = corpus.pretrain_texts(split)
            content = hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()
            tokens, counts = _cached_tokens(("corpus", content, key), lambda: tokenize_stream(texts, tokenizer),
                                            cache_dir)
            self.stream, name = TokenStream([tokens]), f"built-in corpus ({split} split)"
            n = len(self.stream) // seq_len
            self.index = np.arange(n)
        else:
            if is_shard_dir(data):
                self.stream, counts = load_shards(data, tokenizer)
            else:
                files = resolve_files(data, TEXT_SUFFIXES)
                content = [(str(p), _file_digest(p)) for p in files]
                tokens, counts = _cached_tokens(
                    ("files", content, key, skip_bad_records),
                    lambda: tokenize_stream(read_texts(data, skip_bad_records), tokenizer), cache_dir)
                self.stream = TokenStream([tokens])
            name = str(data)
            n = len(self.stream) // seq_len
            self.index = split_sequences(n, split)
            if n == 0:
                raise data_error(data, f"only {len(self.stream)} tokens, less than one sequence of {seq_len}",
                             "more text, or a smaller seq_len")
        self.num_tokens = len(self.index) * seq_len
        self.summary = (f"{name}: {counts['documents']:,} documents, {counts['characters']:,} characters, "
                        f"{counts['tokens']:,} tokens; {split}: {len(self.index):,} sequences of {seq_len}")
        logger.info(self.summary)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        start = int(self.index[i]) * self.seq_len
        ids = torch.from_numpy(self.stream.read(start, start + self.seq_len))
        return {"input_ids": ids, "labels": ids.clone()}


class StreamingPretrainDataset(IterableDataset):
    """Packed pretraining sequences read lazily, for corpora larger than memory: an IterableDataset of the same
    items as `PretrainDataset`, holding only one batch of documents at a time.

    Documents are read in batches of `batch_docs`; batch b belongs to val when b % 100 == 99 (so a corpus of under
    100 batches has no val part), to train otherwise. Train batches are dealt round-robin to the DataLoader workers
    (and to the ranks of a torch.distributed run), each of which packs its own. `data=None` streams the built-in
    corpus' split."""

    def __init__(self, data, tokenizer, seq_len: int, split: str = "train", skip_bad_records: bool = False,
                 batch_docs: int = 256):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        self.data, self.tokenizer, self.seq_len, self.split = data, tokenizer, seq_len, split
        self.skip_bad_records, self.batch_docs = skip_bad_records, batch_docs
        if data is not None:
            resolve_files(data, TEXT_SUFFIXES)  # bad paths fail now, not inside a worker

    def _shard(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        return rank * workers + worker, world * workers

    def __iter__(self):
        shard, shards = self._shard()
        if self.data is None:
            from . import corpus

            texts, keep = corpus.pretrain_texts(self.split), lambda b: True
        else:
            texts = read_texts(self.data, self.skip_bad_records)
            keep = (lambda b: b % 100 == 99) if self.split == "val" else (lambda b: b % 100 != 99)
        buffer = np.zeros(0, dtype=np.int64)
        mine = 0
        for b, batch in enumerate(_batches(texts, self.batch_docs)):
            if not keep(b):
                continue
            mine += 1
            if (mine - 1) % shards != shard:
                continue
            buffer = np.concatenate([buffer, tokenize_documents(batch, self.tokenizer).astype(np.int64)])
            n = len(buffer) // self.seq_len
            for k in range(n):
                ids = torch.from_numpy(buffer[k * self.seq_len:(k + 1) * self.seq_len].copy())
                yield {"input_ids": ids, "labels": ids.clone()}
            buffer = buffer[n * self.seq_len:]


def split_items(items: list, split: str) -> list:
    """The items of a user's dataset in `split` ("train" or "val"), by the fixed held-out split of `split_sequences`."""
    return [items[i] for i in split_sequences(len(items), split)]


class SFTDataset(Dataset):
    """Conversations for supervised fine-tuning: item i is {"input_ids": LongTensor(n), "labels": LongTensor(n)},
    n <= seq_len, labels -100 except on assistant content and its closing <|im_end|>. Records are validated when
    loaded and tokenized when read. `data=None`: the built-in dialogues; user data's val split is every 100th
    record (the last one when there are fewer than 100). `augment`: MiniMind-3's options (a system prompt added, empty
    thinking blocks kept or cut), drawn per record."""
    augment = Augment()  # by default none (frozen: shared safely)

    def __init__(self, data, tokenizer, seq_len: int, split: str = "train", skip_bad_records: bool = False,
                 augment: Augment | None = None):
        if data is None:
            from . import corpus

            self.records = [parse_conversation(r, f"built-in:{i}")
                            for i, r in enumerate(corpus.sft_conversations(split))]
        else:
            self.records = split_items(read_records(data, parse_conversation, skip_bad_records), split)
        self.tokenizer, self.seq_len, self.augment = tokenizer, seq_len, augment or self.augment

    def __len__(self):
        return len(self.records)

    def encode(self, i) -> tuple[list[int], list[int]]:
        messages = self.augment.system(self.records[i], i)
        return encode_chat(self.tokenizer, messages, self.seq_len, keep_empty_think=self.augment.keep_empty_think(i))

    def __getitem__(self, i):
        ids, labels = self.encode(i)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}

    def lengths(self) -> list[int]:
        """Each record's length in tokens (after truncation to seq_len), for batching by length."""
        return [len(self.encode(i)[0]) for i in range(len(self.records))]


class DPODataset(Dataset):
    """Preference pairs: item i is {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"},
    labels -100 except on the final assistant response and its <|im_end|>. `data=None`: the built-in pairs.
    `augment`: MiniMind-3's empty thinking blocks kept or cut, one draw for both sides of a pair (they differ only in
    the response)."""
    augment = Augment()  # by default none (frozen: shared safely)

    def __init__(self, data, tokenizer, seq_len: int, split: str = "train", skip_bad_records: bool = False,
                 augment: Augment | None = None):
        if data is None:
            from . import corpus

            self.pairs = [parse_pair(r, f"built-in:{i}") for i, r in enumerate(corpus.dpo_pairs(split))]
        else:
            self.pairs = split_items(read_records(data, parse_pair, skip_bad_records), split)
        self.tokenizer, self.seq_len, self.augment = tokenizer, seq_len, augment or self.augment

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        item = {}
        keep = self.augment.keep_empty_think(i)
        for side, messages in zip(("chosen", "rejected"), self.pairs[i]):
            ids, labels = encode_chat(self.tokenizer, messages, self.seq_len, only_last=True, keep_empty_think=keep)
            item[f"{side}_input_ids"], item[f"{side}_labels"] = torch.tensor(ids), torch.tensor(labels)
        return item


def collate(batch: list[dict], pad_id: int = 0) -> dict:
    """Stack a list of items into a batch, right-padding to the longest: `*input_ids` with pad_id, `*labels` with
    -100; adds `attention_mask` (1 = token, 0 = padding) for each `*input_ids` key (`chosen_attention_mask`...)."""
    out = {}
    for key in batch[0]:
        seqs = [item[key] for item in batch]
        lengths = [len(s) for s in seqs]
        if len(set(lengths)) == 1:
            out[key] = torch.stack(seqs)
        else:
            fill = -100 if key.endswith("labels") else pad_id if key.endswith("input_ids") else 0
            out[key] = torch.full((len(seqs), max(lengths)), fill, dtype=seqs[0].dtype)  # (B, T)
            for b, s in enumerate(seqs):
                out[key][b, : len(s)] = s
        if key.endswith("input_ids"):
            mask = torch.zeros(len(seqs), max(lengths), dtype=torch.long)
            for b, n in enumerate(lengths):
                mask[b, :n] = 1
            out[key[: -len("input_ids")] + "attention_mask"] = mask
    return out
