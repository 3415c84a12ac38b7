"""The retrieval model: item towers, one shared user tower, and the TFRS retrieval task.

Named parts (each tested alone): ``ItemTower`` (``towers.item_tower``), ``UserTower``
(``towers.user_tower``), and here ``RetrievalModel``: a Keras 3 model whose ``compute_loss``
calls ``tfrs.tasks.Retrieval`` (in-batch softmax with temperature, logQ correction,
accidental-hit removal, hard negatives, mixed negatives) or a full softmax over the training
catalogue, on one history window per target or on whole user sequences.

Text vectors come from a non-trainable table (the frozen encoder's cached output). When the
encoder is fine-tuned, the batch's candidate items are encoded live from their token ids, and the
history keeps reading the table, which ``RefreshTextTable`` re-encodes after every epoch.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
from keras import ops

from crossrec.config import TowerConfig, TrainConfig
from crossrec.distribute import in_cluster
from towers.item_tower import ItemTower
from towers.user_tower import UserTower, latest_where, user_query

__all__ = ["ItemTower", "RetrievalModel", "UserTower", "latest_where", "user_query"]


class RetrievalModel(keras.Model):
    """Query tower + item towers trained with ``tfrs.tasks.Retrieval``.

    Inputs (a dict): ``history`` (b, H) int32 item rows, ``target_domain`` (b,) int32 and, for
    training, ``target`` (b,) int32 item rows; ``user_id`` (b,) string if user-id buckets are on.
    """

    def __init__(self, *, text_table: np.ndarray | None, item_domain: np.ndarray, id_known: np.ndarray,
                 text_domain: np.ndarray, text_means: np.ndarray | None,
                 item_probability: np.ndarray, num_domains: int, towers: TowerConfig, train: TrainConfig,
                 text_encoders: list[keras.layers.Layer] | None = None, token_table: np.ndarray | None = None,
                 item_counts: np.ndarray | None = None, **kwargs):
        super().__init__(**kwargs)
        num_items = len(item_domain)
        text_dim = 0 if text_table is None else int(text_table.shape[1])
        self.towers_config = towers
        self.train_config = train
        self.text_table = None
        if towers.use_text:
            self._text_weights(text_table, text_domain, text_means)
        self.item_domain = self.add_weight(shape=(num_items,), dtype="int32", trainable=False, name="item_domain",
                                           initializer=keras.initializers.Constant(item_domain))
        self.id_known = self.add_weight(shape=(num_items,), dtype="bool", trainable=False, name="id_known",
                                        initializer=keras.initializers.Constant(id_known))
        self.seed_generator = keras.random.SeedGenerator()  # made here, not inside a traced step
        # log(1 + training interactions) per row: what the fusion gate reads.
        counts = np.zeros(num_items, np.float32) if item_counts is None else np.asarray(item_counts, np.float32)
        self.item_log_count = self.add_weight(shape=(num_items,), trainable=False, name="item_log_count",
                                              initializer=keras.initializers.Constant(np.log1p(counts)))
        self.item_probability = self.add_weight(shape=(num_items,), trainable=False, name="item_probability",
                                                initializer=keras.initializers.Constant(item_probability))
        self._negative_pools(id_known, item_domain)
        # One encoder shared by every domain, or one per text domain (index = text_domain).
        self.text_encoders = list(text_encoders or [])
        self.token_table = None
        if self.text_encoders:
            self.token_table = self.add_weight(shape=token_table.shape, dtype="int32", trainable=False,
                                               name="token_table", initializer=keras.initializers.Constant(token_table))
        self.item_tower = ItemTower(num_items, num_domains, text_dim, towers.embedding_dim,
                                    use_text=towers.use_text, use_item_ids=towers.use_item_ids,
                                    item_id_dropout=towers.item_id_dropout, domain_dropout=towers.domain_dropout,
                                    dropout=towers.dropout, id_embedding_init=towers.id_embedding_init,
                                    text_experts=towers.text_experts, fusion=towers.fusion, name="item_tower")
        self.item_tower.build()  # its parts are also used outside its __call__ (``_one_pass_outputs``)
        self.user_tower = UserTower(num_domains, towers.history_length, towers.embedding_dim,
                                    self_attention_layers=towers.self_attention_layers,
                                    user_id_buckets=towers.user_id_buckets, dropout=towers.dropout,
                                    domain_dropout=towers.domain_dropout, name="user_tower")
        self.user_hashing = (keras.layers.Hashing(towers.user_id_buckets, name="user_hashing")
                             if towers.user_id_buckets else None)
        self.task = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.SUM),  # / queries below: the mean per
            # replica (tf.keras refuses SUM_OVER_BATCH_SIZE under a distribution strategy; Keras 3's fit
            # then divides by the replica count, so several workers train on the global mean)
            temperature=train.temperature, remove_accidental_hits=train.remove_accidental_hits,
            num_hard_negatives=train.hard_negatives or None)
        # Keras 3 runs train steps without autograph, and TFRS's Retrieval.call needs it
        # (`len(tf.shape(x))`): the task call gets its own tf.function (README: Development, Keras).
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
        means = text_means if self.towers_config.center_text_by_domain else np.zeros_like(text_means)
        self.text_domain = self.add_weight(shape=text_domain.shape, dtype="int32", trainable=False,
                                           name="text_domain", initializer=keras.initializers.Constant(text_domain))
        self.text_means = self.add_weight(shape=means.shape, trainable=False, name="text_means",
                                          initializer=keras.initializers.Constant(means))

    def _negative_pools(self, id_known, item_domain) -> None:
        """The items mixed negative sampling and the catalogue softmax draw from: those seen in
        training (new items stay unseen), each row's position in that pool (the label of a query
        whose target it is) and the pool's domains."""
        known_rows = np.flatnonzero(np.asarray(id_known)).astype(np.int32)
        known_rows = known_rows if len(known_rows) else np.ones(1, np.int32)
        self.negative_pool = tf.constant(known_rows)
        position = np.zeros(len(item_domain), np.int32)
        position[known_rows] = np.arange(len(known_rows), dtype=np.int32)
        self.pool_position = tf.constant(position)
        self.pool_domain = tf.constant(np.asarray(item_domain, np.int32)[known_rows])

    # -- item side --------------------------------------------------------------------------
    def _text_vectors(self, rows, live: bool):
        if self.text_table is None:
            return None
        if live and len(self.text_encoders) == 1:
            vectors = self.text_encoders[0](ops.take(self.token_table, rows, axis=0), training=True)
        elif live and self.text_encoders:
            # Each domain's rows through its own backbone copy, then back into row order.
            parts = tf.dynamic_partition(rows, ops.take(self.text_domain, rows), len(self.text_encoders))
            positions = tf.dynamic_partition(tf.range(tf.shape(rows)[0]), ops.take(self.text_domain, rows),
                                             len(self.text_encoders))
            encoded = [encoder(ops.take(self.token_table, part, axis=0), training=True)
                       for encoder, part in zip(self.text_encoders, parts, strict=True)]
            vectors = tf.dynamic_stitch(positions, encoded)
        else:
            vectors = ops.take(self.text_table, rows, axis=0)
        return vectors - ops.take(self.text_means, ops.take(self.text_domain, rows), axis=0)

    def item_embeddings(self, rows, training=False, live_text=False, use_ids=True, text_only_too=False):
        """(n,) item rows -> (n, e); each distinct row goes through the tower once. ``use_ids``
        false embeds every item from its text alone (as a new item is). ``text_only_too`` returns
        (hybrid, text alone) from one pass of the text encoder (what the text-only loss needs)."""
        flat = ops.reshape(rows, [-1])
        unique, position = tf.unique(flat)
        text = self._text_vectors(unique, live=live_text)
        known = ops.take(self.id_known, unique)
        domain, log_count = ops.take(self.item_domain, unique), ops.take(self.item_log_count, unique)
        shape = tf.concat([tf.shape(rows), [-1]], 0)

        def embed(ids_known):
            embedded = self.item_tower(text, domain, unique, ids_known, log_count=log_count, training=training)
            return tf.reshape(tf.gather(embedded, position), shape)

        if text_only_too:
            return embed(known), embed(ops.zeros_like(known))
        return embed(known if use_ids else ops.zeros_like(known))

    # -- query side -------------------------------------------------------------------------
    def call(self, inputs, training=False):
        if len(inputs["target_domain"].shape) == 2:  # a batch of sequences: a query at every position
            return self._sequence_queries(inputs, training)
        history = ops.cast(inputs["history"], "int32")
        share = self.towers_config.target_domain_history_dropout
        if training and share > 0:  # some queries become cross-domain cold starts
            same = ops.equal(ops.take(self.item_domain, history), ops.cast(inputs["target_domain"], "int32")[:, None])
            cold = keras.random.uniform(ops.shape(history)[:1], seed=self.seed_generator) < share
            history = ops.where(ops.logical_and(same, cold[:, None]), ops.zeros_like(history), history)
        if training and "target" in inputs and self._one_pass:
            return self._one_pass_outputs(history, inputs)
        return self.query(self.item_embeddings(history, training=training), history, inputs["target_domain"],
                          inputs.get("user_id"), training=training)

    @property
    def _one_pass(self) -> bool:
        """Whether a training step embeds history and candidates in one pass of the item tower
        (every distinct item once, the text path shared by the hybrid and text-only vectors): with
        cached text, in-batch negatives and the sum fusion (what the defaults are)."""
        train, towers = self.train_config, self.towers_config
        return (not self.text_encoders and train.negatives == "in_batch" and not train.sampled_negatives
                and towers.fusion == "sum")

    def _one_pass_outputs(self, history, inputs):
        """Training outputs of a batch of windows: the queries, the targets' embeddings and their
        text-only embeddings, every distinct item (history and target) through the tower once."""
        target = ops.cast(inputs["target"], "int32")
        unique, position = tf.unique(ops.concatenate([ops.reshape(history, [-1]), target], axis=0))
        text_part, id_part = self.item_tower.parts(
            self._text_vectors(unique, live=False), ops.take(self.item_domain, unique), unique,
            ops.take(self.id_known, unique), training=True)
        items = self.item_tower.combine(text_part, id_part)
        split = tf.size(history)
        history_embeddings = tf.reshape(tf.gather(items, position[:split]), tf.concat([tf.shape(history), [-1]], 0))
        outputs = {"query": self.query(history_embeddings, history, inputs["target_domain"], inputs.get("user_id"),
                                       training=True),
                   "candidates": tf.gather(items, position[split:])}
        if self.towers_config.text_only_loss_weight > 0 and text_part is not None:
            outputs["text_only"] = tf.gather(self.item_tower.combine(text_part, None), position[split:])
        return outputs

    def _sequence_queries(self, inputs, training):
        history = ops.cast(inputs["history"], "int32")
        bucket = self.user_hashing(inputs["user_id"]) if self.user_hashing is not None and "user_id" in inputs else None
        return self.user_tower.all_positions(self.item_embeddings(history, training=training), history > 0,
                                             ops.take(self.item_domain, history),
                                             ops.cast(inputs["target_domain"], "int32"), bucket, training=training)

    @staticmethod
    def _flat_targets(x, y_pred):
        """(queries, target rows, weights) of a batch: of every position that has a target when
        the batch holds sequences."""
        query, target = ops.cast(y_pred, "float32"), ops.cast(x["target"], "int32")
        weight = ops.cast(x["weight"], "float32") if "weight" in x else ops.ones_like(ops.cast(target, "float32"))
        if len(target.shape) == 2:
            keep = ops.logical_and(target > 0, ops.cast(x["history"], "int32") > 0)
            query, target, weight = (tf.boolean_mask(t, keep) for t in (query, target, weight))
        return query, target, weight

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
        query, target, weight = self._flat_targets(x, y_pred)
        if self.train_config.negatives == "catalogue":
            return self._catalogue_loss(query, target, weight, training)
        candidates_rows = target
        sampled = self.train_config.sampled_negatives if training else 0
        if sampled:
            # Mixed negatives: the batch's targets, then ``sampled`` items drawn uniformly from the pool.
            pick = tf.random.uniform([sampled], 0, tf.shape(self.negative_pool)[0], dtype=tf.int32)
            candidates_rows = tf.concat([target, tf.gather(self.negative_pool, pick)], axis=0)
        text_only = None
        if training and self.towers_config.text_only_loss_weight > 0 and self.text_table is not None:
            candidates, text_only = self.item_embeddings(candidates_rows, training=training, live_text=training,
                                                         text_only_too=True)
        else:
            candidates = self.item_embeddings(candidates_rows, training=training, live_text=training)
        probability = None
        if self.train_config.logq_correction:
            probability = ops.take(self.item_probability, candidates_rows)
            if sampled:  # each candidate's share of a step's draws under the mixture (TFRS clips at 1)
                batch = ops.cast(ops.shape(target)[0], "float32")
                pool = ops.cast(ops.shape(self.negative_pool)[0], "float32")
                probability = (batch * probability + sampled / pool) / (batch + sampled)
        mask = None
        if self.train_config.same_domain_negatives:
            # query i asks for its target's domain; only candidates of that domain compete
            mask = ops.equal(ops.take(self.item_domain, target)[:, None],
                             ops.take(self.item_domain, candidates_rows)[None, :])
        loss = self._task_loss(query, ops.cast(candidates, "float32"), weight, probability, candidates_rows, mask)
        if text_only is not None:
            loss = loss + self.towers_config.text_only_loss_weight * self._task_loss(
                query, ops.cast(text_only, "float32"), weight, probability, candidates_rows, mask)
        return loss + ops.sum(self.losses) if self.losses else loss

    def _one_pass_loss(self, x, outputs):
        query, target, weight = self._flat_targets(x, outputs["query"])
        probability = ops.take(self.item_probability, target) if self.train_config.logq_correction else None
        mask = None
        if self.train_config.same_domain_negatives:
            domains = ops.take(self.item_domain, target)
            mask = ops.equal(domains[:, None], domains[None, :])
        loss = self._task_loss(query, ops.cast(outputs["candidates"], "float32"), weight, probability, target, mask)
        if "text_only" in outputs:
            loss = loss + self.towers_config.text_only_loss_weight * self._task_loss(
                query, ops.cast(outputs["text_only"], "float32"), weight, probability, target, mask)
        return loss + ops.sum(self.losses) if self.losses else loss

    def _catalogue_loss(self, query, target, weight, training):
        """Full softmax: every query against every item seen in training (of its own domain when
        ``same_domain_negatives``); the label is the target's position in that pool."""
        labels = ops.take(self.pool_position, target)
        mask = None
        if self.train_config.same_domain_negatives:
            mask = ops.equal(ops.take(self.item_domain, target)[:, None], self.pool_domain[None, :])

        def loss_against(use_ids):
            pool = self.item_tower(self._text_vectors(self.negative_pool, live=False),
                                   ops.take(self.item_domain, self.negative_pool), self.negative_pool,
                                   ops.take(self.id_known, self.negative_pool) if use_ids
                                   else ops.zeros_like(self.negative_pool, dtype="bool"),
                                   log_count=ops.take(self.item_log_count, self.negative_pool), training=training)
            logits = ops.matmul(query, ops.transpose(ops.cast(pool, "float32"))) / self.train_config.temperature
            if mask is not None:
                logits = ops.where(mask, logits, ops.full_like(logits, -1e9))
            per_query = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            return ops.sum(per_query * weight) / ops.cast(ops.shape(target)[0], "float32")

        loss = loss_against(use_ids=True)
        if training and self.towers_config.text_only_loss_weight > 0 and self.text_table is not None:
            loss = loss + self.towers_config.text_only_loss_weight * loss_against(use_ids=False)
        return loss + ops.sum(self.losses) if self.losses else loss

    def all_item_embeddings(self, batch_size: int = 8192, *, use_ids: bool = True) -> np.ndarray:
        """(num_items, e) embeddings of every item row (row 0 is padding); ``use_ids=False``: by
        their text alone, as a new item is embedded."""
        n = int(self.item_domain.shape[0])
        out = [np.asarray(self.item_embeddings(ops.arange(s, min(n, s + batch_size), dtype="int32"), use_ids=use_ids))
               for s in range(0, n, batch_size)]
        return np.concatenate(out).astype(np.float32)
