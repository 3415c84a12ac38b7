"""An on-disk cache of frozen text-encoder vectors, keyed by encoder fingerprint and text.

With a frozen backbone an item's vector depends only on the encoder and the item's text, so it is
computed once and read back on every later run (and by retraining, which then encodes only new or
changed texts). One folder per encoder fingerprint holds segments, each a pair ``keys*.npy`` (text
digests) and ``vectors*.npy``: ``keys.npy``/``vectors.npy`` and one more pair per later write,
which appends only the new texts (``crossrec catalogue add`` of 10,000 items to a 1M-item cache
writes 10,000 rows, not 1M). A segment counts once its keys file is in place (written after its
vectors, each renamed into place whole), so a crash never leaves a broken cache; past
``MAX_SEGMENTS`` the next write merges them into one. Vectors are read memory-mapped.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

MAX_SEGMENTS = 16


def default_cache_dir() -> Path:
    return Path(os.environ.get("CROSSREC_CACHE", Path.home() / ".cache" / "crossrec")) / "text_vectors"


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class EmbeddingCache:
    def __init__(self, directory: str | Path | None, fingerprint: str):
        self.directory = Path(directory or default_cache_dir()) / fingerprint
        self.stats = CacheStats()

    def _segment_files(self) -> list[tuple[Path, Path]]:
        """(keys, vectors) of every complete segment, oldest first."""
        if not self.directory.is_dir():
            return []
        keys = sorted((p for p in self.directory.glob("keys*.npy") if not p.name.startswith(".")),
                      key=lambda p: (p.name != "keys.npy", p.name))
        pairs = [(k, k.with_name("vectors" + k.name[len("keys"):])) for k in keys]
        return [pair for pair in pairs if pair[1].exists()]

    def _load(self) -> tuple[pd.Index, list[tuple[np.ndarray, np.ndarray]], list[tuple[Path, Path]]]:
        """(every cached key, in segment order; each readable segment's (keys, vectors); every
        segment looked at). An unreadable or mismatched segment is skipped (its texts are computed
        again) and removed by the next merge."""
        segments, seen = [], []
        for keys_path, vectors_path in self._segment_files():
            seen.append((keys_path, vectors_path))
            try:
                k, v = np.load(keys_path), np.load(vectors_path, mmap_mode="r")
            except (OSError, ValueError):
                continue
            if len(k) == len(v) and (not segments or v.shape[1:] == segments[0][1].shape[1:]):
                segments.append((k, v))
        keys = np.concatenate([k for k, _ in segments]) if segments else np.array([], dtype="<U40")
        return pd.Index(keys), segments, seen

    def _append(self, keys: np.ndarray, vectors: np.ndarray, segments, seen: list[tuple[Path, Path]]) -> None:
        """Writes ``keys``/``vectors`` as a new segment, or, past ``MAX_SEGMENTS``, every segment
        read with them as one (the segments it replaces removed once it is in place)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if len(seen) + 1 > MAX_SEGMENTS:
            keys = np.concatenate([*(k for k, _ in segments), keys])
            vectors = np.concatenate([*(v for _, v in segments), vectors])
            suffix = ""
        else:
            suffix = f"-{time.time_ns():020d}-{os.getpid()}"
        for name, array in (("vectors", vectors), ("keys", keys)):  # keys last: the segment counts then
            tmp = self.directory / f".{name}{suffix}.{os.getpid()}.tmp.npy"
            np.save(tmp, array)
            os.replace(tmp, self.directory / f"{name}{suffix}.npy")
        if not suffix:
            for pair in seen:
                for path in pair:
                    if path.name not in ("keys.npy", "vectors.npy"):
                        path.unlink(missing_ok=True)

    @staticmethod
    def _rows(index: pd.Index, wanted) -> np.ndarray:
        """The row of each ``wanted`` key in ``index`` (its first, should a crash have left a key in
        two segments), -1 where it is not cached."""
        if index.is_unique:
            return index.get_indexer(wanted)
        first = ~index.duplicated(keep="first")
        found = pd.Index(index[first]).get_indexer(wanted)
        return np.where(found >= 0, np.flatnonzero(first)[np.maximum(found, 0)], -1)

    @staticmethod
    def _gather(segments, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *(segments[0][1].shape[1:] if segments else (0,))), np.float32)
        start = 0
        for _, segment in segments:
            inside = (rows >= start) & (rows < start + len(segment))
            out[inside] = segment[rows[inside] - start]
            start += len(segment)
        return out

    def put(self, texts: list[str], vectors: np.ndarray) -> int:
        """Adds vectors computed elsewhere (a trained model's text table) for texts not cached yet;
        returns how many were added."""
        index, segments, seen = self._load()
        keys = pd.Index([text_key(t) for t in texts])
        fresh = (self._rows(index, keys) < 0) & ~keys.duplicated(keep="first")
        if fresh.any():
            self._append(np.asarray(keys[fresh], dtype="<U40"), np.asarray(vectors, np.float32)[fresh], segments, seen)
        return int(fresh.sum())

    def get(self, texts: list[str], compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Vectors for ``texts`` in order; ``compute`` is called once, on the texts not cached."""
        wanted = pd.Index([text_key(t) for t in texts])
        index, segments, seen = self._load()
        rows = self._rows(index, wanted)
        self.stats.hits += int((rows >= 0).sum())
        self.stats.misses += int((rows < 0).sum())
        if (rows < 0).any():
            text_of = dict(zip(wanted[rows < 0], np.asarray(texts, dtype=object)[rows < 0], strict=True))
            missing = sorted(text_of)
            new = np.asarray(compute([text_of[k] for k in missing]), dtype=np.float32)
            added = np.array(missing, dtype="<U40")
            self._append(added, new, segments, seen)
            # the new rows follow every segment read (a merge keeps that order): no second read
            segments = [*segments, (added, new)]
            rows = np.where(rows >= 0, rows, len(index) + pd.Index(added).get_indexer(wanted))
        return self._gather(segments, rows)
