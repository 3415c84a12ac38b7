"""The retrieval model: item towers, one shared user tower, and the TFRS retrieval task.

Named parts (each tested alone):
- ``ItemTower``: an item's text vector -> the shared embedding space, through a domain-agnostic
  adapter plus a per-domain residual adapter, plus an optional item-ID embedding (hybrid). The
  domain adapter is dropped for a share of training items (``domain_dropout``), so the agnostic
  path alone is trained too: a domain never seen in training (domain index 0) uses only it. The
  ID embedding is dropped for a share of items (``item_id_dropout``) so text alone stays strong;
  items unseen in training have no ID embedding at all (row marked in ``id_known``).
- ``UserTower``: a user's history (item embeddings from the item towers, plus domain and recency
  embeddings), optional self-attention blocks, attention pooling whose query is the *target
  domain*, the most recent item, and an optional hashed user id -> one L2-normalised query.
- ``RetrievalModel``: a Keras 3 model whose ``compute_loss`` calls ``tfrs.tasks.Retrieval``
  (in-batch softmax with temperature, logQ correction, accidental-hit removal, hard negatives).

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


@keras.saving.register_keras_serializable(package="crossrec")
class ItemTower(keras.layers.Layer):
    def __init__(self, num_items: int, num_domains: int, text_dim: int, embedding_dim: int = 64,
                 use_text: bool = True, use_item_ids: bool = True, item_id_dropout: float = 0.5,
                 domain_dropout: float = 0.2, dropout: float = 0.1, id_embedding_init: str = "random", **kwargs):
        super().__init__(**kwargs)
        self.id_embedding_init = id_embedding_init
        if not use_text and not use_item_ids:
            raise ValueError("ItemTower needs text, item ids, or both (use_text and use_item_ids are both false)")
        self.num_items = num_items
        self.num_domains = num_domains
        self.text_dim = text_dim
        self.embedding_dim = embedding_dim
        self.use_text = use_text
        self.use_item_ids = use_item_ids
        self.item_id_dropout = item_id_dropout
        self.domain_dropout = domain_dropout
        self.dropout = dropout
        if use_text:
            self.shared_hidden = keras.layers.Dense(2 * embedding_dim, activation="gelu", name="shared_hidden")
            self.shared_out = keras.layers.Dense(embedding_dim, name="shared_out")
            # One residual adapter per domain on the shared hidden layer, all computed together.
            self.domain_adapters = keras.layers.EinsumDense(
                "bh,hde->bde", output_shape=(num_domains, embedding_dim), name="domain_adapters",
                kernel_initializer="zeros")
            self.text_dropout = keras.layers.Dropout(dropout)
        if use_item_ids:
            # In the hybrid the ID part starts at zero, so an item's ID embedding is only what its
            # interactions taught it: rare items stay close to their text instead of carrying
            # random noise (ID-only towers need a random start to break symmetry).
            init = (keras.initializers.Zeros() if use_text and id_embedding_init == "zeros"
                    else keras.initializers.RandomNormal(0, 0.05))
            self.id_embedding = keras.layers.Embedding(num_items, embedding_dim, name="item_id_embedding",
                                                       embeddings_initializer=init)

    def call(self, text, domain, row, id_known, training=False):
        # text: (b, text_dim) float; domain, row: (b,) int; id_known: (b,) bool
        parts = []
        if self.use_text:
            hidden = self.shared_hidden(self.text_dropout(text, training=training))  # (b, 2e)
            shared = self.shared_out(hidden)  # (b, e)
            if training and self.domain_dropout > 0:
                drop = keras.random.uniform(ops.shape(domain)) < self.domain_dropout
                domain = ops.where(drop, ops.zeros_like(domain), domain)
            per_domain = self.domain_adapters(hidden)  # (b, domains, e)
            pick = ops.one_hot(domain, self.num_domains)[..., None]  # (b, domains, 1); domain 0 = agnostic only
            pick = pick * ops.cast(ops.arange(self.num_domains) > 0, pick.dtype)[None, :, None]
            parts.append(shared + ops.sum(per_domain * pick, axis=1))
        if self.use_item_ids:
            keep = ops.cast(id_known, "float32")
            if training and self.item_id_dropout > 0 and self.use_text:
                keep = keep * ops.cast(keras.random.uniform(ops.shape(keep)) >= self.item_id_dropout, "float32")
            parts.append(self.id_embedding(row) * keep[:, None])
        return ops.normalize(ops.sum(ops.stack(parts), axis=0), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update({k: getattr(self, k) for k in (
            "num_items", "num_domains", "text_dim", "embedding_dim", "use_text", "use_item_ids",
            "item_id_dropout", "domain_dropout", "dropout", "id_embedding_init")})
        return config


def latest_where(sequence, mask):
    """The last position of ``sequence`` (b, H, e) where ``mask`` (b, H) is true; zeros where none."""
    slots = ops.arange(ops.shape(mask)[1])
    latest = ops.argmax(ops.cast(mask, "int32") * (slots[None, :] + 1), axis=1)  # (b,)
    picked = ops.take_along_axis(sequence, latest[:, None, None], axis=1)[:, 0, :]
    return picked * ops.cast(ops.any(mask, axis=1), sequence.dtype)[:, None]


def user_query(user_tower, item_domain, user_hashing, history_embeddings, history, target_domain, user_id=None,
               training=False):
    """The query embedding from already-embedded history items: what ``RetrievalModel`` computes,
    and what an export computes from its item embedding table without the text path."""
    history = ops.cast(history, "int32")  # (b, H) item rows, right-aligned
    bucket = user_hashing(user_id) if user_hashing is not None and user_id is not None else None
    return user_tower(history_embeddings, history > 0, ops.take(item_domain, history),
                      ops.cast(target_domain, "int32"), bucket, training=training)


@keras.saving.register_keras_serializable(package="crossrec")
class UserTower(keras.layers.Layer):
    def __init__(self, num_domains: int, history_length: int, embedding_dim: int = 64,
                 self_attention_layers: int = 0, user_id_buckets: int = 0, dropout: float = 0.1,
                 domain_dropout: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.num_domains = num_domains
        self.history_length = history_length
        self.embedding_dim = embedding_dim
        self.self_attention_layers = self_attention_layers
        self.user_id_buckets = user_id_buckets
        self.dropout = dropout
        self.domain_dropout = domain_dropout
        e = embedding_dim
        self.history_domain = keras.layers.Embedding(num_domains, e, name="history_domain")
        self.recency = keras.layers.Embedding(history_length, e, name="recency")  # slot H-1 = most recent
        self.target_domain = keras.layers.Embedding(num_domains, e, name="target_domain")
        self.blocks = [keras.layers.MultiHeadAttention(2, e // 2, dropout=dropout, name=f"self_attention_{i}")
                       for i in range(self_attention_layers)]
        self.block_norms = [keras.layers.LayerNormalization(name=f"self_attention_norm_{i}")
                            for i in range(self_attention_layers)]
        self.key = keras.layers.Dense(e, use_bias=False, name="pool_key")
        self.key.build((None, e))
        self.query = keras.layers.Dense(e, use_bias=False, name="pool_query")
        self.user_embedding = (keras.layers.Embedding(user_id_buckets, e, name="user_id_embedding")
                               if user_id_buckets else None)
        self.hidden = keras.layers.Dense(2 * e, activation="gelu", name="hidden")
        self.drop = keras.layers.Dropout(dropout)
        self.out = keras.layers.Dense(e, name="out")

    def call(self, history_embeddings, history_mask, history_domain, target_domain, user_bucket=None,
             training=False):
        # history_embeddings: (b, H, e); history_mask: (b, H) bool; history_domain: (b, H) int
        # target_domain: (b,) int; user_bucket: (b,) int or None
        if training and self.domain_dropout > 0:
            drop = keras.random.uniform(ops.shape(target_domain)) < self.domain_dropout
            target_domain = ops.where(drop, ops.zeros_like(target_domain), target_domain)
        mask_f = ops.cast(history_mask, "float32")[..., None]  # (b, H, 1)
        slots = ops.arange(self.history_length)
        x = (history_embeddings + self.history_domain(history_domain) + self.recency(slots)[None]) * mask_f
        for attention, norm in zip(self.blocks, self.block_norms, strict=True):
            pair_mask = ops.logical_and(history_mask[:, None, :], history_mask[:, :, None])
            x = norm(x + attention(x, x, attention_mask=pair_mask, training=training)) * mask_f
        wanted = self.target_domain(target_domain)  # (b, e)
        # key(x_i) . query(w) == x_i . (query(w) K^T): project the one query, not every history slot.
        probe = ops.matmul(self.query(wanted), ops.transpose(self.key.kernel))  # (b, e)
        scores = ops.einsum("bhe,be->bh", x, probe) / np.sqrt(self.embedding_dim)
        scores = ops.where(history_mask, scores, ops.full_like(scores, -1e9))
        weights = ops.softmax(scores, axis=-1) * ops.cast(history_mask, "float32")  # all-padding -> 0
        pooled = ops.einsum("bh,bhe->be", weights, x)
        last = x[:, -1, :]  # right-aligned: the most recent item (zeros if none)
        # The history inside the target domain: what a single-domain model would see. Its mean and
        # its most recent item keep warm users' same-domain signal from being diluted by the other
        # domains (which still carry cold-start users through `pooled`).
        same = ops.logical_and(history_mask, ops.equal(history_domain, target_domain[:, None]))  # (b, H)
        same_f = ops.cast(same, "float32")[..., None]
        same_mean = ops.sum(history_embeddings * same_f, axis=1) / ops.maximum(ops.sum(same_f, axis=1), 1.0)
        same_last = latest_where(history_embeddings, same)
        parts = [pooled, last, wanted, same_mean, same_last]
        if self.user_embedding is not None and user_bucket is not None:
            parts.append(self.user_embedding(user_bucket))
        hidden = self.drop(self.hidden(ops.concatenate(parts, axis=-1)), training=training)
        # Residual: the mean of the history's item embeddings, so the query starts from "items like
        # the ones this user had" (the two-tower form of item-kNN) and the MLP learns corrections.
        mean = ops.sum(history_embeddings * mask_f, axis=1) / ops.maximum(ops.sum(mask_f, axis=1), 1.0)
        return ops.normalize(self.out(hidden) + mean + same_mean, axis=-1)

    def all_positions(self, history_embeddings, history_mask, history_domain, next_domain, user_bucket=None,
                      training=False):
        """Every prefix of a sequence at once: query ``t`` is what ``call`` gives for the items up
        to position ``t`` (right-aligned, so the item at ``t`` is the most recent) asking for
        ``next_domain[:, t]``. (b, H, e) in, (b, H, e) out: one pass trains on every position of
        a user's sequence (SASRec-style) instead of one history window per target."""
        if self.blocks:
            raise ValueError("all_positions needs towers.self_attention_layers: 0")
        h, e = self.history_length, self.embedding_dim
        if training and self.domain_dropout > 0:
            drop = keras.random.uniform(ops.shape(next_domain)) < self.domain_dropout
            next_domain = ops.where(drop, ops.zeros_like(next_domain), next_domain)
        slots = ops.arange(h)
        causal = slots[None, :] <= slots[:, None]  # (t, j): item j is in prefix t
        valid = ops.logical_and(causal[None], history_mask[:, None, :])  # (b, t, j)
        valid_f = ops.cast(valid, "float32")
        # item j seen from position t sits where call() would put it: slot H-1-(t-j)
        recency = self.recency(ops.clip(h - 1 - (slots[:, None] - slots[None, :]), 0, h - 1))  # (t, j, e)
        base = history_embeddings + self.history_domain(history_domain)  # (b, j, e)
        x = (base[:, None, :, :] + recency[None]) * valid_f[..., None]  # (b, t, j, e)
        wanted = self.target_domain(next_domain)  # (b, t, e)
        probe = ops.matmul(self.query(wanted), ops.transpose(self.key.kernel))
        scores = ops.einsum("btje,bte->btj", x, probe) / np.sqrt(e)
        scores = ops.where(valid, scores, ops.full_like(scores, -1e9))
        weights = ops.softmax(scores, axis=-1) * valid_f
        pooled = ops.einsum("btj,btje->bte", weights, x)
        # the most recent item of prefix t is item t itself (zeros where the slot is padding)
        last = (base + recency[h - 1, h - 1][None, None, :]) * ops.cast(history_mask, "float32")[..., None]
        same = ops.logical_and(valid, ops.equal(history_domain[:, None, :], next_domain[:, :, None]))  # (b, t, j)
        same_f = ops.cast(same, "float32")
        same_mean = ops.einsum("btj,bje->bte", same_f, history_embeddings) / ops.maximum(
            ops.sum(same_f, axis=-1, keepdims=True), 1.0)
        latest = ops.argmax(ops.cast(same, "int32") * (slots[None, None, :] + 1), axis=-1)  # (b, t)
        same_last = ops.take_along_axis(history_embeddings, latest[..., None], axis=1) * ops.cast(
            ops.any(same, axis=-1), "float32")[..., None]
        parts = [pooled, last, wanted, same_mean, same_last]
        if self.user_embedding is not None and user_bucket is not None:
            parts.append(ops.broadcast_to(self.user_embedding(user_bucket)[:, None, :], ops.shape(pooled)))
        hidden = self.drop(self.hidden(ops.concatenate(parts, axis=-1)), training=training)
        mean = ops.einsum("btj,bje->bte", valid_f, history_embeddings) / ops.maximum(
            ops.sum(valid_f, axis=-1, keepdims=True), 1.0)
        return ops.normalize(self.out(hidden) + mean + same_mean, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update({k: getattr(self, k) for k in (
            "num_domains", "history_length", "embedding_dim", "self_attention_layers", "user_id_buckets",
            "dropout", "domain_dropout")})
        return config


class RetrievalModel(keras.Model):
    """Query tower + item towers trained with ``tfrs.tasks.Retrieval``.

    Inputs (a dict): ``history`` (b, H) int32 item rows, ``target_domain`` (b,) int32 and, for
    training, ``target`` (b,) int32 item rows; ``user_id`` (b,) string if user-id buckets are on.
    """

    def __init__(self, *, text_table: np.ndarray | None, item_domain: np.ndarray, id_known: np.ndarray,
                 text_domain: np.ndarray, text_means: np.ndarray | None,
                 item_probability: np.ndarray, num_domains: int, towers: TowerConfig, train: TrainConfig,
                 text_encoders: list[keras.layers.Layer] | None = None, token_table: np.ndarray | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        num_items = len(item_domain)
        text_dim = 0 if text_table is None else int(text_table.shape[1])
        self.towers_config = towers
        self.train_config = train
        self.text_table = None
        if towers.use_text:
            if text_table is None:
                raise ValueError("towers.use_text is true but no text vectors were given")
            self.text_table = self.add_weight(shape=text_table.shape, name="text_table", trainable=False,
                                              initializer=keras.initializers.Constant(text_table))
            means = text_means if towers.center_text_by_domain else np.zeros_like(text_means)
            self.text_domain = self.add_weight(shape=text_domain.shape, dtype="int32", trainable=False,
                                               name="text_domain", initializer=keras.initializers.Constant(text_domain))
            self.text_means = self.add_weight(shape=means.shape, trainable=False, name="text_means",
                                              initializer=keras.initializers.Constant(means))
        self.item_domain = self.add_weight(shape=(num_items,), dtype="int32", trainable=False, name="item_domain",
                                           initializer=keras.initializers.Constant(item_domain))
        self.id_known = self.add_weight(shape=(num_items,), dtype="bool", trainable=False, name="id_known",
                                        initializer=keras.initializers.Constant(id_known))
        self.item_probability = self.add_weight(shape=(num_items,), trainable=False, name="item_probability",
                                                initializer=keras.initializers.Constant(item_probability))
        # Items that mixed negative sampling draws from: those seen in training (new items stay unseen).
        known_rows = np.flatnonzero(np.asarray(id_known)).astype(np.int32)
        known_rows = known_rows if len(known_rows) else np.ones(1, np.int32)
        self.negative_pool = tf.constant(known_rows)
        # Catalogue softmax: each row's position in the pool (the label of a query whose target it is).
        position = np.zeros(num_items, np.int32)
        position[known_rows] = np.arange(len(known_rows), dtype=np.int32)
        self.pool_position = tf.constant(position)
        self.pool_domain = tf.constant(np.asarray(item_domain, np.int32)[known_rows])
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
                                    name="item_tower")
        self.user_tower = UserTower(num_domains, towers.history_length, towers.embedding_dim,
                                    self_attention_layers=towers.self_attention_layers,
                                    user_id_buckets=towers.user_id_buckets, dropout=towers.dropout,
                                    domain_dropout=towers.domain_dropout, name="user_tower")
        self.user_hashing = (keras.layers.Hashing(towers.user_id_buckets, name="user_hashing")
                             if towers.user_id_buckets else None)
        self.task = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.SUM_OVER_BATCH_SIZE),
            temperature=train.temperature, remove_accidental_hits=train.remove_accidental_hits,
            num_hard_negatives=train.hard_negatives or None)
        # Keras 3 runs train steps without autograph, and TFRS's Retrieval.call needs it
        # (`len(tf.shape(x))`): the task call gets its own tf.function (see ../shared/STACK.md).
        self._task_loss = tf.function(
            lambda q, c, w, p, ids, mask: self.task(q, c, sample_weight=w, candidate_sampling_probability=p,
                                                    candidate_ids=ids, compute_metrics=False, score_mask=mask))

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

    def item_embeddings(self, rows, training=False, live_text=False, use_ids=True):
        """(n,) item rows -> (n, e); each distinct row goes through the tower once. ``use_ids``
        false embeds every item from its text alone (as a new item is)."""
        flat = ops.reshape(rows, [-1])
        unique, position = tf.unique(flat)
        text = self._text_vectors(unique, live=live_text)
        known = ops.take(self.id_known, unique)
        if not use_ids:
            known = ops.zeros_like(known)
        embedded = self.item_tower(text, ops.take(self.item_domain, unique), unique, known, training=training)
        return tf.reshape(tf.gather(embedded, position), tf.concat([tf.shape(rows), [-1]], 0))

    # -- query side -------------------------------------------------------------------------
    def call(self, inputs, training=False):
        if len(inputs["target_domain"].shape) == 2:  # a batch of sequences: a query at every position
            return self._sequence_queries(inputs, training)
        history = ops.cast(inputs["history"], "int32")
        share = self.towers_config.target_domain_history_dropout
        if training and share > 0:  # some queries become cross-domain cold starts
            same = ops.equal(ops.take(self.item_domain, history), ops.cast(inputs["target_domain"], "int32")[:, None])
            cold = keras.random.uniform(ops.shape(history)[:1]) < share
            history = ops.where(ops.logical_and(same, cold[:, None]), ops.zeros_like(history), history)
        return self.query(self.item_embeddings(history, training=training), history, inputs["target_domain"],
                          inputs.get("user_id"), training=training)

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

    def query(self, history_embeddings, history, target_domain, user_id=None, training=False):
        return user_query(self.user_tower, self.item_domain, self.user_hashing, history_embeddings, history,
                          target_domain, user_id, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        query, target, weight = self._flat_targets(x, y_pred)
        if self.train_config.negatives == "catalogue":
            return self._catalogue_loss(query, target, weight, training)
        candidates_rows = target
        sampled = self.train_config.sampled_negatives if training else 0
        if sampled:
            # Mixed negatives: the batch's targets, then ``sampled`` items drawn uniformly from the pool.
            pick = tf.random.uniform([sampled], 0, tf.shape(self.negative_pool)[0], dtype=tf.int32)
            candidates_rows = tf.concat([target, tf.gather(self.negative_pool, pick)], axis=0)
        candidates = self.item_embeddings(candidates_rows, training=training, live_text=training)
        text_only = None
        if training and self.towers_config.text_only_loss_weight > 0 and self.text_table is not None:
            text_only = self.item_embeddings(candidates_rows, training=training, live_text=training, use_ids=False)
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
                                   else ops.zeros_like(self.negative_pool, dtype="bool"), training=training)
            logits = ops.matmul(query, ops.transpose(ops.cast(pool, "float32"))) / self.train_config.temperature
            if mask is not None:
                logits = ops.where(mask, logits, ops.full_like(logits, -1e9))
            per_query = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            return ops.sum(per_query * weight) / ops.cast(ops.shape(target)[0], "float32")

        loss = loss_against(use_ids=True)
        if training and self.towers_config.text_only_loss_weight > 0 and self.text_table is not None:
            loss = loss + self.towers_config.text_only_loss_weight * loss_against(use_ids=False)
        return loss + ops.sum(self.losses) if self.losses else loss

    def all_item_embeddings(self, batch_size: int = 8192) -> np.ndarray:
        """(num_items, e) embeddings of every item row (row 0 is padding)."""
        n = int(self.item_domain.shape[0])
        out = [np.asarray(self.item_embeddings(ops.arange(s, min(n, s + batch_size), dtype="int32")))
               for s in range(0, n, batch_size)]
        return np.concatenate(out)
