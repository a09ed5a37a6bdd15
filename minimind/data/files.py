"""Reading data files: a path, a folder searched recursively, or a glob such as `data/*.jsonl`.

Pretraining text: `.jsonl`/`.json` lines of `{"text": "..."}` (MiniMind's format); `.txt`, where documents are
separated by blank lines; `.parquet` with a string column `text`. Conversations and pairs: `.jsonl`/`.json` lines,
read as records by `read_records` and checked by a parser from `messages.py`.

Bad input stops with one line, `path:line: what is wrong; what was expected` (a `DataError`, a ValueError);
`skip_bad_records=True` turns record-level errors into one warning per file with the count skipped.
"""

import glob
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger("minimind")

TEXT_SUFFIXES = (".jsonl", ".json", ".txt", ".parquet")


CHAT_SUFFIXES = (".jsonl", ".json")


class DataError(ValueError):
    """Bad input data. The message is one line: `path:line: what is wrong; what was expected`."""


def data_error(where, problem: str, expected: str | None = None) -> DataError:
    """A `DataError` that says where (a file, `file:line`, a field), what is wrong, and what was expected."""
    return DataError(f"{where}: {problem}" + (f"; expected {expected}" if expected else ""))


# --- finding files ----------------------------------------------------------------------------------------------

def resolve_files(data: str | os.PathLike, suffixes=TEXT_SUFFIXES) -> list[Path]:
    """The files that `data` names (a file, a folder searched recursively, or a glob), sorted."""
    spec = str(data)
    wanted = ", ".join(suffixes)
    if any(c in spec for c in "*?["):
        matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not matches:
            raise data_error(spec, "the pattern matches no files")
        files = [p for p in matches if p.suffix.lower() in suffixes]
        if not files:
            raise data_error(spec, "the pattern matches no data files", f"files ending in {wanted}")
        return files
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise data_error(path, "no data files in this folder", f"files ending in {wanted}")
        return files
    if not path.exists():
        raise data_error(path, "no such file or directory")
    if path.suffix.lower() not in suffixes:
        raise data_error(path, f"unsupported file type '{path.suffix}'", f"a file ending in {wanted}")
    return [path]


# --- reading records --------------------------------------------------------------------------------------------

class BadRecords:
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
        raise data_error(path, "the file is empty", "one record per line" if path.suffix != ".txt" else "text")
    if b"\0" in head:
        raise data_error(path, "not a text file (it holds binary data)", "UTF-8 text")
    return open(path, "rb")


def keys_of(record: dict) -> str:
    """A record's keys for an error message, quoted as JSON (one line, whatever a key holds), or "none"."""
    return ", ".join(json.dumps(key, ensure_ascii=False) for key in record) or "none"


def jsonl_records(path: Path, bad: BadRecords) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each JSON object line; blank lines are skipped."""
    with _open_text(path) as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
                record = json.loads(text.removeprefix("\ufeff") if n == 1 else text)  # a byte order mark: Windows'
            except UnicodeDecodeError:
                bad(data_error(f"{path}:{n}", "not valid UTF-8", "UTF-8 text"))
                continue
            except json.JSONDecodeError as e:
                bad(data_error(f"{path}:{n}", f"malformed JSON ({e.msg} at column {e.colno})", "one JSON object per line"))
                continue
            except RecursionError:
                bad(data_error(f"{path}:{n}", "JSON nested too deep to read", "one JSON object per line"))
                continue
            except ValueError as e:  # e.g. an integer of more digits than Python converts
                bad(data_error(f"{path}:{n}", f"unreadable JSON ({e})", "one JSON object per line"))
                continue
            if not isinstance(record, dict):
                bad(data_error(f"{path}:{n}", f"a JSON {type(record).__name__}, not an object", "one JSON object per line"))
                continue
            yield n, record


def _txt_documents(path: Path, bad: BadRecords) -> Iterator[tuple[int, str]]:
    """(first line number, text) for each blank-line-separated block of a .txt file."""
    lines, start = [], 0
    with _open_text(path) as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad(data_error(f"{path}:{n}", "not valid UTF-8", "UTF-8 text"))
                continue
            if line.strip():
                start = start or n
                lines.append(line)
            elif lines:
                yield start, "".join(lines).rstrip("\n")
                lines, start = [], 0
    if lines:
        yield start, "".join(lines).rstrip("\n")


def _parquet_documents(path: Path, bad: BadRecords, column: str = "text") -> Iterator[tuple[int, str]]:
    """(row number, text) for each row of a Parquet file's `text` column, read in batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise data_error(path, f"not a Parquet file ({str(e).splitlines()[0]})", "a .parquet file") from None
    names = pf.schema_arrow.names
    if column not in names:
        raise data_error(path, f"no '{column}' column (columns: {', '.join(names)})", f"a string column named {column}")
    kind = pf.schema_arrow.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise data_error(path, f"column '{column}' holds {kind}", "strings")
    if pf.metadata.num_rows == 0:
        raise data_error(path, "the file is empty", "rows with a text column")
    row = 0
    for batch in pf.iter_batches(columns=[column], batch_size=4096):
        for text in batch.column(0).to_pylist():
            row += 1
            if text is None:
                bad(data_error(f"{path}:{row}", f"'{column}' is null", "a string"))
                continue
            yield row, text


def _jsonl_texts(path: Path, bad: BadRecords) -> Iterator[tuple[int, str]]:
    for n, record in jsonl_records(path, bad):
        if "text" not in record:
            bad(data_error(f"{path}:{n}", f'no "text" field (keys: {keys_of(record)})',
                       '{"text": "..."}'))
        elif not isinstance(record["text"], str):
            bad(data_error(f"{path}:{n}", f'"text" is a {type(record["text"]).__name__}', "a string"))
        else:
            yield n, record["text"]


def read_texts(data, skip_bad_records: bool = False) -> Iterator[str]:
    """Every pretraining document of `data` (file, folder or glob of .jsonl/.json/.txt/.parquet), in order."""
    readers = {".jsonl": _jsonl_texts, ".json": _jsonl_texts, ".txt": _txt_documents, ".parquet": _parquet_documents}
    for path in resolve_files(data, TEXT_SUFFIXES):
        bad = BadRecords(path, skip_bad_records)
        for _, text in readers[path.suffix.lower()](path, bad):
            yield text
        bad.report()


def read_records(data, parse, skip_bad_records: bool = False) -> list:
    """`parse(record, "path:line")` applied to every JSON line of `data`; bad records raise or are skipped."""
    out = []
    for path in resolve_files(data, CHAT_SUFFIXES):
        bad = BadRecords(path, skip_bad_records)
        for n, record in jsonl_records(path, bad):
            try:
                out.append(parse(record, f"{path}:{n}"))
            except DataError as e:
                bad(e)
        bad.report()
    if not out:
        raise data_error(data, "no usable records")
    return out
