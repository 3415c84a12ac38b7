"""The ranking model, in named parts that are each testable alone.

``RankingFeatures``  (query embedding, history rows, candidate rows) -> (b, L, F) dense inputs,
                     read from the retrieval towers' tables (``ranking.features``; each feature
                     defined once in ``crossrec.ranking_features``)
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

from ranking.features import RankingFeatures
from ranking.ranker_spec import RankerSpec
from ranking.tables import FeatureTables

__all__ = ["CrossNetwork", "DeepNetwork", "RankingFeatures", "RankingModel", "default_tasks"]

ENGAGEMENT, RATING, DISTILLATION = "engagement", "rating", "distillation"


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


def default_tasks() -> dict[str, tfrs.tasks.Ranking]:
    """One TFRS ranking task per head; each owns its loss and metrics. Engagement is listwise:
    softmax cross-entropy over each candidate list (every training list holds its one label;
    binary cross-entropy per candidate measured far worse: docs: design notes)."""
    reduction = tf.keras.losses.Reduction.SUM_OVER_BATCH_SIZE
    listwise = tf.keras.losses.CategoricalCrossentropy(from_logits=True, reduction=reduction)
    return {
        ENGAGEMENT: tfrs.tasks.Ranking(loss=listwise, name="engagement_task"),
        # Averaged over every candidate of the batch (only the true items carry a rating weight),
        # so the rating task's pull on the shared layers stays small next to engagement's; a
        # per-rating average (50x stronger at 50 candidates) measurably hurt the ranking.
        RATING: tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError(reduction=reduction),
                                   metrics=[tf.keras.metrics.RootMeanSquaredError(name="rating_rmse")],
                                   name="rating_task"),
        DISTILLATION: tfrs.tasks.Ranking(loss=listwise, name="distillation_task"),
    }


class RankingModel(tfrs.models.Model):
    """Scores candidate lists: ``features -> normalise -> cross -> deep -> heads``.

    Blocks are injected, with defaults from ``network`` (``ranking.ranker_spec.RankerSpec``). ``call`` returns
    ``{"engagement": (b, L) logits, "rating": (b, L)}`` (no rating head when its weight is 0); ``compute_loss`` reads the labels from
    the same input dict: ``engagement`` (b, L) 0/1, ``rating`` + ``rating_weight`` (b, L) (weight 0
    where no rating is known) and, when distilling, ``teacher`` (b, L) the teacher's logits.
    """

    def __init__(self, features: RankingFeatures, *, cross: tf.keras.layers.Layer | None = None,
                 deep: tf.keras.layers.Layer | None = None, heads: dict | None = None, tasks: dict | None = None,
                 task_weights: dict[str, float] | None = None,
                 distillation_weight: float = 0.0, rating_mean: float = 0.0, network: RankerSpec | None = None,
                 retrieval_scale: float | tf.Variable | None = 10.0,
                 normalise: tf.keras.layers.Layer | None = None, **kwargs):
        super().__init__(**kwargs)
        network = network or RankerSpec(tuple(features.features), history_length=1)  # the default blocks
        self.ranker_spec = network  # what it was built from (ranking.run_folder stores it)
        self.features = features
        self.normalise = normalise or tf.keras.layers.BatchNormalization(name="normalise")
        self.cross = cross or CrossNetwork(network.cross_layers, network.cross_projection_dim, name="cross")
        self.deep = deep or DeepNetwork(network.deep_layers, network.dropout, name="deep")
        # Residual on retrieval: engagement = scale * retrieval score + head(...), the head starting at
        # zero, so an untrained ranker keeps the retrieval order and training learns corrections.
        self.retrieval_scale = retrieval_scale if isinstance(retrieval_scale, tf.Variable) else None
        if retrieval_scale is not None and self.retrieval_scale is None:
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
        self.tasks = {k: v for k, v in (tasks or default_tasks()).items() if k != RATING or RATING in heads}
        self.distillation_weight = float(distillation_weight)

    def in_view(self, tables: FeatureTables) -> RankingModel:
        """This ranker over another view of the same catalogue (``tables``, same shapes): a new
        features layer, every other weight (normalisation, crosses, deep stack, heads, the
        retrieval scale) shared, so training one trains both and neither is ever swapped."""
        twin = RankingModel(RankingFeatures(tables, self.features.features, name="features"), cross=self.cross,
                            deep=self.deep, heads=self.heads, tasks=self.tasks, task_weights=self.task_weights,
                            network=self.ranker_spec,
                            distillation_weight=self.distillation_weight,
                            retrieval_scale=self.retrieval_scale, normalise=self.normalise, name=self.name)
        twin({"query": np.zeros((1, self.features.embedding_dim), np.float32),
              "history": np.zeros((1, 1), np.int32), "candidates": np.ones((1, 2), np.int32)})
        return twin

    def get_config(self):
        # the blocks are objects; what identifies a ranker is its weights plus its RankerSpec
        return {"task_weights": self.task_weights, "distillation_weight": self.distillation_weight}

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
        # per-list weights (b,) when given: new-item parity (ranking.fit.fresh_parity_weights)
        list_weight = tf.cast(inputs.get("list_weight", tf.ones_like(mask[:, 0])), tf.float32)
        masked = tf.where(mask > 0, logits, -1e9)
        labels = tf.cast(inputs[ENGAGEMENT], tf.float32) * mask
        total = tf.reduce_sum(labels, axis=1, keepdims=True)
        has_positive = tf.cast(total[:, 0] > 0, tf.float32)  # lists without a positive weigh 0
        losses[ENGAGEMENT] = self.tasks[ENGAGEMENT](labels / tf.maximum(total, 1.0), masked,
                                                    sample_weight=has_positive * list_weight, training=training)
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
