"""An on-disk cache of frozen text-encoder vectors, keyed by encoder fingerprint and text.

With a frozen backbone an item's vector depends only on the encoder and the item's text, so it is
computed once and read back on every later run (and by retraining, which then encodes only new or
changed texts). One folder per encoder fingerprint holds ``keys.npy`` (text digests) and
``vectors.npy``; both are replaced atomically, so a crash never leaves a broken cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


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

    def _load(self) -> tuple[np.ndarray, np.ndarray | None]:
        keys_path, vectors_path = self.directory / "keys.npy", self.directory / "vectors.npy"
        if not keys_path.exists() or not vectors_path.exists():
            return np.array([], dtype="<U40"), None
        try:
            keys, vectors = np.load(keys_path), np.load(vectors_path)
        except (OSError, ValueError):
            return np.array([], dtype="<U40"), None  # unreadable: recompute, then overwrite
        if len(keys) != len(vectors):
            return np.array([], dtype="<U40"), None
        return keys, vectors

    def _save(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, array in (("vectors", vectors), ("keys", keys)):
            tmp = self.directory / f".{name}.{os.getpid()}.tmp.npy"
            np.save(tmp, array)
            os.replace(tmp, self.directory / f"{name}.npy")

    def put(self, texts: list[str], vectors: np.ndarray) -> int:
        """Adds vectors computed elsewhere (a trained model's text table) for texts not cached yet;
        returns how many were added."""
        keys, cached = self._load()
        known = set(keys.tolist())
        new_keys, rows = [], []
        for i, text in enumerate(texts):
            key = text_key(text)
            if key not in known:
                known.add(key)
                new_keys.append(key)
                rows.append(i)
        if new_keys:
            add = np.asarray(vectors, np.float32)[rows]
            keys = np.concatenate([keys, np.array(new_keys)]) if len(keys) else np.array(new_keys)
            self._save(keys, add if cached is None else np.concatenate([cached, add]))
        return len(new_keys)

    def get(self, texts: list[str], compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Vectors for ``texts`` in order; ``compute`` is called once, on the texts not cached."""
        wanted = np.array([text_key(t) for t in texts])
        keys, vectors = self._load()
        row_of = {k: i for i, k in enumerate(keys)}
        missing = sorted({k for k in wanted if k not in row_of})
        self.stats.hits += int(sum(k in row_of for k in wanted))
        self.stats.misses += int(sum(k not in row_of for k in wanted))
        if missing:
            text_of = {}
            for key, text in zip(wanted, texts, strict=True):
                text_of.setdefault(key, text)
            new = np.asarray(compute([text_of[k] for k in missing]), dtype=np.float32)
            keys = np.concatenate([keys, np.array(missing)]) if len(keys) else np.array(missing)
            vectors = new if vectors is None else np.concatenate([vectors, new])
            self._save(keys, vectors)
            row_of = {k: i for i, k in enumerate(keys)}
        return vectors[[row_of[k] for k in wanted]]
