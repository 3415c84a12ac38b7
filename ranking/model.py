"""The ranking model, in named parts that are each testable alone.

``RankingFeatures``  (query embedding, history rows, candidate rows) -> (b, L, F) dense inputs,
                     read from the retrieval towers' tables (item embeddings, domains, popularity)
``CrossNetwork``     DCN-v2 feature crosses (``tfrs.layers.dcn.Cross``, full or low-rank)
``DeepNetwork``      a ReLU stack
heads                one ``Dense(1)`` per task: ``engagement`` (a logit) and ``rating``
``RankingModel``     a tf_keras ``tfrs.Model``: features -> cross -> deep -> heads; one
                     ``tfrs.tasks.Ranking`` per task owns each loss, weighted by config

Everything is tf_keras (Keras 2, ``tf.keras`` here), as TFRS needs; the model reads precomputed
tower outputs, so it never mixes with the Keras 3 towers. Inputs are candidate *lists*: a batch
is ``b`` queries with ``L`` candidates each (row 0 = padding, masked out of every loss).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from crossrec.config import RANKING_FEATURES, RankerConfig
from crossrec.errors import ConfigError
from ranking.sources import SOURCES
from ranking.tables import FeatureTables

ENGAGEMENT, RATING, DISTILLATION = "engagement", "rating", "distillation"


@tf.keras.utils.register_keras_serializable("crossrec")
class RankingFeatures(tf.keras.layers.Layer):
    """Builds every candidate's input vector from the item tables and the user's history.

    Inputs: ``query`` (b, e) query embedding, ``history`` (b, H) item rows (right-aligned, 0 =
    padding), ``candidates`` (b, L) item rows. Output: (b, L, F), the ``features`` in order:
    query, candidate (embeddings), product (element-wise), retrieval_score (dot product),
    retrieval_rank (the candidate's place in the list by that score, / L), domain (one-hot of
    the candidate's domain), log_popularity, item_rating (the item's mean training rating minus
    the global mean, and a 0/1 "has ratings" flag), history_length (log1p of the user's
    interactions in the candidate's domain and in all), recency (interactions since the user's
    last one in the candidate's domain, / H; 1 and a 0 flag when there is none), one group per
    candidate source (co_visitation, propagation: log1p of the history's summed neighbour weight
    for the candidate, a 0/1 "reached" flag and its place in the list by that weight, / L),
    text_similarity (cosine of the candidate's text-alone vector with the most recent history
    item of its domain, and a 0/1 flag that there is one), item_age (the share of training time
    before the item was first seen, 1 for an item never seen; and a 0/1 "new" flag).

    The tables (``ranking.tables.FeatureTables``) are non-trainable weights, so a saved model
    carries them; ``assign`` swaps in another view of the same catalogue. Training batches on
    lists mined without a label view may pass ``popularity_offset`` (b, L) = the labels, so that
    a positive's count and mean rating leave out the very interaction it is the label of.
    """

    def __init__(self, tables: FeatureTables, features=RANKING_FEATURES, **kwargs):
        super().__init__(**kwargs)
        self.num_domains = int(tables.num_domains)
        self.features = list(features)
        self.embedding_dim = int(tables.item_embeddings.shape[1])
        self.rating_mean = float(tables.rating_mean or 0.0)
        self.source_names = [t.name for t in tables.sources]
        self.position_decay = {t.name: float(t.position_decay) for t in tables.sources}
        missing = [f for f in self.features if f in SOURCES and f not in self.source_names]
        if missing:
            raise ConfigError(f"ranking features {missing}: the ranker was built without that candidate source "
                              f"(ranking.sources: {self.source_names})")
        self.tables = {}
        for name, value in tables.weights().items():
            self.tables[name] = self.add_weight(name=name, shape=value.shape, dtype=tf.as_dtype(value.dtype),
                                                trainable=False, initializer=tf.keras.initializers.Constant(value))

    def assign(self, tables: FeatureTables) -> None:
        """Swaps in another view of the same catalogue (same shapes)."""
        for name, value in tables.weights().items():
            self.tables[name].assign(value)

    @property
    def output_dim(self) -> int:
        e, d = self.embedding_dim, self.num_domains
        sizes = {"query": e, "candidate": e, "product": e, "retrieval_score": 1, "retrieval_rank": 1, "domain": d,
                 "log_popularity": 1, "item_rating": 2, "history_length": 2, "recency": 2, "co_visitation": 3,
                 "propagation": 3, "text_similarity": 2, "item_age": 2}
        return sum(sizes[f] for f in self.features)

    def source_scores(self, name: str, history) -> tf.Tensor:
        """(b, size) the history's summed neighbour weight per item row under source ``name``."""
        history = tf.cast(history, tf.int32)
        size = tf.shape(self.tables["popularity"])[0]
        horizon = tf.shape(history)[1]
        distance = tf.cast(tf.range(horizon - 1, -1, -1), tf.float32)
        position = 1.0 / tf.pow(1.0 + distance, self.position_decay[name])  # (H,)
        neighbours = tf.gather(self.tables[f"{name}_neighbours"], history)  # (b, H, M)
        weights = tf.gather(self.tables[f"{name}_weights"], history) * position[None, :, None]
        weights *= tf.cast(history > 0, tf.float32)[..., None]
        batch = tf.shape(history)[0]
        segments = tf.range(batch)[:, None, None] * size + neighbours
        dense = tf.math.unsorted_segment_sum(tf.reshape(weights, [-1]), tf.reshape(segments, [-1]), batch * size)
        return tf.reshape(dense, [batch, size])

    @staticmethod
    def _list_rank(scores, candidates):
        """(b, L) each candidate's 0-based place in its list by ``scores``, / L (padding last)."""
        scores = tf.where(candidates > 0, scores, -np.inf)
        higher = tf.reduce_sum(tf.cast(scores[:, None, :] > scores[:, :, None], tf.float32), axis=-1)
        return higher / tf.cast(tf.shape(candidates)[1], tf.float32)

    def call(self, inputs):
        t = self.tables
        query = tf.cast(inputs["query"], tf.float32)  # (b, e)
        history = tf.cast(inputs["history"], tf.int32)  # (b, H)
        candidates = tf.cast(inputs["candidates"], tf.int32)  # (b, L)
        length = tf.shape(candidates)[1]
        horizon = tf.cast(tf.shape(history)[1], tf.float32)
        item = tf.gather(t["item_embeddings"], candidates)  # (b, L, e)
        q = tf.repeat(query[:, None, :], length, axis=1)  # (b, L, e)
        domain = tf.gather(t["item_domain"], candidates)  # (b, L)
        count = tf.gather(t["popularity"], candidates)
        if "popularity_offset" in inputs:  # training: leave the example's own interaction out
            count = tf.maximum(count - tf.cast(inputs["popularity_offset"], tf.float32), 0.0)

        # the user's history per domain
        present = tf.cast(history > 0, tf.float32)  # (b, H)
        history_domain = tf.one_hot(tf.gather(t["item_domain"], history), self.num_domains) * present[..., None]
        counts = tf.reduce_sum(history_domain, axis=1)  # (b, D)
        position = tf.range(tf.shape(history)[1], dtype=tf.float32)[None, :, None]  # (1, H, 1)
        last = tf.reduce_max(tf.where(history_domain > 0, position, -1.0), axis=1)  # (b, D), -1 = none

        parts = []
        for name in self.features:
            if name == "query":
                parts.append(q)
            elif name == "candidate":
                parts.append(item)
            elif name == "product":
                parts.append(q * item)
            elif name == "retrieval_score":
                parts.append(tf.reduce_sum(q * item, axis=-1, keepdims=True))
            elif name == "retrieval_rank":
                parts.append(self._list_rank(tf.reduce_sum(q * item, axis=-1), candidates)[..., None])
            elif name == "domain":
                parts.append(tf.one_hot(domain, self.num_domains))
            elif name == "log_popularity":
                parts.append(tf.math.log1p(count)[..., None])
            elif name == "item_rating":
                total = tf.gather(t["rating_sum"], candidates)
                rated_count = tf.gather(t["rating_count"], candidates)
                if "rating_weight" in inputs and "popularity_offset" in inputs:  # leave the label's rating out
                    own = tf.cast(inputs["rating_weight"], tf.float32)
                    total -= own * tf.cast(inputs["rating"], tf.float32)
                    rated_count -= own
                rated = rated_count > 0.5
                mean = tf.where(rated, total / tf.maximum(rated_count, 1.0) - self.rating_mean, 0.0)
                parts.append(tf.stack([mean, tf.cast(rated, tf.float32)], axis=-1))
            elif name == "history_length":
                in_domain = tf.gather(counts, domain, batch_dims=1)  # (b, L)
                total = tf.repeat(tf.reduce_sum(counts, axis=1, keepdims=True), length, axis=1)
                parts.append(tf.math.log1p(tf.stack([in_domain, total], axis=-1)))
            elif name == "recency":
                last_in_domain = tf.gather(last, domain, batch_dims=1)  # (b, L)
                seen = tf.cast(last_in_domain >= 0, tf.float32)
                since = tf.where(last_in_domain >= 0, (horizon - 1.0 - last_in_domain) / horizon, 1.0)
                parts.append(tf.stack([since, seen], axis=-1))
            elif name in SOURCES:
                score = tf.gather(self.source_scores(name, history), candidates, batch_dims=1)  # (b, L)
                score = tf.where(candidates > 0, score, 0.0)
                parts.append(tf.stack([tf.math.log1p(score), tf.cast(score > 0, tf.float32),
                                       self._list_rank(score, candidates)], axis=-1))
            elif name == "text_similarity":
                last_in_domain = tf.cast(tf.gather(last, domain, batch_dims=1), tf.int32)  # (b, L), -1 = none
                recent = tf.gather(history, tf.maximum(last_in_domain, 0), batch_dims=1)  # (b, L) item rows
                text = t["text_vectors"]  # normalised after the gather: only the rows a request reads
                cosine = tf.reduce_sum(tf.math.l2_normalize(tf.gather(text, candidates), axis=-1)
                                       * tf.math.l2_normalize(tf.gather(text, recent), axis=-1), axis=-1)
                has = tf.cast(last_in_domain >= 0, tf.float32)
                parts.append(tf.stack([cosine * has, has], axis=-1))
            elif name == "item_age":
                parts.append(tf.stack([tf.gather(t["first_seen"], candidates), tf.cast(count <= 0, tf.float32)],
                                      axis=-1))
        return tf.concat(parts, axis=-1)

    def retrieval_scores(self, inputs):
        """(b, L) the towers' dot product of query and candidate."""
        item = tf.gather(self.tables["item_embeddings"], tf.cast(inputs["candidates"], tf.int32))
        return tf.reduce_sum(tf.cast(inputs["query"], tf.float32)[:, None, :] * item, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update({"num_domains": self.num_domains, "features": self.features, "rating_mean": self.rating_mean,
                       "sources": self.source_names})
        return config


@tf.keras.utils.register_keras_serializable("crossrec")
class CrossNetwork(tf.keras.layers.Layer):
    """DCN-v2: ``x_{i+1} = x0 * (W x_i + b) + x_i``; ``projection_dim`` makes W low-rank (U V)."""

    def __init__(self, num_layers: int = 2, projection_dim: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_layers = num_layers
        self.projection_dim = projection_dim
        self.crosses = [tfrs.layers.dcn.Cross(projection_dim=projection_dim, kernel_initializer="glorot_uniform",
                                              name=f"cross_{i}") for i in range(num_layers)]

    def call(self, x0):  # (n, F) -> (n, F)
        x = x0
        for cross in self.crosses:
            x = cross(x0, x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update({"num_layers": self.num_layers, "projection_dim": self.projection_dim})
        return config


@tf.keras.utils.register_keras_serializable("crossrec")
class DeepNetwork(tf.keras.layers.Layer):
    """Dense ReLU layers with dropout."""

    def __init__(self, units=(256, 128), dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.units = list(units)
        self.dropout = dropout
        self.dense = [tf.keras.layers.Dense(u, activation="relu", name=f"dense_{i}") for i, u in enumerate(units)]
        self.drop = tf.keras.layers.Dropout(dropout)

    def call(self, x, training=False):
        for layer in self.dense:
            x = self.drop(layer(x), training=training)
        return x

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "dropout": self.dropout})
        return config


def default_tasks(listwise: bool = False) -> dict[str, tfrs.tasks.Ranking]:
    """One TFRS ranking task per head; each owns its loss and metrics."""
    reduction = tf.keras.losses.Reduction.SUM_OVER_BATCH_SIZE
    if listwise:
        engagement = tf.keras.losses.CategoricalCrossentropy(from_logits=True, reduction=reduction)
        metrics = []
    else:
        engagement = tf.keras.losses.BinaryCrossentropy(from_logits=True, reduction=reduction)
        metrics = [tf.keras.metrics.AUC(from_logits=True, name="auc")]
    distillation = tf.keras.losses.CategoricalCrossentropy(from_logits=True, reduction=reduction)
    return {
        ENGAGEMENT: tfrs.tasks.Ranking(loss=engagement, metrics=metrics, name="engagement_task"),
        # Averaged over every candidate of the batch (only the true items carry a rating weight),
        # so the rating task's pull on the shared layers stays small next to engagement's; a
        # per-rating average (50x stronger at 50 candidates) measurably hurt the ranking.
        RATING: tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError(reduction=reduction),
                                   metrics=[tf.keras.metrics.RootMeanSquaredError(name="rating_rmse")],
                                   name="rating_task"),
        DISTILLATION: tfrs.tasks.Ranking(loss=distillation, name="distillation_task"),
    }


class RankingModel(tfrs.models.Model):
    """Scores candidate lists: ``features -> normalise -> cross -> deep -> heads``.

    Blocks are injected, with defaults from ``RankerConfig``. ``call`` returns
    ``{"engagement": (b, L) logits, "rating": (b, L)}`` (no rating head when its weight is 0); ``compute_loss`` reads the labels from
    the same input dict: ``engagement`` (b, L) 0/1, ``rating`` + ``rating_weight`` (b, L) (weight 0
    where no rating is known) and, when distilling, ``teacher`` (b, L) the teacher's logits.
    """

    def __init__(self, features: RankingFeatures, *, cross: tf.keras.layers.Layer | None = None,
                 deep: tf.keras.layers.Layer | None = None, heads: dict | None = None, tasks: dict | None = None,
                 task_weights: dict[str, float] | None = None, listwise: bool = False,
                 distillation_weight: float = 0.0, rating_mean: float = 0.0, config: RankerConfig | None = None,
                 retrieval_scale: float | None = 10.0, **kwargs):
        super().__init__(**kwargs)
        config = config or RankerConfig()
        self.features = features
        self.normalise = tf.keras.layers.BatchNormalization(name="normalise")
        self.cross = cross or CrossNetwork(config.cross_layers, config.cross_projection_dim, name="cross")
        self.deep = deep or DeepNetwork(config.deep_layers, config.dropout, name="deep")
        # Residual on retrieval: engagement = scale * retrieval score + head(...), the head starting at
        # zero, so an untrained ranker keeps the retrieval order and training learns corrections.
        self.retrieval_scale = None
        if retrieval_scale is not None:
            self.retrieval_scale = self.add_weight(name="retrieval_scale", shape=(),
                                                   initializer=tf.keras.initializers.Constant(retrieval_scale))
        self.task_weights = {ENGAGEMENT: 1.0, RATING: 0.0, **(task_weights or {})}
        if heads is None:
            heads = {ENGAGEMENT: tf.keras.layers.Dense(1, name="engagement_head", kernel_initializer="zeros")}
            if self.task_weights[RATING] > 0:  # no rating head where nothing would train it
                heads[RATING] = tf.keras.layers.Dense(1, name="rating_head",
                                                      bias_initializer=tf.keras.initializers.Constant(rating_mean))
        self.heads = heads
        # a task only for a head that exists: no rating metric (reported as 0.0) without ratings
        self.tasks = {k: v for k, v in (tasks or default_tasks(listwise)).items() if k != RATING or RATING in heads}
        self.listwise = listwise
        self.distillation_weight = float(distillation_weight)

    def get_config(self):
        # the blocks are objects; what identifies a ranker is its weights plus RankerConfig
        return {"task_weights": self.task_weights, "listwise": self.listwise,
                "distillation_weight": self.distillation_weight}

    def call(self, inputs, training=False):
        x = self.features(inputs)  # (b, L, F)
        shape = tf.shape(x)
        flat = tf.reshape(x, [-1, self.features.output_dim])  # (b*L, F)
        hidden = self.deep(self.cross(self.normalise(flat, training=training)), training=training)
        out = {name: tf.reshape(head(hidden), shape[:2]) for name, head in self.heads.items()}  # (b, L) each
        if self.retrieval_scale is not None:
            out[ENGAGEMENT] += self.retrieval_scale * self.features.retrieval_scores(inputs)
        return out

    def task_losses(self, inputs, training=False) -> dict[str, tf.Tensor]:
        """Each task's loss (before weighting) on a batch of labelled candidate lists."""
        out = self(inputs, training=training)
        mask = tf.cast(tf.cast(inputs["candidates"], tf.int32) > 0, tf.float32)  # (b, L)
        logits = out[ENGAGEMENT]
        losses = {}
        # per-list weights (b,) when given: new-item parity (ranking.train.fresh_parity_weights)
        list_weight = tf.cast(inputs.get("list_weight", tf.ones_like(mask[:, 0])), tf.float32)
        if self.listwise:
            masked = tf.where(mask > 0, logits, -1e9)
            labels = tf.cast(inputs[ENGAGEMENT], tf.float32) * mask
            total = tf.reduce_sum(labels, axis=1, keepdims=True)
            has_positive = tf.cast(total[:, 0] > 0, tf.float32)  # lists without a positive weigh 0
            losses[ENGAGEMENT] = self.tasks[ENGAGEMENT](labels / tf.maximum(total, 1.0), masked,
                                                        sample_weight=has_positive * list_weight, training=training)
        else:
            labels = tf.cast(inputs[ENGAGEMENT], tf.float32)
            losses[ENGAGEMENT] = self.tasks[ENGAGEMENT](labels[..., None], logits[..., None],
                                                        sample_weight=mask * list_weight[:, None],
                                                        training=training)
        if "teacher" in inputs and self.distillation_weight > 0:
            # Listwise distillation: match the teacher's softmax over each candidate list, which
            # transfers its *order* (what serving uses) rather than its calibration.
            teacher = tf.nn.softmax(tf.where(mask > 0, tf.cast(inputs["teacher"], tf.float32), -1e9))
            losses[DISTILLATION] = self.tasks[DISTILLATION](teacher, tf.where(mask > 0, logits, -1e9),
                                                            training=training)
        if RATING in inputs and RATING in out and self.task_weights.get(RATING, 0.0) > 0:
            losses[RATING] = self.tasks[RATING](tf.cast(inputs[RATING], tf.float32)[..., None],
                                                out[RATING][..., None],
                                                sample_weight=tf.cast(inputs["rating_weight"], tf.float32) * mask,
                                                training=training)
        return losses

    def combine(self, losses: dict[str, tf.Tensor]) -> tf.Tensor:
        """Weighted sum of the task losses; distillation shares the engagement weight:
        ``w_e * ((1 - a) * label loss + a * teacher loss) + w_r * rating loss``."""
        engagement = losses[ENGAGEMENT]
        if DISTILLATION in losses:
            a = self.distillation_weight
            engagement = (1.0 - a) * engagement + a * losses[DISTILLATION]
        total = self.task_weights[ENGAGEMENT] * engagement
        if RATING in losses:
            total += self.task_weights[RATING] * losses[RATING]
        return total

    def compute_loss(self, inputs, training=False):
        return self.combine(self.task_losses(inputs, training=training))

    def scores(self, inputs) -> tf.Tensor:
        """(b, L) engagement logits: the order the ranker puts candidates in."""
        return self(inputs, training=False)[ENGAGEMENT]
