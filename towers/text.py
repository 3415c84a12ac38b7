"""Item text as the towers read it: a frozen encoder's vectors (cached on disk), or token ids
and trainable encoders when fine-tuning (``TextVectors``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from crossrec import schema
from crossrec.config import Config
from crossrec.features import Catalogue
from towers.cache import EmbeddingCache
from towers.encoder import TextEncoder


@dataclass
class TextVectors:
    table: np.ndarray | None  # (catalogue.size, dim), row 0 zeros
    tokens: np.ndarray | None = None  # (catalogue.size, length) when fine-tuning
    encoder: TextEncoder | None = None  # the (first) trainable encoder when fine-tuning
    fingerprint: str | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    seconds: float = 0.0
    # Fine-tuning with shared_backbone false: one encoder per catalogue.domain_names entry.
    per_domain: list[TextEncoder] = field(default_factory=list)

    @property
    def encoders(self) -> list[TextEncoder]:
        return self.per_domain or ([self.encoder] if self.encoder is not None else [])


def text_vectors(config: Config, catalogue: Catalogue, *, progress: bool = False) -> TextVectors:
    if not config.towers.use_text:
        return TextVectors(None)
    start = time.perf_counter()
    per_domain = per_domain_encoders(config, catalogue)
    encoder = per_domain[0] if per_domain else TextEncoder(config.encoder)
    texts = catalogue.items[schema.TEXT].tolist()
    if config.encoder.freeze == "frozen" and config.encoder.cache:
        cache = EmbeddingCache(config.encoder.cache_dir, encoder.fingerprint)
        vectors = cache.get(texts, lambda t: encoder.encode(t, progress=progress))
        table = np.concatenate([np.zeros((1, encoder.dim), np.float32), vectors])
        return TextVectors(table, fingerprint=encoder.fingerprint, cache_hits=cache.stats.hits,
                           cache_misses=cache.stats.misses, seconds=time.perf_counter() - start)
    tokens = np.concatenate([np.zeros((1, config.encoder.sequence_length), np.int32), encoder.tokenize(texts)])
    tokens[0, 0] = encoder.pad_id
    text = TextVectors(None, tokens, encoder, cache_misses=len(texts), per_domain=per_domain)
    text.table = encode_table(text, catalogue, progress=progress)
    text.seconds = time.perf_counter() - start
    return text


def per_domain_encoders(config: Config, catalogue: Catalogue) -> list[TextEncoder]:
    """One backbone copy per catalogue domain when ``encoder.shared_backbone`` is false."""
    if config.encoder.shared_backbone:
        return []
    return [TextEncoder(config.encoder, name=f"text_encoder_{i}") for i in range(len(catalogue.domain_names))]


def encode_table(text: TextVectors, catalogue: Catalogue, *, progress: bool = False) -> np.ndarray:
    """Every row's text vector through its encoder (one shared, or its domain's own copy)."""
    encoders = text.encoders
    if len(encoders) == 1:
        table = encoders[0].encode_tokens(text.tokens, progress=progress)
    else:
        table = np.zeros((len(text.tokens), encoders[0].dim), np.float32)
        domain = catalogue.text_domain
        for index, encoder in enumerate(encoders):
            rows = np.flatnonzero(domain == index)
            table[rows] = encoder.encode_tokens(text.tokens[rows], progress=progress)
    table[0] = 0
    return table
