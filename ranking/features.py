"""The ranker's input layer: one function per feature of the registry
(``crossrec.ranking_features``: name, width, the tables it reads, what it means), all reading the
same per-batch values (``Batch``).

Inputs: ``query`` (b, e) query embedding, ``history`` (b, H) item rows (right-aligned, 0 =
padding), ``candidates`` (b, L) item rows, and optionally each source's scores of the candidates
(``source_input``). Output: (b, L, F), the configured features in order.
The tables (``ranking.tables.FeatureTables``) are non-trainable weights, so a saved model carries
them; a ranker over another view of the same catalogue is another ``RankingFeatures`` sharing the
network (``RankingModel.in_view``). Training batches on lists mined without a label view may pass
``popularity_offset`` (b, L) = the labels, so that a positive's count and mean rating leave out the
very interaction it is the label of.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import tensorflow as tf

from crossrec.ranking_features import (
    CANDIDATE_SOURCES,
    FEATURES,
    RANKING_FEATURES,
    check_features,
    width,
)
from ranking.source_scores import SourceScores, sorted_rows
from ranking.tables import FeatureTables


class Batch:
    """The values of one call that several features read: the query and candidate embeddings,
    the candidates' domains and counts, and the user's history per domain (count, last position)."""

    def __init__(self, layer: RankingFeatures, inputs):
        t = self.tables = layer.tables
        self.layer, self.inputs = layer, inputs
        self.query = tf.cast(inputs["query"], tf.float32)  # (b, e)
        self.history = history = tf.cast(inputs["history"], tf.int32)  # (b, H)
        self.candidates = candidates = tf.cast(inputs["candidates"], tf.int32)  # (b, L)
        self.length = tf.shape(candidates)[1]
        self.horizon = tf.cast(tf.shape(history)[1], tf.float32)
        self.item = tf.gather(t["item_embeddings"], candidates)  # (b, L, e)
        self.q = tf.repeat(self.query[:, None, :], self.length, axis=1)  # (b, L, e)
        self.domain = tf.gather(t["item_domain"], candidates)  # (b, L)
        count = tf.gather(t["popularity"], candidates)
        if "popularity_offset" in inputs:  # training: leave the example's own interaction out
            count = tf.maximum(count - tf.cast(inputs["popularity_offset"], tf.float32), 0.0)
        self.count = count
        present = tf.cast(history > 0, tf.float32)  # (b, H)
        history_domain = tf.one_hot(tf.gather(t["item_domain"], history), layer.num_domains) * present[..., None]
        self.counts = tf.reduce_sum(history_domain, axis=1)  # (b, D)
        position = tf.range(tf.shape(history)[1], dtype=tf.float32)[None, :, None]  # (1, H, 1)
        self.last = tf.reduce_max(tf.where(history_domain > 0, position, -1.0), axis=1)  # (b, D), -1 = none

    def last_in_domain(self):
        """(b, L) the history position of the user's last item in each candidate's domain, -1 = none."""
        return tf.gather(self.last, self.domain, batch_dims=1)


def source_input(name: str) -> str:
    """The optional input that carries source ``name``'s scores of the candidates, (b, L), when
    the caller has them (``ranking.source_scores.Reached.of``); otherwise the ranker computes them."""
    return f"{name}_score"


def list_rank(scores, candidates):
    """(b, L) each candidate's 0-based place in its list by ``scores``, / L (padding last)."""
    scores = tf.where(candidates > 0, scores, -np.inf)
    higher = tf.reduce_sum(tf.cast(scores[:, None, :] > scores[:, :, None], tf.float32), axis=-1)
    return higher / tf.cast(tf.shape(candidates)[1], tf.float32)


def _retrieval_score(b: Batch):
    return tf.reduce_sum(b.q * b.item, axis=-1, keepdims=True)


def _retrieval_rank(b: Batch):
    return list_rank(tf.reduce_sum(b.q * b.item, axis=-1), b.candidates)[..., None]


def _item_rating(b: Batch):
    total = tf.gather(b.tables["rating_sum"], b.candidates)
    rated_count = tf.gather(b.tables["rating_count"], b.candidates)
    if "rating_weight" in b.inputs and "popularity_offset" in b.inputs:  # leave the label's rating out
        own = tf.cast(b.inputs["rating_weight"], tf.float32)
        total -= own * tf.cast(b.inputs["rating"], tf.float32)
        rated_count -= own
    rated = rated_count > 0.5
    mean = tf.where(rated, total / tf.maximum(rated_count, 1.0) - b.layer.rating_mean, 0.0)
    return tf.stack([mean, tf.cast(rated, tf.float32)], axis=-1)


def _history_length(b: Batch):
    in_domain = tf.gather(b.counts, b.domain, batch_dims=1)  # (b, L)
    total = tf.repeat(tf.reduce_sum(b.counts, axis=1, keepdims=True), b.length, axis=1)
    return tf.math.log1p(tf.stack([in_domain, total], axis=-1))


def _recency(b: Batch):
    last = b.last_in_domain()
    seen = tf.cast(last >= 0, tf.float32)
    since = tf.where(last >= 0, (b.horizon - 1.0 - last) / b.horizon, 1.0)
    return tf.stack([since, seen], axis=-1)


def _source(name: str, b: Batch):
    given = b.inputs.get(source_input(name))  # the served list's, from the items it proposed from
    score = given if given is not None else b.layer.source_scores(name, b.history).of(b.candidates)  # (b, L)
    return tf.stack([tf.math.log1p(score), tf.cast(score > 0, tf.float32), list_rank(score, b.candidates)], axis=-1)


def _text_similarity(b: Batch):
    last = tf.cast(b.last_in_domain(), tf.int32)  # (b, L), -1 = none
    recent = tf.gather(b.history, tf.maximum(last, 0), batch_dims=1)  # (b, L) item rows
    text = b.tables["text_vectors"]  # normalised after the gather: only the rows a request reads
    cosine = tf.reduce_sum(tf.math.l2_normalize(tf.gather(text, b.candidates), axis=-1)
                           * tf.math.l2_normalize(tf.gather(text, recent), axis=-1), axis=-1)
    has = tf.cast(last >= 0, tf.float32)
    return tf.stack([cosine * has, has], axis=-1)


def _item_age(b: Batch):
    return tf.stack([tf.gather(b.tables["first_seen"], b.candidates), tf.cast(b.count <= 0, tf.float32)], axis=-1)


# how each feature of the registry is computed: (b, L, width) from the batch's shared values
COMPUTE = {
    "query": lambda b: b.q,
    "candidate": lambda b: b.item,
    "product": lambda b: b.q * b.item,
    "retrieval_score": _retrieval_score,
    "retrieval_rank": _retrieval_rank,
    "domain": lambda b: tf.one_hot(b.domain, b.layer.num_domains),
    "log_popularity": lambda b: tf.math.log1p(b.count)[..., None],
    "item_rating": _item_rating,
    "history_length": _history_length,
    "recency": _recency,
    **{name: partial(_source, name) for name in CANDIDATE_SOURCES},
    "text_similarity": _text_similarity,
    "item_age": _item_age,
}
if set(COMPUTE) != set(FEATURES):  # a feature registered without a function, or the reverse
    raise ImportError(f"ranking features without exactly one function: {sorted(set(COMPUTE) ^ set(FEATURES))} "
                      "(crossrec/ranking_features.py and ranking/features.py must name the same features)")


@tf.keras.utils.register_keras_serializable("crossrec")
class RankingFeatures(tf.keras.layers.Layer):
    """Builds every candidate's input vector (the ``features``, in order) from the item tables and
    the user's history; see the module's docstring and the registry for each feature."""

    def __init__(self, tables: FeatureTables, features=RANKING_FEATURES, **kwargs):
        super().__init__(**kwargs)
        self.num_domains = int(tables.num_domains)
        self.features = list(features)
        self.embedding_dim = int(tables.item_embeddings.shape[1])
        self.rating_mean = float(tables.rating_mean or 0.0)
        self.source_names = [t.name for t in tables.sources]
        self.position_decay = {t.name: float(t.position_decay) for t in tables.sources}
        check_features(self.features, "ranking features", self.source_names)  # tables built without a source
        self.tables = {}
        values = tables.weights()
        for name in self.source_names if not tables.placeholder else ():  # rows in item order (SourceScores.of)
            values[f"{name}_neighbours"], values[f"{name}_weights"] = sorted_rows(values[f"{name}_neighbours"],
                                                                                values[f"{name}_weights"])
        for name, value in values.items():  # placeholder tables: zeros, never copied from numpy (1M items: seconds)
            initializer = "zeros" if tables.placeholder else tf.keras.initializers.Constant(value)
            self.tables[name] = self.add_weight(name=name, shape=value.shape, dtype=tf.as_dtype(value.dtype),
                                                trainable=False, initializer=initializer)

    @property
    def output_dim(self) -> int:
        return width(self.features, self.embedding_dim, self.num_domains)

    def sort_neighbours(self) -> None:
        """Puts loaded neighbour tables in item order (weights saved by an older crossrec kept each
        row in weight order; ``SourceScores.of`` needs item order)."""
        for name in self.source_names:
            neighbours, weights = self.tables[f"{name}_neighbours"], self.tables[f"{name}_weights"]
            if bool(tf.reduce_all(neighbours[:, 1:] >= neighbours[:, :-1])):
                continue  # in order already (what this crossrec saves): no copy out and back
            ordered = sorted_rows(neighbours.numpy(), weights.numpy())
            neighbours.assign(ordered[0])
            weights.assign(ordered[1])

    def source_scores(self, name: str, history) -> SourceScores:
        """The history's scores under source ``name`` (``ranking.source_scores``)."""
        return SourceScores(self.tables[f"{name}_neighbours"], self.tables[f"{name}_weights"],
                            self.position_decay[name], history)

    def call(self, inputs):
        batch = Batch(self, inputs)
        return tf.concat([COMPUTE[name](batch) for name in self.features], axis=-1)

    def retrieval_scores(self, inputs):
        """(b, L) the towers' dot product of query and candidate."""
        item = tf.gather(self.tables["item_embeddings"], tf.cast(inputs["candidates"], tf.int32))
        return tf.reduce_sum(tf.cast(inputs["query"], tf.float32)[:, None, :] * item, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update({"num_domains": self.num_domains, "features": self.features, "rating_mean": self.rating_mean,
                       "sources": self.source_names})
        return config
