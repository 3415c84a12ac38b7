"""Asking trained towers: query embeddings of examples (in batches, one traced function), a
random sample of them (for index recall measurements), and an evaluator scorer."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from crossrec.evaluation import EmbeddingScorer
from crossrec.features import Examples
from towers.model import RetrievalModel


def query_embeddings(model: RetrievalModel, examples: Examples, batch_size: int = 4096) -> np.ndarray:
    if not hasattr(model, "_serve_queries"):
        model._serve_queries = tf.function(lambda f: model(f, training=False), reduce_retracing=True)
    out = []
    for s in range(0, len(examples), batch_size):
        part = examples.subset(np.arange(s, min(len(examples), s + batch_size)))
        out.append(np.asarray(model._serve_queries({k: tf.constant(v) for k, v in part.features().items()})))
    return np.concatenate(out) if out else np.zeros((0, model.tower_spec.embedding_dim), np.float32)


def sample_query_embeddings(model: RetrievalModel, examples: Examples, n: int, seed: int = 0) -> np.ndarray:
    """Query embeddings of ``n`` of ``examples`` drawn at random (all of them if fewer): real
    queries for measuring an index's recall against exact search."""
    if len(examples) > n:
        examples = examples.subset(np.sort(np.random.default_rng(seed).choice(len(examples), n, replace=False)))
    return query_embeddings(model, examples)


def scorer_for(model: RetrievalModel, name: str) -> EmbeddingScorer:
    return EmbeddingScorer(name, lambda ex: query_embeddings(model, ex), model.all_item_embeddings())
