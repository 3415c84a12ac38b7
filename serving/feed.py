"""The ``recommender``'s ``feed`` signature: one list across every served domain.

The request's history is asked of the recommender once per served domain (the same retrieval,
candidate sources, ranker and served order as ``serving_default``); each domain's served list is
put on one scale (``ranking.feed``: the r-th item of a domain's served list gets the r-th largest
of the ranker's softmax over that domain's merged list, times ``p(domain | user)``), and
``ranking.feed.select`` picks ``n`` items for relevance, ``diversity`` (MMR over the towers' item
vectors) and ``calibration`` (KL to the history's domain shares, or to ``target_shares``).

Inputs: ``history_item_ids``, ``history_domains`` (as every model), ``n`` (b,), ``diversity``
(b,) in [0, 1], ``calibration`` (b,) in [0, 100], ``target_shares`` (b, D) in the order of the model's
domains (its metadata), each row summing to 1, or (b, 0) / a row of -1s for the history's shares,
and ``exclude_history`` (b,). Outputs: ``item_ids``, ``domains``, ``scores`` (the calibrated
probability), ``retrieval_scores`` and the ``because_*`` explanation, n wide ("" / -inf past n), and
``history_known`` (b,), the history items the model knows (0: served as a brand-new user).
Standard TensorFlow ops only: stock TF Serving serves it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ranking.feed import MAX_CALIBRATION, calibrated_scores, domain_shares, select
from serving.lookups import UNKNOWN_SCORE
from serving.parts import ExportParts
from serving.signatures import RecommenderModule, checked

SHARE_TOLERANCE = 1e-3  # |sum of a row of target_shares - 1| allowed


def _feed_specs():
    return [tf.TensorSpec([None, None], tf.string, name="history_item_ids"),
            tf.TensorSpec([None, None], tf.string, name="history_domains"),
            tf.TensorSpec([None], tf.int32, name="n"),
            tf.TensorSpec([None], tf.float32, name="diversity"),
            tf.TensorSpec([None], tf.float32, name="calibration"),
            tf.TensorSpec([None, None], tf.float32, name="target_shares"),
            tf.TensorSpec([None], tf.bool, name="exclude_history")]


class FeedRecommenderModule(RecommenderModule):
    """The ``recommender`` with a second signature, ``feed``."""

    def __init__(self, parts: ExportParts):
        super().__init__(parts)
        self.per_domain = int(min(self.max_k, self.candidates))  # each domain's served list in the feed
        self.prior = tf.constant(self._prior(parts), tf.float32)
        self.feed = tf.function(self._feed, input_signature=_feed_specs(), autograph=False)
        self.extra_signatures = {"feed": self.feed}

    def _prior(self, parts: ExportParts) -> np.ndarray:
        """(D,) the training interactions' share per served domain (uniform when there are none):
        a constant of the export (an added item has no interactions, so a catalogue refresh keeps it)."""
        popularity = np.asarray(parts.ranker.features.tables["popularity"].numpy(), np.float64)
        served = np.asarray(self.lookups.item_served.numpy())
        counts = np.bincount(served, weights=popularity, minlength=len(self.lookups.served) + 1)[1:]
        total = counts.sum()
        return counts / total if total > 0 else np.full(len(counts), 1.0 / len(counts))

    def _feed_checks(self, history_item_ids, history_domains, n, diversity, calibration, target_shares,
                     exclude_history):
        batch = tf.shape(history_item_ids)[0]
        domains = len(self.lookups.served)
        history_shares = tf.reduce_all(tf.equal(target_shares, -1.0), axis=1)  # exactly -1, not any negative
        totals = tf.reduce_sum(tf.maximum(target_shares, 0.0), axis=1)
        one_value = "must have one value per request (one per row of history_item_ids)"
        return [
            tf.debugging.assert_positive(batch, message="history_item_ids: the batch is empty; send at least one row"),
            tf.debugging.assert_equal(tf.shape(history_item_ids), tf.shape(history_domains),
                                      message="history_item_ids and history_domains: must have the same shape"),
            *[tf.debugging.assert_equal(tf.shape(t)[0], batch, message=f"{name}: {one_value}")
              for name, t in (("n", n), ("diversity", diversity), ("calibration", calibration),
                              ("target_shares", target_shares), ("exclude_history", exclude_history))],
            tf.debugging.assert_positive(n, message="n: must be at least 1"),
            tf.debugging.assert_less_equal(n, self.max_k, message=f"n: must be at most {self.max_k} (export.max_k)"),
            tf.debugging.assert_equal(tf.reduce_all(tf.math.is_finite(diversity) & (diversity >= 0) & (diversity <= 1)),
                                      True, message="diversity: must be a number from 0 to 1"),
            tf.debugging.assert_equal(tf.reduce_all(tf.math.is_finite(calibration) & (calibration >= 0)
                                                    & (calibration <= MAX_CALIBRATION)), True,
                                      message=f"calibration: must be a number from 0 to {MAX_CALIBRATION:g}"),
            tf.debugging.assert_equal(tf.reduce_all(tf.equal(tf.shape(target_shares)[1], 0)
                                                    | tf.equal(tf.shape(target_shares)[1], domains)), True,
                                      message=f"target_shares: must have 0 columns (the history's shares) or one per "
                                              f"domain ({domains}: {', '.join(self.lookups.served)})"),
            tf.debugging.assert_equal(tf.reduce_all(tf.math.is_finite(target_shares)), True,
                                      message="target_shares: must be numbers (NaN or infinity given)"),
            tf.debugging.assert_equal(tf.reduce_all(history_shares | ((tf.reduce_min(target_shares, axis=1) >= 0)
                                                                      & (tf.abs(totals - 1.0) <= SHARE_TOLERANCE))),
                                      True, message="target_shares: a row must be shares of at least 0 summing to 1, "
                                                    "or all -1 for the history's shares"),
        ]

    def _feed(self, history_item_ids, history_domains, n, diversity, calibration, target_shares, exclude_history):
        checks = self._feed_checks(history_item_ids, history_domains, n, diversity, calibration, target_shares,
                                   exclude_history)
        history_item_ids, history_domains, n, diversity, calibration, target_shares, exclude_history = checked(
            checks, history_item_ids, history_domains, n, diversity, calibration, target_shares, exclude_history)
        batch, domains, width = tf.shape(history_item_ids)[0], len(self.lookups.served), self.per_domain
        names = tf.tile(tf.constant(self.lookups.served), [batch])  # (b * D,) every domain per request
        query, rows, target = self._query(tf.repeat(history_item_ids, domains, axis=0),
                                          tf.repeat(history_domains, domains, axis=0), names)
        found, ranked, towers, order_by = self._served_list(query, rows, target,
                                                            tf.repeat(exclude_history, domains, axis=0), domains)
        # one scale: the r-th served item gets the r-th largest probability of its domain's list
        history_domain = tf.gather(self.lookups.item_served, rows[::domains]) - 1  # (b, H), -1 = none
        shares = domain_shares(history_domain, domains, self.prior)  # (b, D)
        logits = tf.ensure_shape(tf.reshape(ranked, [batch, domains, -1]), [None, None, None])  # a known rank
        probability = calibrated_scores(logits, tf.reshape(found > 0, [batch, domains, -1]), shares, tf.range(domains))
        by_rank = tf.sort(probability, axis=2, direction="DESCENDING")[:, :, :width]
        _, order = tf.math.top_k(order_by, k=width)
        picked = tf.gather(found, order, batch_dims=1)  # (b * D, K) each domain's served list
        retrieval = tf.gather(towers, order, batch_dims=1)
        picked, retrieval, scores = (tf.reshape(t, [batch, domains * width]) for t in (picked, retrieval, by_rank))
        domain_of = tf.tile(tf.repeat(tf.range(domains), width)[None, :], [batch, 1])
        explicit = tf.reduce_any(target_shares >= 0, axis=1, keepdims=True) & (tf.shape(target_shares)[1] > 0)
        target = tf.where(explicit, tf.pad(target_shares, [[0, 0], [0, domains - tf.shape(target_shares)[1]]]), shares)
        vectors = tf.math.l2_normalize(self.lookups.embedding_rows(picked), axis=-1)
        choice = select(scores, domain_of, vectors, picked > 0, target, n, diversity, calibration, self.max_k)
        limit = tf.minimum(tf.reduce_max(n), self.max_k)
        choice = choice[:, :limit]
        beyond = choice < 0
        index = tf.maximum(choice, 0)
        items = tf.where(beyond, 0, tf.gather(picked, index, batch_dims=1))
        names_of = tf.gather(tf.constant(self.lookups.served), tf.gather(domain_of, index, batch_dims=1))
        return {"item_ids": tf.where(beyond, tf.constant(b""), tf.gather(self.lookups.item_ids, items)),
                "domains": tf.where(beyond, tf.constant(b""), names_of),
                "scores": tf.where(beyond, UNKNOWN_SCORE, tf.gather(scores, index, batch_dims=1)),
                "retrieval_scores": tf.where(beyond, UNKNOWN_SCORE, tf.gather(retrieval, index, batch_dims=1)),
                **self._history_counts(rows[::domains]),
                **self._because(items, rows[::domains], beyond)}
