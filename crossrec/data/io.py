"""Reading and writing tables, keeping each row's file and position so errors can name them."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from crossrec import schema
from crossrec.errors import DataError, Problem

TABLE_SUFFIXES = (".parquet", ".csv", ".csv.gz", ".tsv", ".tsv.gz", ".jsonl", ".jsonl.gz",
                  ".json", ".json.gz")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(TABLE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


DEFAULT_CHUNK_ROWS = 1_000_000  # rows per chunk of a streamed table (~100 MB of strings)


def _checked_path(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(Problem(f"{what} file not found", file=str(path),
                                fix="check the path (relative paths are resolved against the config file's folder)"))
    if path.is_dir():
        raise DataError(Problem(f"expected a {what} file, got a directory", file=str(path)))
    if path.stat().st_size == 0:
        raise DataError(Problem(f"{what} file is empty", file=str(path),
                                fix="write a header row and at least one data row"))
    return path


def _is_text(path: Path, csv_options: dict) -> bool:
    return _suffix(path) in (".csv", ".csv.gz", ".tsv", ".tsv.gz") or bool(csv_options)


def _parsed(path: Path, what: str, chunk_rows: int | None, csv_options: dict) -> Iterator[pd.DataFrame]:
    """The file's rows as DataFrames of at most ``chunk_rows`` rows (``None``: one frame)."""
    suffix = _suffix(path)
    if suffix == ".parquet":
        import pyarrow.dataset as ds

        if chunk_rows is None:
            yield pq.read_table(path).to_pandas()
            return
        # no read-ahead: one row group decoded at a time (the default scanner buffers 16 batches)
        for batch in ds.dataset(path, format="parquet").to_batches(batch_size=chunk_rows, batch_readahead=0,
                                                                    fragment_readahead=0):
            yield pa.Table.from_batches([batch]).to_pandas()
        return
    if _is_text(path, csv_options):
        options = {"dtype": str, "keep_default_na": False, "na_values": [""]}
        if suffix.startswith(".tsv"):
            options["sep"] = "\t"
        options.update(csv_options)
        if chunk_rows is None:
            yield pd.read_csv(path, **options)
        else:
            yield from pd.read_csv(path, chunksize=chunk_rows, **options)
        return
    if suffix in (".jsonl", ".jsonl.gz", ".json", ".json.gz"):
        yield from _read_json(path, what, chunk_rows)
        return
    raise DataError(Problem(
        f"unsupported {what} file type '{suffix or path.name}'", file=str(path),
        fix="use .parquet, .csv, .csv.gz, .tsv or .jsonl (optionally .gz)"))


def _read_errors(path: Path, what: str, frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``frames``, with a parser's failure turned into a ``DataError`` naming the file."""
    try:
        yield from frames
    except DataError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError, EOFError, zlib.error,
            pa.ArrowException, UnicodeDecodeError) as exc:  # EOFError, zlib.error: a truncated .gz
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(Problem(f"cannot read {what} file: {reason}", file=str(path),
                                fix="check that the file is complete and in the format its name says")) from None


class TableChunks:
    """One table file read in chunks of at most ``chunk_rows`` rows, for files too large to hold
    as text: each chunk is a DataFrame of the file's columns plus the bookkeeping columns, its
    row numbers continuing the previous chunk's. The first chunk is read at construction (an
    unreadable file fails there, and ``columns`` are known); iterate once."""

    def __init__(self, path: str | Path, *, what: str, chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
                 **csv_options):
        self.path = _checked_path(path, what)
        self.what = what
        self._chunks = self._numbered(chunk_rows, csv_options)
        self._first = next(self._chunks, None)
        if self._first is None:
            raise DataError(Problem(f"{what} file has no data rows", file=str(self.path),
                                    fix="add at least one row below the header"))
        self.columns = list(self._first.columns)

    def _numbered(self, chunk_rows: int | None, csv_options: dict) -> Iterator[pd.DataFrame]:
        text = _is_text(self.path, csv_options)
        header_lines = int(text and csv_options.get("header", "infer") is not None)
        done = 0
        for frame in _read_errors(self.path, self.what, _parsed(self.path, self.what, chunk_rows, csv_options)):
            if frame.empty:
                continue
            frame = frame.reset_index(drop=True)
            frame.columns = [str(c) for c in frame.columns]
            rows = pd.RangeIndex(done + 1, done + len(frame) + 1)
            frame[schema.SOURCE_FILE] = pd.Categorical.from_codes(  # not from a list: 300 MB per 1M rows
                np.zeros(len(frame), dtype=np.int8), categories=[str(self.path)])
            frame[schema.SOURCE_ROW] = rows
            if _suffix(self.path) != ".parquet":  # text: the line a reader's editor shows
                frame[schema.SOURCE_LINE] = rows + header_lines
            done += len(frame)
            yield frame

    def __iter__(self) -> Iterator[pd.DataFrame]:
        if self._first is None:
            raise RuntimeError(f"{self.path} was already read: TableChunks can be iterated once")
        first, self._first = self._first, None
        yield first
        yield from self._chunks


def read_table(path: str | Path, *, what: str, **csv_options) -> pd.DataFrame:
    """Reads Parquet, CSV(.gz), TSV or JSON Lines into one DataFrame of the file's columns plus
    the bookkeeping columns ``schema.SOURCE_FILE/ROW/LINE``. Text formats are read as strings
    so that validation, not the parser, decides what a bad value is. ``what`` names the table
    in errors ("interactions", "items", ...). ``TableChunks`` reads the same in chunks."""
    frames = list(TableChunks(path, what=what, chunk_rows=None, **csv_options))
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _read_json(path: Path, what: str, chunk_rows: int | None) -> Iterator[pd.DataFrame]:
    """JSON Lines (one object per line, in chunks), or one JSON array of objects (a ``.json``
    file, read whole)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        first = handle.read(4096).lstrip()[:1]
    if first == "[":
        with opener(path, "rt", encoding="utf-8") as handle:
            records = json.load(handle)
        bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
        if bad is not None:
            raise DataError(Problem(f"{what} file: element {bad + 1} of the JSON array is not an object",
                                    file=str(path), row=bad + 1,
                                    fix="write one object per row, e.g. [{\"user_id\": \"u1\", ...}, ...]"))
        yield pd.DataFrame.from_records(records).astype(object)
        return
    if chunk_rows is None:
        frames = [pd.read_json(path, lines=True, dtype=False)]
    else:
        frames = pd.read_json(path, lines=True, dtype=False, chunksize=chunk_rows)
    for frame in frames:
        if len(frame.columns) and not all(isinstance(c, str) for c in frame.columns):
            raise DataError(Problem(f"{what} file: each line must be a JSON object naming its columns",
                                    file=str(path), fix="write one object per line, e.g. {\"user_id\": \"u1\", ...}"))
        yield frame


def without_bookkeeping(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in schema.BOOKKEEPING if c in frame.columns])


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Writes one table; the format follows the file name (.parquet, .csv, .csv.gz)."""
    frame = without_bookkeeping(frame)
    if _suffix(path) == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)


@contextmanager
def atomic_directory(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary directory beside ``target`` and renames it into place on success,
    so a reader never sees a half-written result and a crash leaves nothing behind."""
    target = Path(target)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} exists and is not empty; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (no bytes copied) where the file system allows,
    else a copy. Only for a ``source`` that is never rewritten in place (a training state in the
    store, a finished run's file): both names are one file."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
