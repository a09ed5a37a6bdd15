"""Data: read every supported format, tokenize, pack, shard, and batch it for pretraining, SFT and DPO.

Formats (a path, a folder searched recursively, or a glob such as `data/*.jsonl`):
- pretraining: `.jsonl`/`.json` lines of `{"text": "..."}` (MiniMind's format); `.txt`, where documents are
  separated by blank lines; `.parquet` with a string column `text`; or a folder of prepared shards.
- SFT (`.jsonl`/`.json` lines): MiniMind's `{"conversations": [{"role", "content"}, ...]}` or OpenAI's
  `{"messages": [...]}`, roles system / user / assistant.
- DPO (`.jsonl`/`.json` lines): `{"chosen": [messages], "rejected": [messages]}` (both ending with the assistant
  response), or `{"prompt": "...", "chosen": "...", "rejected": "..."}` strings.
With `data=None` each dataset uses the built-in corpus (`minimind.corpus`) and its fixed train / val split.

Pretraining packs: every document becomes `<|im_start|> text <|im_end|>`, the documents are concatenated into one
token stream, and the stream is cut into sequences of exactly `seq_len` tokens (no padding; the final partial
sequence is dropped). For user data the validation split is every 100th packed sequence (index % 100 == 99), or
the last sequence when there are fewer than 100. The tokenized stream is cached (`MINIMIND_CACHE`, default
`~/.cache/minimind`) under a key made of the content and the tokenizer, so a second run starts at once.

`minimind data prepare` (`prepare_shards`) tokenizes a corpus once into flat uint16 (uint32 for vocabularies over
65,536) token files `shard-00000.bin`, ... plus `index.json` (tokenizer hash, counts); `PretrainDataset` reads
them memory-mapped. `StreamingPretrainDataset` reads corpora larger than memory.

SFT and DPO render conversations with the tokenizer's chat template. Labels are -100 everywhere except the
assistant's content and its closing `<|im_end|>` (SFT: every assistant turn; DPO: the final response). A
conversation longer than `seq_len` loses whole turns (SFT: from the end; DPO: the oldest exchanges) before any
turn is cut. `collate` pads to the longest in the batch.

Bad input stops with one line, `path:line: what is wrong; what was expected` (a `DataError`, a ValueError);
`skip_bad_records=True` turns record-level errors into one warning per file with the count skipped.
"""

import glob
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from .tokenizer import ROLES, tokenizer_hash

logger = logging.getLogger("minimind")

TEXT_SUFFIXES = (".jsonl", ".json", ".txt", ".parquet")
CHAT_SUFFIXES = (".jsonl", ".json")
SHARD_FORMAT = "minimind-shards"
SPLITS = ("train", "val")
CACHE_VERSION = 1  # bump when the tokenized stream's layout changes


class DataError(ValueError):
    """Bad input data. The message is one line: `path:line: what is wrong; what was expected`."""


def _error(where, problem: str, expected: str | None = None) -> DataError:
    return DataError(f"{where}: {problem}" + (f"; expected {expected}" if expected else ""))


# --- finding files ----------------------------------------------------------------------------------------------

def resolve_files(data: str | os.PathLike, suffixes=TEXT_SUFFIXES) -> list[Path]:
    """The files that `data` names (a file, a folder searched recursively, or a glob), sorted."""
    spec = str(data)
    wanted = ", ".join(suffixes)
    if any(c in spec for c in "*?["):
        matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not matches:
            raise _error(spec, "the pattern matches no files")
        files = [p for p in matches if p.suffix.lower() in suffixes]
        if not files:
            raise _error(spec, "the pattern matches no data files", f"files ending in {wanted}")
        return files
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise _error(path, "no data files in this folder", f"files ending in {wanted}")
        return files
    if not path.exists():
        raise _error(path, "no such file or directory")
    if path.suffix.lower() not in suffixes:
        raise _error(path, f"unsupported file type '{path.suffix}'", f"a file ending in {wanted}")
    return [path]


# --- reading records --------------------------------------------------------------------------------------------

class _BadRecords:
    """Record-level errors of one file: raised, or (skip=True) counted and reported once as a warning."""

    def __init__(self, path, skip: bool):
        self.path, self.skip, self.count, self.first = path, skip, 0, None

    def __call__(self, error: DataError):
        if not self.skip:
            raise error
        self.count += 1
        self.first = self.first or str(error)

    def report(self):
        if self.count:
            logger.warning(f"{self.path}: skipped {self.count} bad record{'s' if self.count > 1 else ''} "
                           f"(first: {self.first})")


def _open_text(path: Path):
    """Open a text file for reading lines as bytes, after checking that it is non-empty text."""
    with open(path, "rb") as f:
        head = f.read(8192)
    if not head.strip():
        raise _error(path, "the file is empty", "one record per line" if path.suffix != ".txt" else "text")
    if b"\0" in head:
        raise _error(path, "not a text file (it holds binary data)", "UTF-8 text")
    return open(path, "rb")


def _jsonl_records(path: Path, bad: _BadRecords) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each JSON object line; blank lines are skipped."""
    with _open_text(path) as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                bad(_error(f"{path}:{n}", "not valid UTF-8", "UTF-8 text"))
                continue
            except json.JSONDecodeError as e:
                bad(_error(f"{path}:{n}", f"malformed JSON ({e.msg} at column {e.colno})", "one JSON object per line"))
                continue
            if not isinstance(record, dict):
                bad(_error(f"{path}:{n}", f"a JSON {type(record).__name__}, not an object", "one JSON object per line"))
                continue
            yield n, record


def _txt_documents(path: Path, bad: _BadRecords) -> Iterator[tuple[int, str]]:
    """(first line number, text) for each blank-line-separated block of a .txt file."""
    lines, start = [], 0
    with _open_text(path) as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad(_error(f"{path}:{n}", "not valid UTF-8", "UTF-8 text"))
                continue
            if line.strip():
                start = start or n
                lines.append(line)
            elif lines:
                yield start, "".join(lines).rstrip("\n")
                lines, start = [], 0
    if lines:
        yield start, "".join(lines).rstrip("\n")


def _parquet_documents(path: Path, bad: _BadRecords, column: str = "text") -> Iterator[tuple[int, str]]:
    """(row number, text) for each row of a Parquet file's `text` column, read in batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise _error(path, f"not a Parquet file ({str(e).splitlines()[0]})", "a .parquet file") from None
    names = pf.schema_arrow.names
    if column not in names:
        raise _error(path, f"no '{column}' column (columns: {', '.join(names)})", f"a string column named {column}")
    kind = pf.schema_arrow.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise _error(path, f"column '{column}' holds {kind}", "strings")
    if pf.metadata.num_rows == 0:
        raise _error(path, "the file is empty", "rows with a text column")
    row = 0
    for batch in pf.iter_batches(columns=[column], batch_size=4096):
        for text in batch.column(0).to_pylist():
            row += 1
            if text is None:
                bad(_error(f"{path}:{row}", f"'{column}' is null", "a string"))
                continue
            yield row, text


def _jsonl_texts(path: Path, bad: _BadRecords) -> Iterator[tuple[int, str]]:
    for n, record in _jsonl_records(path, bad):
        if "text" not in record:
            bad(_error(f"{path}:{n}", f'no "text" field (keys: {", ".join(record) or "none"})',
                       '{"text": "..."}'))
        elif not isinstance(record["text"], str):
            bad(_error(f"{path}:{n}", f'"text" is a {type(record["text"]).__name__}', "a string"))
        else:
            yield n, record["text"]


def read_texts(data, skip_bad_records: bool = False) -> Iterator[str]:
    """Every pretraining document of `data` (file, folder or glob of .jsonl/.json/.txt/.parquet), in order."""
    readers = {".jsonl": _jsonl_texts, ".json": _jsonl_texts, ".txt": _txt_documents, ".parquet": _parquet_documents}
    for path in resolve_files(data, TEXT_SUFFIXES):
        bad = _BadRecords(path, skip_bad_records)
        for _, text in readers[path.suffix.lower()](path, bad):
            yield text
        bad.report()


def _content(value):
    """A message's content: a string, or OpenAI's list of {"type": "text", "text": ...} parts joined."""
    if isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    return value


def _messages(value, where: str, field: str) -> list[dict]:
    """Validate a list of {"role", "content"} messages; returns clean {"role", "content"} dicts."""
    if not isinstance(value, list) or not value:
        raise _error(where, f'"{field}" is not a non-empty list', '[{"role": ..., "content": "..."}, ...]')
    messages = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise _error(where, f'"{field}" message {i} is not a {{"role", "content"}} object',
                         '{"role": "user" | "assistant" | "system", "content": "..."}')
        if m["role"] not in ROLES:
            raise _error(where, f'"{field}" message {i} has unknown role {m["role"]!r}', "system, user or assistant")
        content = _content(m["content"])
        if not isinstance(content, str):
            raise _error(where, f'"{field}" message {i} content is a {type(content).__name__}', "a string")
        messages.append({"role": m["role"], "content": content})
    return messages


def parse_conversation(record: dict, where: str) -> list[dict]:
    """The messages of an SFT record ({"conversations": [...]} or {"messages": [...]}); DataError if invalid."""
    field = "conversations" if "conversations" in record else "messages" if "messages" in record else None
    if field is None:
        raise _error(where, f'no "conversations" or "messages" field (keys: {", ".join(record) or "none"})',
                     '{"conversations": [{"role": ..., "content": ...}, ...]}')
    messages = _messages(record[field], where, field)
    if not any(m["role"] == "assistant" for m in messages):
        raise _error(where, "no assistant message, nothing to learn", 'at least one {"role": "assistant", ...}')
    return messages


def parse_pair(record: dict, where: str) -> tuple[list[dict], list[dict]]:
    """(chosen messages, rejected messages) of a DPO record, each ending with the assistant response."""
    if "chosen" not in record or "rejected" not in record:
        raise _error(where, f'no "chosen" and "rejected" fields (keys: {", ".join(record) or "none"})',
                     '{"chosen": [messages], "rejected": [messages]} or {"prompt", "chosen", "rejected"}')
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    elif prompt is not None:
        prompt = _messages(prompt, where, "prompt")
    sides = []
    for field in ("chosen", "rejected"):
        value = record[field]
        if isinstance(value, str):
            if prompt is None:
                raise _error(where, f'"{field}" is a string but there is no "prompt"',
                             '{"prompt": "...", "chosen": "...", "rejected": "..."}')
            messages = prompt + [{"role": "assistant", "content": value}]
        else:
            messages = (prompt or []) + _messages(value, where, field)
        if messages[-1]["role"] != "assistant":
            raise _error(where, f'"{field}" does not end with an assistant message', "the response last")
        sides.append(messages)
    return sides[0], sides[1]


def read_records(data, parse, skip_bad_records: bool = False) -> list:
    """`parse(record, "path:line")` applied to every JSON line of `data`; bad records raise or are skipped."""
    out = []
    for path in resolve_files(data, CHAT_SUFFIXES):
        bad = _BadRecords(path, skip_bad_records)
        for n, record in _jsonl_records(path, bad):
            try:
                out.append(parse(record, f"{path}:{n}"))
            except DataError as e:
                bad(e)
        bad.report()
    if not out:
        raise _error(data, "no usable records")
    return out


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
        tmp = root / f".tokens-{key}.{os.getpid()}.npy"
        np.save(tmp, tokens)
        os.replace(tmp, npy)
        meta.write_text(json.dumps(counts))
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
        raise _error(data, "no documents found", "text in the files")
    index = {"format": SHARD_FORMAT, "version": 1, "tokenizer_hash": tokenizer_hash(tokenizer),
             "vocab_size": len(tokenizer), "dtype": np.dtype(dtype).name, "bos_token_id": tokenizer.bos_token_id,
             "eos_token_id": tokenizer.eos_token_id, "source": str(data), **totals, "shards": shards}
    tmp = out / "index.json.tmp"
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, out / "index.json")  # written last: its presence means the shards are complete
    return index


def load_shards(path, tokenizer=None) -> tuple[TokenStream, dict]:
    """The memory-mapped token stream of a prepared shard folder, checked against `tokenizer`."""
    path = Path(path)
    index = json.loads((path / "index.json").read_text())
    if tokenizer is not None and index["tokenizer_hash"] != tokenizer_hash(tokenizer):
        raise _error(path / "index.json", f"the shards were prepared with another tokenizer "
                                          f"(hash {index['tokenizer_hash']}, this one is {tokenizer_hash(tokenizer)})",
                     "shards made with this tokenizer: re-run `minimind data prepare` with it")
    arrays = []
    for shard in index["shards"]:
        file = path / shard["file"]
        if not file.is_file():
            raise _error(file, "shard file missing", "the files listed in index.json")
        arr = np.memmap(file, dtype=index["dtype"], mode="r")
        if len(arr) != shard["tokens"]:
            raise _error(file, f"holds {len(arr)} tokens, index.json says {shard['tokens']}",
                         "an intact shard: re-run `minimind data prepare`")
        arrays.append(arr)
    return TokenStream(arrays), index


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
                raise _error(data, f"only {len(self.stream)} tokens, less than one sequence of {seq_len}",
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


# --- SFT and DPO ------------------------------------------------------------------------------------------------

def _render(tokenizer, messages: list[dict], only_last: bool) -> tuple[list[int], list[int]]:
    """Token ids of the chat-template rendering, and labels: the ids on assistant content + closing eos, else -100."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    eos = tokenizer.eos_token or ""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    spans, pos = [], 0  # character spans [start, end) to learn, in order
    for i, m in enumerate(messages):
        start = text.find(m["content"], pos)
        if start < 0:
            raise ValueError("the chat template changes message contents; cannot locate the assistant turns")
        end = pos = start + len(m["content"])
        if m["role"] == "assistant" and (i == last or not only_last):
            if eos and text.startswith(eos, end):
                end += len(eos)
            spans.append((start, end))
    labels, s = [-100] * len(ids), 0
    for j, (a, b) in enumerate(offsets):  # a token is learnt when it overlaps a span
        while s < len(spans) and spans[s][1] <= a:
            s += 1
        if s < len(spans) and a < spans[s][1] and b > spans[s][0]:
            labels[j] = ids[j]
    return ids, labels


def encode_chat(tokenizer, messages: list[dict], seq_len: int, only_last: bool = False):
    """(input_ids, labels) of a conversation, at most seq_len tokens. Too long: whole turns go first (SFT, only_last
    False: turns after an assistant reply, from the end; DPO, only_last True: the oldest exchanges after any system
    message); if even the shortest such conversation does not fit, it is cut to seq_len tokens, keeping its start
    when that holds learnt tokens and its end otherwise."""
    ids, labels = _render(tokenizer, messages, only_last)
    if len(ids) <= seq_len:
        return ids, labels
    if only_last:
        system = [m for m in messages[:1] if m["role"] == "system"]
        starts = [k for k in range(len(system) + 1, len(messages)) if messages[k]["role"] == "user"]
        candidates = [system + messages[k:] for k in starts]
    else:
        ends = [k + 1 for k in range(len(messages) - 1) if messages[k]["role"] == "assistant"]
        candidates = [messages[:k] for k in reversed(ends)]
    for shorter in candidates:
        ids, labels = _render(tokenizer, shorter, only_last)
        if len(ids) <= seq_len:
            return ids, labels
    if any(x != -100 for x in labels[:seq_len]):
        return ids[:seq_len], labels[:seq_len]
    return ids[-seq_len:], labels[-seq_len:]


def _user_split(items: list, split: str) -> list:
    return [items[i] for i in split_sequences(len(items), split)]


class SFTDataset(Dataset):
    """Conversations for supervised fine-tuning: item i is {"input_ids": LongTensor(n), "labels": LongTensor(n)},
    n <= seq_len, labels -100 except on assistant content and its closing <|im_end|>. Records are validated when
    loaded and tokenized when read. `data=None`: the built-in dialogues; user data's val split is every 100th
    record (the last one when there are fewer than 100)."""

    def __init__(self, data, tokenizer, seq_len: int, split: str = "train", skip_bad_records: bool = False):
        if data is None:
            from . import corpus

            self.records = [parse_conversation(r, f"built-in:{i}")
                            for i, r in enumerate(corpus.sft_conversations(split))]
        else:
            self.records = _user_split(read_records(data, parse_conversation, skip_bad_records), split)
        self.tokenizer, self.seq_len = tokenizer, seq_len

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        ids, labels = encode_chat(self.tokenizer, self.records[i], self.seq_len)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}


class DPODataset(Dataset):
    """Preference pairs: item i is {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"},
    labels -100 except on the final assistant response and its <|im_end|>. `data=None`: the built-in pairs."""

    def __init__(self, data, tokenizer, seq_len: int, split: str = "train", skip_bad_records: bool = False):
        if data is None:
            from . import corpus

            self.pairs = [parse_pair(r, f"built-in:{i}") for i, r in enumerate(corpus.dpo_pairs(split))]
        else:
            self.pairs = _user_split(read_records(data, parse_pair, skip_bad_records), split)
        self.tokenizer, self.seq_len = tokenizer, seq_len

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        item = {}
        for side, messages in zip(("chosen", "rejected"), self.pairs[i]):
            ids, labels = encode_chat(self.tokenizer, messages, self.seq_len, only_last=True)
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
