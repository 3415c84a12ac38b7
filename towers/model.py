"""The retrieval model: item towers, one shared user tower, and the TFRS retrieval task.

Named parts (each tested alone): ``ItemTower`` (``towers.item_tower``), ``UserTower``
(``towers.user_tower``), and here ``RetrievalModel``: a Keras 3 model whose ``compute_loss``
calls ``tfrs.tasks.Retrieval`` (in-batch softmax with temperature, logQ correction,
accidental-hit removal, hard negatives) on one history window per target.

Text vectors come from a non-trainable table: the frozen (or beforehand adapted, ``towers.adapt``)
encoder's cached output.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
from keras import ops

from crossrec.distribute import in_cluster
from towers.item_tower import ItemTower
from towers.spec import LossSpec, TowerSpec, TowerTables
from towers.user_tower import UserTower, latest_slot, user_query

__all__ = ["ItemTower", "RetrievalModel", "UserTower", "latest_slot", "user_query"]


class RetrievalModel(keras.Model):
    """Query tower + item towers trained with ``tfrs.tasks.Retrieval``.

    Inputs (a dict): ``history`` (b, H) int32 item rows, ``target_domain`` (b,) int32 and, for
    training, ``target`` (b,) int32 item rows; ``user_id`` (b,) string if user-id buckets are on.
    """

    def __init__(self, tables: TowerTables, towers: TowerSpec, loss: LossSpec, **kwargs):
        super().__init__(**kwargs)
        num_items = len(tables.item_domain)
        text_dim = 0 if tables.text_table is None else int(tables.text_table.shape[1])
        self.tower_spec = towers
        self.loss_spec = loss
        self.text_table = None
        if towers.use_text:
            self._text_weights(tables.text_table, tables.text_domain, tables.text_means)
        self.item_domain = self.add_weight(shape=(num_items,), dtype="int32", trainable=False, name="item_domain",
                                           initializer=keras.initializers.Constant(tables.item_domain))
        self.id_known = self.add_weight(shape=(num_items,), dtype="bool", trainable=False, name="id_known",
                                        initializer=keras.initializers.Constant(tables.id_known))
        self.item_probability = self.add_weight(shape=(num_items,), trainable=False, name="item_probability",
                                                initializer=keras.initializers.Constant(tables.item_probability))
        num_domains = tables.num_domains
        self.item_tower = ItemTower(num_items, num_domains, text_dim, towers.embedding_dim,
                                    use_text=towers.use_text, use_item_ids=towers.use_item_ids,
                                    item_id_dropout=towers.item_id_dropout, domain_dropout=towers.domain_dropout,
                                    dropout=towers.dropout, text_experts=towers.text_experts, name="item_tower")
        self.item_tower.build()  # its parts are also used outside its __call__ (``_one_pass_outputs``)
        self.user_tower = UserTower(num_domains, towers.history_length, towers.embedding_dim,
                                    user_id_buckets=towers.user_id_buckets, dropout=towers.dropout,
                                    domain_dropout=towers.domain_dropout, name="user_tower")
        self.user_hashing = (keras.layers.Hashing(towers.user_id_buckets, name="user_hashing")
                             if towers.user_id_buckets else None)
        self.task = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.SUM),  # / queries below: the mean per
            # replica (tf.keras refuses SUM_OVER_BATCH_SIZE under a distribution strategy; Keras 3's fit
            # then divides by the replica count, so several workers train on the global mean)
            temperature=loss.temperature, remove_accidental_hits=loss.remove_accidental_hits,
            num_hard_negatives=loss.hard_negatives or None)
        # Keras 3 runs train steps without autograph, and TFRS's Retrieval.call needs it
        # (`len(tf.shape(x))`): the task call gets its own tf.function (docs: development, the two Kerases).
        self._task_loss = tf.function(
            lambda q, c, w, p, ids, mask: tf.math.divide_no_nan(
                self.task(q, c, sample_weight=w, candidate_sampling_probability=p, candidate_ids=ids,
                          compute_metrics=False, score_mask=mask), tf.cast(tf.shape(q)[0], tf.float32)))

    def _text_weights(self, text_table, text_domain, text_means) -> None:
        """Every item's text vector, the text domain of each row and each text domain's mean
        (zeros unless ``towers.center_text_by_domain``): non-trainable weights."""
        if text_table is None:
            raise ValueError("towers.use_text is true but no text vectors were given")
        self.text_table = self.add_weight(shape=text_table.shape, name="text_table", trainable=False,
                                          initializer=keras.initializers.Constant(text_table))
        means = text_means if self.tower_spec.center_text_by_domain else np.zeros_like(text_means)
        self.text_domain = self.add_weight(shape=text_domain.shape, dtype="int32", trainable=False,
                                           name="text_domain", initializer=keras.initializers.Constant(text_domain))
        self.text_means = self.add_weight(shape=means.shape, trainable=False, name="text_means",
                                          initializer=keras.initializers.Constant(means))

    # -- item side --------------------------------------------------------------------------
    def _text_vectors(self, rows):
        if self.text_table is None:
            return None
        vectors = ops.take(self.text_table, rows, axis=0)
        return vectors - ops.take(self.text_means, ops.take(self.text_domain, rows), axis=0)

    def item_embeddings(self, rows, training=False, use_ids=True, text_only_too=False):
        """(n,) item rows -> (n, e); each distinct row goes through the tower once. ``use_ids``
        false embeds every item from its text alone (as a new item is). ``text_only_too`` returns
        (hybrid, text alone) from one pass of the text encoder (what the text-only loss needs)."""
        flat = ops.reshape(rows, [-1])
        unique, position = tf.unique(flat)
        text = self._text_vectors(unique)
        known, domain = ops.take(self.id_known, unique), ops.take(self.item_domain, unique)
        shape = tf.concat([tf.shape(rows), [-1]], 0)

        def embed(ids_known):
            embedded = self.item_tower(text, domain, unique, ids_known, training=training)
            return tf.reshape(tf.gather(embedded, position), shape)

        if text_only_too:
            return embed(known), embed(ops.zeros_like(known))
        return embed(known if use_ids else ops.zeros_like(known))

    # -- query side -------------------------------------------------------------------------
    def call(self, inputs, training=False):
        history = ops.cast(inputs["history"], "int32")
        if training and "target" in inputs:
            return self._one_pass_outputs(history, inputs)
        return self.query(self.item_embeddings(history, training=training), history, inputs["target_domain"],
                          inputs.get("user_id"), training=training)

    def _one_pass_outputs(self, history, inputs):
        """Training outputs of a batch of windows: the queries, the targets' embeddings and their
        text-only embeddings, every distinct item (history and target) through the tower once (the
        text path shared by the hybrid and text-only vectors)."""
        target = ops.cast(inputs["target"], "int32")
        unique, position = tf.unique(ops.concatenate([ops.reshape(history, [-1]), target], axis=0))
        text_part, id_part = self.item_tower.parts(
            self._text_vectors(unique), ops.take(self.item_domain, unique), unique,
            ops.take(self.id_known, unique), training=True)
        items = self.item_tower.combine(text_part, id_part)
        split = tf.size(history)
        history_embeddings = tf.reshape(tf.gather(items, position[:split]), tf.concat([tf.shape(history), [-1]], 0))
        outputs = {"query": self.query(history_embeddings, history, inputs["target_domain"], inputs.get("user_id"),
                                       training=True),
                   "candidates": tf.gather(items, position[split:])}
        if self.loss_spec.text_only_loss_weight > 0 and text_part is not None:
            outputs["text_only"] = tf.gather(self.item_tower.combine(text_part, None), position[split:])
        return outputs

    @staticmethod
    def _targets(x, y_pred):
        """(queries, target rows, weights) of a batch."""
        target = ops.cast(x["target"], "int32")
        weight = ops.cast(x["weight"], "float32") if "weight" in x else ops.ones_like(ops.cast(target, "float32"))
        return ops.cast(y_pred, "float32"), target, weight

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras 3.15 under a distribution strategy first averages one input batch across replicas
        (``strategy.reduce``), which fails on a dict of per-replica tensors (MultiWorkerMirrored);
        the towers are built when constructed (``towers.train.build_model``) and compile no
        metrics, so only the optimizer needs building, here, in the strategy's scope."""
        if not self.built:
            return super()._maybe_symbolic_build(iterator, data_batch)
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def load_own_variables(self, store):
        """Weights saved while the fusion gate existed (before the options measured not to help
        were removed) hold one more variable right after ``id_known``, each item's log training
        count, which nothing reads now: skipped, so an older served version still retrains."""
        names = [v.name for v in self._trainable_variables + self._non_trainable_variables]
        if len(store.keys()) == len(names) + 1 and "id_known" in names:
            skip = names.index("id_known") + 1
            store = {str(i): store[str(i if i < skip else i + 1)] for i in range(len(names))}
        super().load_own_variables(store)

    def train_step(self, data):
        """Keras' step; across several workers each log becomes a 1-vector, because Keras 3.15
        averages per-replica logs with ``strategy.reduce("MEAN", v, axis=0)``, which fails on the
        scalars they are (tensorflow/tensorflow#72388; Keras 2 did not); the mean is a scalar again."""
        logs = super().train_step(data)
        if in_cluster(self.distribute_strategy):
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs

    def query(self, history_embeddings, history, target_domain, user_id=None, training=False):
        return user_query(self.user_tower, self.item_domain, self.user_hashing, history_embeddings, history,
                          target_domain, user_id, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if isinstance(y_pred, dict):  # one pass (``_one_pass_outputs``): the candidates are embedded
            return self._one_pass_loss(x, y_pred)
        query, target, weight = self._targets(x, y_pred)
        text_only = None
        if training and self.loss_spec.text_only_loss_weight > 0 and self.text_table is not None:
            candidates, text_only = self.item_embeddings(target, training=training, text_only_too=True)
        else:
            candidates = self.item_embeddings(target, training=training)
        return self._loss(query, target, weight, candidates, text_only)

    def _one_pass_loss(self, x, outputs):
        query, target, weight = self._targets(x, outputs["query"])
        return self._loss(query, target, weight, outputs["candidates"], outputs.get("text_only"))

    def _loss(self, query, target, weight, candidates, text_only):
        """The in-batch softmax of the queries against the batch's targets (hybrid embeddings),
        plus the text-only loss over the same pairs when ``text_only`` is given."""
        probability = ops.take(self.item_probability, target) if self.loss_spec.logq_correction else None
        mask = None
        if self.loss_spec.same_domain_negatives:
            # query i asks for its target's domain; only candidates of that domain compete
            domains = ops.take(self.item_domain, target)
            mask = ops.equal(domains[:, None], domains[None, :])
        loss = self._task_loss(query, ops.cast(candidates, "float32"), weight, probability, target, mask)
        if text_only is not None:
            loss = loss + self.loss_spec.text_only_loss_weight * self._task_loss(
                query, ops.cast(text_only, "float32"), weight, probability, target, mask)
        return loss + ops.sum(self.losses) if self.losses else loss

    def all_item_embeddings(self, batch_size: int = 8192, *, use_ids: bool = True) -> np.ndarray:
        """(num_items, e) embeddings of every item row (row 0 is padding); ``use_ids=False``: by
        their text alone, as a new item is embedded."""
        n = int(self.item_domain.shape[0])
        out = [np.asarray(self.item_embeddings(ops.arange(s, min(n, s + batch_size), dtype="int32"), use_ids=use_ids))
               for s in range(0, n, batch_size)]
        return np.concatenate(out).astype(np.float32)
