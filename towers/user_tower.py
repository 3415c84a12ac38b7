"""``UserTower``: a user's history (item embeddings from the item towers, plus domain and recency
embeddings), attention pooling whose query is the *target domain*, the most recent item, and an
optional hashed user id -> one L2-normalised query. (Self-attention blocks before the pooling
measured worse and slower: README, Retrieval levers.)"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


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
        self.history_domain.build((None,))  # read as a matrix (``_domain_vectors``), never called
        self.recency = keras.layers.Embedding(history_length, e, name="recency")  # slot H-1 = most recent
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

    def _domain_vectors(self, history_domain):
        """(b, H) domains -> (b, H, e) as a one-hot matmul, not a gather: the table's gradient is
        then a dense (domains, e) matrix instead of b x H sparse rows to sum (a third of the
        optimizer's time per step when it was a gather)."""
        one_hot = ops.one_hot(history_domain, self.num_domains)
        return ops.matmul(one_hot, ops.cast(self.history_domain.embeddings, one_hot.dtype))

    def call(self, history_embeddings, history_mask, history_domain, target_domain, user_bucket=None,
             training=False):
        # history_embeddings: (b, H, e); history_mask: (b, H) bool; history_domain: (b, H) int
        # target_domain: (b,) int; user_bucket: (b,) int or None
        if training and self.domain_dropout > 0:
            drop = keras.random.uniform(ops.shape(target_domain), seed=self.seed_generator) < self.domain_dropout
            target_domain = ops.where(drop, ops.zeros_like(target_domain), target_domain)
        mask_f = ops.cast(history_mask, "float32")[..., None]  # (b, H, 1)
        slots = ops.arange(self.history_length)
        x = (history_embeddings + self._domain_vectors(history_domain) + self.recency(slots)[None]) * mask_f
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

    def get_config(self):
        config = super().get_config()
        config.update({k: getattr(self, k) for k in (
            "num_domains", "history_length", "embedding_dim", "user_id_buckets",
            "dropout", "domain_dropout")})
        return config
