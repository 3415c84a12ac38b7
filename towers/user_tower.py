"""``UserTower``: a user's history (item embeddings from the item towers, plus domain and recency
embeddings), attention pooling whose query is the *target domain*, the most recent item, and an
optional hashed user id -> one L2-normalised query. (Self-attention blocks before the pooling
measured worse and slower: docs: design notes.)"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def latest_slot(mask):
    """(b, H) bool -> (b, H) float: 1 at the last position where ``mask`` is true (none: all 0).
    Multiplied into the history as a weight (``UserTower.call``) rather than gathered: a gather's
    gradient was a fifth of a training step (bench.towers' step split)."""
    slots = ops.arange(ops.shape(mask)[1])
    latest = ops.argmax(ops.cast(mask, "int32") * (slots[None, :] + 1), axis=1)  # (b,)
    return ops.one_hot(latest, ops.shape(mask)[1]) * ops.cast(ops.any(mask, axis=1), "float32")[:, None]


def _mean_weights(mask_f):
    """(b, H) 0/1 -> (b, H) weights of the mean over the marked slots (none: all 0)."""
    return mask_f / ops.maximum(ops.sum(mask_f, axis=1, keepdims=True), 1.0)


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
                 user_id_buckets: int = 0, dropout: float = 0.1,
                 domain_dropout: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.num_domains = num_domains
        self.history_length = history_length
        self.embedding_dim = embedding_dim
        self.user_id_buckets = user_id_buckets
        self.dropout = dropout
        self.domain_dropout = domain_dropout
        e = embedding_dim
        self.history_domain = keras.layers.Embedding(num_domains, e, name="history_domain")
        self.history_domain.build((None,))  # read as a matrix (``call``), never called
        self.recency = keras.layers.Embedding(history_length, e, name="recency")  # slot H-1 = most recent
        self.recency.build((None,))  # read as a matrix too
        self.target_domain = keras.layers.Embedding(num_domains, e, name="target_domain")
        self.key = keras.layers.Dense(e, use_bias=False, name="pool_key")
        self.key.build((None, e))
        self.query = keras.layers.Dense(e, use_bias=False, name="pool_query")
        self.user_embedding = (keras.layers.Embedding(user_id_buckets, e, name="user_id_embedding")
                               if user_id_buckets else None)
        self.hidden = keras.layers.Dense(2 * e, activation="gelu", name="hidden")
        self.drop = keras.layers.Dropout(dropout)
        # Its own seed state, made here: an unseeded keras.random call would create a global one
        # inside the first traced step, which a distribution strategy refuses.
        self.seed_generator = keras.random.SeedGenerator()
        self.out = keras.layers.Dense(e, name="out")

    def call(self, history_embeddings, history_mask, history_domain, target_domain, user_bucket=None,
             training=False):
        # history_embeddings: (b, H, e); history_mask: (b, H) bool; history_domain: (b, H) int
        # target_domain: (b,) int; user_bucket: (b,) int or None
        if training and self.domain_dropout > 0:
            drop = keras.random.uniform(ops.shape(target_domain), seed=self.seed_generator) < self.domain_dropout
            target_domain = ops.where(drop, ops.zeros_like(target_domain), target_domain)
        mask_f = ops.cast(history_mask, "float32")  # (b, H)
        # Each history slot is x_j = item_j + domain_j + recency_j (masked). The pooling reads x
        # only through weighted sums and dot products, so both are taken term by term (the item
        # embeddings by batched matmuls, the domain and recency tables as matrices) and the
        # (b, H, e) x is never built: about a quarter of a training step less than building it,
        # with the same numbers (tests/test_towers.py).
        domains = ops.one_hot(history_domain, self.num_domains)  # (b, H, D)
        domain_table, recency = self.history_domain.embeddings, self.recency.embeddings  # (D, e), (H, e)
        wanted = self.target_domain(target_domain)  # (b, e)
        # key(x_j) . query(w) == x_j . (query(w) K^T): project the one query, not every history slot.
        probe = ops.matmul(self.query(wanted), ops.transpose(self.key.kernel))  # (b, e)
        scores = (ops.matmul(history_embeddings, probe[:, :, None])[..., 0]
                  + ops.matmul(domains, ops.matmul(probe, ops.transpose(domain_table))[:, :, None])[..., 0]
                  + ops.matmul(probe, ops.transpose(recency))) / np.sqrt(self.embedding_dim)
        scores = ops.where(history_mask, scores, ops.full_like(scores, -1e9))
        # Weights over the slots (b, 5, H), each zero on padding: the attention pooling, the most
        # recent item, and inside the target domain (what a single-domain model would see) the
        # mean and the most recent item, which keep warm users' same-domain signal from being
        # diluted by the other domains (still carrying cold-start users through the pooling); last,
        # the mean of the whole history (the residual below).
        same = ops.logical_and(history_mask, ops.equal(history_domain, target_domain[:, None]))  # (b, H)
        last = ops.pad(mask_f[:, -1:], [[0, 0], [self.history_length - 1, 0]])  # slot H-1 (right-aligned), if kept
        on_x = ops.stack([ops.softmax(scores, axis=-1) * mask_f, last], axis=1)
        weights = ops.concatenate([on_x, ops.stack([_mean_weights(ops.cast(same, "float32")), latest_slot(same),
                                                    _mean_weights(mask_f)], axis=1)], axis=1)
        sums = ops.matmul(weights, history_embeddings)  # (b, 5, e)
        pooled_last = sums[:, :2] + ops.matmul(ops.matmul(on_x, domains), domain_table) + ops.matmul(on_x, recency)
        batch = ops.shape(sums)[0]
        same_mean, mean = sums[:, 2], sums[:, 4]
        parts = [ops.reshape(pooled_last, (batch, 2 * self.embedding_dim)), wanted,
                 ops.reshape(sums[:, 2:4], (batch, 2 * self.embedding_dim))]  # pooled, last, wanted, same mean, same last
        if self.user_embedding is not None and user_bucket is not None:
            parts.append(self.user_embedding(user_bucket))
        hidden = self.drop(self.hidden(ops.concatenate(parts, axis=-1)), training=training)
        # Residual: the mean of the history's item embeddings, so the query starts from "items like
        # the ones this user had" (the two-tower form of item-kNN) and the MLP learns corrections.
        return ops.normalize(self.out(hidden) + mean + same_mean, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update({k: getattr(self, k) for k in (
            "num_domains", "history_length", "embedding_dim", "user_id_buckets",
            "dropout", "domain_dropout")})
        return config
