"""The served order: the ranker's order, except for items it has no behaviour to judge by.

A new item (no training interaction) has no count, no co-visitation and no propagation weight;
its only evidence is its text, which the towers' score already reads. However fairly the ranker
is trained (``ranking.tables``: new-style items in its training lists; ``fresh_parity``), a
ranker that promotes popular items puts every new item below them. With
``ranking.new_items: retrieval_rank`` (the default) each new item keeps the place the towers'
score gives it in the merged list, and the ranker orders the other items around them; with
``ranker`` the ranker orders everything. One TensorFlow function, used by the ``recommender``
SavedModel and by the evaluation of the served list, so both give the same order.
"""

from __future__ import annotations

import tensorflow as tf

NEW_ITEM_POLICIES = ("retrieval_rank", "ranker")


def with_popularity_prior(ranker_scores, candidates, popularity, cold, weight: float):
    """The ranker's scores plus ``weight`` x log(1 + the candidate's training interactions) in the
    lists of cross-domain cold-start queries (``cold``, (b,): no history in the target domain):
    the ranker learns mostly from users it knows in the domain and under-weights there what is
    popular in it (``ranking.cold_start_popularity``). ``weight`` 0 leaves the scores as they are."""
    ranker_scores = tf.cast(ranker_scores, tf.float32)
    if not weight:
        return ranker_scores
    prior = tf.math.log1p(tf.gather(tf.cast(popularity, tf.float32), tf.cast(candidates, tf.int32)))
    return ranker_scores + float(weight) * tf.cast(cold, tf.float32)[:, None] * prior


def _place(scores, valid):
    """(b, L) each valid entry's 0-based place by ``scores`` (best first; ties by position);
    invalid entries come after every valid one."""
    keyed = tf.where(valid, scores, tf.float32.min)
    order = tf.argsort(keyed, axis=1, direction="DESCENDING", stable=True)
    return tf.argsort(order, axis=1, stable=True)


def served_scores(ranker_scores, retrieval_scores, candidates, is_new) -> tf.Tensor:
    """(b, L) scores whose descending order is the served order (higher first): each new item
    at its place in the list by ``retrieval_scores``, the other items in the free places by
    ``ranker_scores``; padding (candidate 0) last."""
    ranker_scores = tf.cast(ranker_scores, tf.float32)
    retrieval_scores = tf.cast(retrieval_scores, tf.float32)
    candidates = tf.cast(candidates, tf.int32)
    real = candidates > 0
    new = tf.cast(is_new, tf.bool) & real
    length = tf.shape(candidates)[1]
    batch = tf.shape(candidates)[0]
    by_retrieval = _place(retrieval_scores, real)  # (b, L) place among the real candidates
    taken = tf.scatter_nd(tf.stack([tf.repeat(tf.range(batch), length), tf.reshape(by_retrieval, [-1])], axis=1),
                          tf.reshape(tf.cast(new, tf.int32), [-1]), tf.stack([batch, length])) > 0  # (b, L) places
    # free places in ascending order, then the taken ones
    free = tf.argsort(tf.cast(taken, tf.int32) * length + tf.range(length)[None, :], axis=1, stable=True)
    warm_place = _place(ranker_scores, real & ~new)  # k-th best other item -> the k-th free place
    place = tf.where(new, by_retrieval, tf.gather(free, tf.minimum(warm_place, length - 1), batch_dims=1))
    place = tf.where(real, place, length + tf.range(length)[None, :])  # padding after everything
    return -tf.cast(place, tf.float32)
