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


def read_table(path: str | Path, *, what: str, **csv_options) -> pd.DataFrame:
    """Reads Parquet, CSV(.gz), TSV or JSON Lines into a DataFrame of the file's columns plus
    the bookkeeping columns ``schema.SOURCE_FILE/ROW/LINE``. Text formats are read as strings
    so that validation, not the parser, decides what a bad value is. ``what`` names the table
    in errors ("interactions", "items", ...)."""
    path = Path(path)
    if not path.exists():
        raise DataError(Problem(f"{what} file not found", file=str(path),
                                fix="check the path (relative paths are resolved against the config file's folder)"))
    if path.is_dir():
        raise DataError(Problem(f"expected a {what} file, got a directory", file=str(path)))
    if path.stat().st_size == 0:
        raise DataError(Problem(f"{what} file is empty", file=str(path),
                                fix="write a header row and at least one data row"))
    suffix = _suffix(path)
    header_lines = 0
    try:
        if suffix == ".parquet":
            frame = pq.read_table(path).to_pandas()
        elif suffix in (".csv", ".csv.gz", ".tsv", ".tsv.gz") or csv_options:
            options = {"dtype": str, "keep_default_na": False, "na_values": [""]}
            if suffix.startswith(".tsv"):
                options["sep"] = "\t"
            options.update(csv_options)
            header_lines = 0 if options.get("header", "infer") is None else 1
            frame = pd.read_csv(path, **options)
        elif suffix in (".jsonl", ".jsonl.gz", ".json", ".json.gz"):
            frame = _read_json(path, what)
        else:
            raise DataError(Problem(
                f"unsupported {what} file type '{suffix or path.name}'", file=str(path),
                fix="use .parquet, .csv, .csv.gz, .tsv or .jsonl (optionally .gz)"))
    except DataError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError, EOFError, zlib.error,
            pa.ArrowException, UnicodeDecodeError) as exc:  # EOFError, zlib.error: a truncated .gz
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(Problem(f"cannot read {what} file: {reason}", file=str(path),
                                fix="check that the file is complete and in the format its name says")) from None
    if frame.empty:
        raise DataError(Problem(f"{what} file has no data rows", file=str(path),
                                fix="add at least one row below the header"))
    frame = frame.reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    rows = pd.RangeIndex(1, len(frame) + 1)
    frame[schema.SOURCE_FILE] = pd.Categorical([str(path)] * len(frame))
    frame[schema.SOURCE_ROW] = rows
    if suffix != ".parquet":
        frame[schema.SOURCE_LINE] = rows + header_lines
    return frame


def _read_json(path: Path, what: str) -> pd.DataFrame:
    """JSON Lines (one object per line), or one JSON array of objects (a ``.json`` file)."""
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
        return pd.DataFrame.from_records(records).astype(object)
    frame = pd.read_json(path, lines=True, dtype=False)
    if len(frame.columns) and not all(isinstance(c, str) for c in frame.columns):
        raise DataError(Problem(f"{what} file: each line must be a JSON object naming its columns",
                                file=str(path), fix="write one object per line, e.g. {\"user_id\": \"u1\", ...}"))
    return frame


def read_tables(paths: list[str | Path], *, what: str, **csv_options) -> pd.DataFrame:
    """Reads several files of the same table and stacks them (bookkeeping kept per file)."""
    frames = [read_table(p, what=what, **csv_options) for p in paths]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


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
