"""Scores of candidate lists by a trained ranker, and the order the ``recommender`` serves them in.

Used by training (validation NDCG, distillation targets), by the evaluation of the re-ranking and
of the served list, and by the benchmarks: one place that runs a ranker over in-memory lists.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from crossrec.config import Config
from ranking.candidates import CandidateLists
from ranking.model import ENGAGEMENT, RATING, RankingModel
from ranking.policy import served_scores, with_popularity_prior
from ranking.served_list import ServedListSpec
from ranking.tables import FeatureTables


def score_lists(model: RankingModel, lists: CandidateLists, batch_size: int = 1024, head: str = ENGAGEMENT) -> np.ndarray:
    """(n, L) scores of one head for every candidate list."""
    features = lists.features()
    if not hasattr(model, "_serve_lists"):  # one trace per model: every dimension left open
        spec = {k: tf.TensorSpec([None] * v.ndim, tf.as_dtype(v.dtype)) for k, v in features.items()}
        model._serve_lists = tf.function(lambda f: model(f, training=False), input_signature=[spec])
    out = []
    for s in range(0, len(lists), batch_size):
        part = {k: tf.constant(v[s:s + batch_size], dtype=spec.dtype)
                for (k, v), spec in zip(features.items(), model._serve_lists.input_signature[0].values(), strict=True)}
        out.append(model._serve_lists(part)[head].numpy())
    return np.concatenate(out) if out else np.zeros(lists.candidates.shape, np.float32)


def target_ratings(model: RankingModel, lists: CandidateLists) -> np.ndarray:
    """(n,) the rating head's prediction for each query's true target."""
    single = CandidateLists(lists.examples, lists.query, lists.examples.target[:, None].astype(np.int32),
                            np.zeros((len(lists), 1), np.float32))
    return score_lists(model, single, head=RATING)[:, 0]


def served_ranker(teacher: RankingModel, student: RankingModel | None, config: Config) -> RankingModel:
    """The ranker the ``recommender`` SavedModel is exported with (``export.ranker``)."""
    return student if config.export.ranker == "student" and student is not None else teacher


def cold_start_queries(lists: CandidateLists, tables: FeatureTables) -> np.ndarray:
    """(n,) true where the query's history holds no item of its target domain."""
    history = lists.examples.history
    in_domain = (history > 0) & (tables.item_domain[history] == lists.examples.target_domain[:, None])
    return ~in_domain.any(axis=1)


def served_order(model: RankingModel, lists: CandidateLists, tables: FeatureTables, spec: ServedListSpec) -> np.ndarray:
    """(n, L) scores in the order the ``recommender`` SavedModel serves each list under ``spec``."""
    scores = with_popularity_prior(score_lists(model, lists), lists.candidates, tables.popularity,
                                   cold_start_queries(lists, tables), spec.cold_start_popularity).numpy()
    if spec.new_items != "retrieval_rank":
        return scores
    is_new = tables.popularity[lists.candidates] <= 0
    return served_scores(scores, np.where(lists.candidates > 0, lists.retrieval_scores, -np.inf), lists.candidates,
                         is_new).numpy()
