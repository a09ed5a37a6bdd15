"""Tokens: tokenizing a corpus, caching the stream, packing it into sequences, and prepared shards.

Pretraining packs: every document becomes `<|im_start|> text <|im_end|>`, the documents are concatenated into one
token stream, and the stream is cut into sequences of exactly `seq_len` tokens (no padding; the final partial
sequence is dropped). For user data the validation split is every 100th packed sequence (index % 100 == 99), or
the last sequence when there are fewer than 100. The tokenized stream is cached (`MINIMIND_CACHE`, default
`~/.cache/minimind`) under a key made of the content and the tokenizer, so a second run starts at once.

`minimind data prepare` (`prepare_shards`) tokenizes a corpus once into flat uint16 (uint32 for vocabularies over
65,536) token files `shard-00000.bin`, ... plus `index.json` (tokenizer hash, counts), read back memory-mapped.
"""

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from ..io import atomic_write
from ..tokenizer import tokenizer_hash
from .files import data_error, read_texts

logger = logging.getLogger("minimind")

SHARD_FORMAT = "minimind-shards"


SPLITS = ("train", "val")


CACHE_VERSION = 1  # bump when the tokenized stream's layout changes


# --- tokenizing, packing, caching -------------------------------------------------------------------------------

def token_dtype(tokenizer):
    return np.uint16 if len(tokenizer) <= 2**16 else np.uint32


def tokenize_documents(texts: list[str], tokenizer) -> np.ndarray:
    """[bos, *ids, eos] for each text, concatenated; a batch of texts is encoded in parallel (Rust threads)."""
    dtype = token_dtype(tokenizer)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    encodings = tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    parts = [np.array(bos + e.ids + eos, dtype=dtype) for e in encodings]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _batches(texts, size: int):
    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenize_stream(texts, tokenizer, batch_docs: int = 512) -> tuple[np.ndarray, dict]:
    """Tokenize an iterable of documents into one token array, and count documents / characters / tokens."""
    parts, docs, chars = [], 0, 0
    for batch in _batches(texts, batch_docs):
        parts.append(tokenize_documents(batch, tokenizer))
        docs += len(batch)
        chars += sum(len(t) for t in batch)
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=token_dtype(tokenizer))
    return tokens, {"documents": docs, "characters": chars, "tokens": len(tokens)}


def cache_root(path=None) -> Path:
    """Where tokenized streams are cached: `path`, else $MINIMIND_CACHE, else ~/.cache/minimind."""
    return Path(path or os.environ.get("MINIMIND_CACHE") or Path.home() / ".cache" / "minimind")


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _cached_tokens(key_parts, build, directory) -> tuple[np.ndarray, dict]:
    """The (tokens, counts) that `build()` makes, stored as `tokens-KEY.npy` + `.json` and memory-mapped back."""
    if directory is False:
        return build()
    key = hashlib.sha256(repr((CACHE_VERSION, *key_parts)).encode()).hexdigest()[:24]
    root = cache_root(directory)
    npy, meta = root / f"tokens-{key}.npy", root / f"tokens-{key}.json"
    if npy.is_file() and meta.is_file():
        try:
            return np.load(npy, mmap_mode="r"), json.loads(meta.read_text())
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt
    tokens, counts = build()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with atomic_write(npy) as tmp, open(tmp, "wb") as f:
            np.save(f, tokens)
        with atomic_write(meta) as tmp:
            tmp.write_text(json.dumps(counts))
    except OSError as e:
        logger.warning(f"could not write the token cache in {root} ({e}); continuing without it")
    return tokens, counts


def split_sequences(n: int, split: str) -> np.ndarray:
    """Indices of the packed sequences in `split`: val is every 100th (i % 100 == 99), or the last one when there
    are fewer than 100 (and at least 2); train is the rest."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    index = np.arange(n)
    val = index % 100 == 99 if n >= 100 else (index == n - 1) & (n >= 2)
    return index[val] if split == "val" else index[~val]


class TokenStream:
    """One logical token stream over one or more arrays (in memory or memory-mapped shards)."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = [a for a in arrays if len(a)]
        self.starts = np.cumsum([0] + [len(a) for a in self.arrays])  # start offset of each array, then the end

    def __len__(self):
        return int(self.starts[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as int64, across array boundaries."""
        out = []
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop:
            a, offset = self.arrays[i], int(self.starts[i])
            piece = a[start - offset: min(stop - offset, len(a))]
            out.append(piece)
            start += len(piece)
            i += 1
        return np.concatenate(out).astype(np.int64) if len(out) > 1 else out[0].astype(np.int64)


# --- shards -----------------------------------------------------------------------------------------------------

def is_shard_dir(path) -> bool:
    index = Path(path) / "index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("format") == SHARD_FORMAT
    except (OSError, ValueError):
        return False


def prepare_shards(data, tokenizer, out_dir, shard_tokens: int = 2**28, skip_bad_records: bool = False,
                   batch_docs: int = 1024) -> dict:
    """Tokenize `data` once into `out_dir/shard-NNNNN.bin` (flat token ids, documents wrapped in bos/eos, never split
    across shards, about `shard_tokens` tokens each) and `out_dir/index.json`. Returns the index."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shard-*.bin"):
        old.unlink()
    (out / "index.json").unlink(missing_ok=True)
    dtype = token_dtype(tokenizer)
    shards, f = [], None  # f: the open shard file, None between shards
    totals = {"documents": 0, "characters": 0, "tokens": 0}
    try:
        for batch in _batches(read_texts(data, skip_bad_records), batch_docs):
            tokens = tokenize_documents(batch, tokenizer)
            if f is None:
                shards.append({"file": f"shard-{len(shards):05d}.bin", "documents": 0, "tokens": 0})
                f = open(out / shards[-1]["file"], "wb")  # noqa: SIM115 (closed below or in finally)
            tokens.tofile(f)
            for counts in (shards[-1], totals):
                counts["documents"] += len(batch)
                counts["tokens"] += len(tokens)
            totals["characters"] += sum(len(t) for t in batch)
            if shards[-1]["tokens"] >= shard_tokens:
                f.close()
                f = None
    finally:
        if f is not None:
            f.close()
    if not totals["tokens"]:
        raise data_error(data, "no documents found", "text in the files")
    index = {"format": SHARD_FORMAT, "version": 1, "tokenizer_hash": tokenizer_hash(tokenizer),
             "vocab_size": len(tokenizer), "dtype": np.dtype(dtype).name, "bos_token_id": tokenizer.bos_token_id,
             "eos_token_id": tokenizer.eos_token_id, "source": str(data), **totals, "shards": shards}
    with atomic_write(out / "index.json") as tmp:  # written last: its presence means the shards are complete
        tmp.write_text(json.dumps(index, indent=2) + "\n")
    return index


def load_shards(path, tokenizer=None) -> tuple[TokenStream, dict]:
    """The memory-mapped token stream of a prepared shard folder, checked against `tokenizer`."""
    path = Path(path)
    index = json.loads((path / "index.json").read_text())
    if tokenizer is not None and index["tokenizer_hash"] != tokenizer_hash(tokenizer):
        raise data_error(path / "index.json", f"the shards were prepared with another tokenizer "
                                          f"(hash {index['tokenizer_hash']}, this one is {tokenizer_hash(tokenizer)})",
                     "shards made with this tokenizer: re-run `minimind data prepare` with it")
    arrays = []
    for shard in index["shards"]:
        file = path / shard["file"]
        if not file.is_file():
            raise data_error(file, "shard file missing", "the files listed in index.json")
        arr = np.memmap(file, dtype=index["dtype"], mode="r")
        if len(arr) != shard["tokens"]:
            raise data_error(file, f"holds {len(arr)} tokens, index.json says {shard['tokens']}",
                         "an intact shard: re-run `minimind data prepare`")
        arrays.append(arr)
    return TokenStream(arrays), index
