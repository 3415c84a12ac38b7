"""Item text as the towers read it: the frozen (or adapted) encoder's vectors, cached on disk
(``TextVectors``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from crossrec import schema
from crossrec.config import Config
from crossrec.features import Catalogue
from towers.cache import EmbeddingCache
from towers.encoder import TextEncoder


@dataclass
class TextVectors:
    table: np.ndarray | None  # (catalogue.size, dim), row 0 zeros
    fingerprint: str | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    seconds: float = 0.0


def text_vectors(config: Config, catalogue: Catalogue, *, progress: bool = False) -> TextVectors:
    """Every item's text vector by the (frozen, possibly adapted) encoder: from the on-disk cache
    where it holds them (``encoder.cache``), else encoded here."""
    if not config.towers.use_text:
        return TextVectors(None)
    start = time.perf_counter()
    encoder = TextEncoder(config.encoder)
    texts = catalogue.items[schema.TEXT].tolist()
    if config.encoder.cache:
        cache = EmbeddingCache(config.encoder.cache_dir, encoder.fingerprint)
        vectors = cache.get(texts, lambda t: encoder.encode(t, progress=progress))
        hits, misses = cache.stats.hits, cache.stats.misses
    else:
        vectors, hits, misses = encoder.encode(texts, progress=progress), 0, len(texts)
    table = np.concatenate([np.zeros((1, encoder.dim), np.float32), vectors])
    return TextVectors(table, encoder.fingerprint, hits, misses, time.perf_counter() - start)
