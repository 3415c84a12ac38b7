"""A history's scores under one candidate source, in the graph, without a catalogue-wide tensor.

The graph's twin of ``ranking.sources.NeighbourTable.scores``: a history of H item rows reaches
at most H x M items (M neighbours each), so the cost of a request follows its history, not the
catalogue (a top-k over the catalogue's masked sums was most of what the sources cost the served
list: 4.4 -> 2.9 ms at 100k items without it). ``reached`` gives every reached item once, with its
score, for a source's top-k proposals. ``of`` scores the ranker's candidates: a (batch, catalogue)
sum where the catalogue is small (the student on the built-in data: 601k candidates/s, against
319k by lookups) and it fits ``DENSE_BUDGET``, else a lookup in each history item's row, kept in
item order (``sorted_rows``), whose memory follows the request (level with the sum or faster at
100k items). The served list scores its candidates from the ``Reached`` items it proposed from
(one sort per source and request, the same numbers).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def sorted_member(values, rows):
    """(b, N) bool: ``values[i, j]`` is one of the nonzero ``rows[i]`` (b, H)."""
    ordered = tf.sort(rows, axis=1)
    ordered = tf.concat([ordered, tf.zeros_like(ordered[:, :1])], axis=1)  # never empty
    position = tf.minimum(tf.searchsorted(ordered, values, side="left"), tf.shape(ordered)[1] - 1)
    return (tf.gather(ordered, position, batch_dims=1) == values) & (values > 0)


def sorted_rows(neighbours: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A neighbour table with each row's entries in ascending item order (``SourceScores.of``
    looks candidates up in them); the order of a row's entries means nothing else. Tables in
    order already (every table this crossrec saves) are returned as they are, unsorted: at 1M
    items a sort cost seconds on each of the rankers' loads."""
    if neighbours.shape[1] < 2 or bool(np.all(neighbours[:, 1:] >= neighbours[:, :-1])):
        return neighbours, weights
    order = np.argsort(neighbours, axis=1, kind="stable")
    return np.take_along_axis(neighbours, order, 1), np.take_along_axis(weights, order, 1)


# (batch x catalogue) floats a source may sum densely to score candidates (64 MB): serving requests
# and training batches stay under it, a batch job's 1,024 users over a large catalogue do not
DENSE_BUDGET = 1 << 24


class SourceScores:
    """The scores of one batch of histories (b, H) under a neighbour table (``neighbours``,
    ``weights``: (size, M), each row's items distinct and ascending: ``sorted_rows``), history
    position ``t`` from the most recent weighing ``1 / (1 + t) ** position_decay``; items the
    history does not reach score 0."""

    def __init__(self, neighbours, weights, position_decay: float, history, dense_budget: int = DENSE_BUDGET):
        history = tf.cast(history, tf.int32)
        self.size, self.dense_budget = tf.shape(neighbours)[0], dense_budget
        self.batch, self.horizon = tf.shape(history)[0], tf.shape(history)[1]
        distance = tf.cast(tf.range(self.horizon - 1, -1, -1), tf.float32)
        position = 1.0 / tf.pow(1.0 + distance, position_decay)  # (H,)
        self.weight = (tf.gather(weights, history) * position[None, :, None]
                       * tf.cast(history > 0, tf.float32)[..., None])  # (b, H, M)
        self.neighbours = tf.gather(neighbours, history)  # (b, H, M)

    def of(self, candidates):
        """(b, L) the score of each candidate item row (0 = not reached, or padding): from the
        history's (b, catalogue) sums while a row's catalogue is no longer than its lookups and
        they fit ``dense_budget`` floats, else by a lookup in each history item's row (memory
        b x H x L)."""
        candidates = tf.cast(candidates, tf.int32)
        width = tf.cast(tf.shape(self.neighbours)[2], tf.float32)
        lookups = tf.cast(self.horizon * tf.shape(candidates)[1], tf.float32) * tf.math.log(width + 1.0) / tf.math.log(2.0)
        dense = (tf.cast(self.batch, tf.int64) * tf.cast(self.size, tf.int64) <= self.dense_budget) & (
            tf.cast(self.size, tf.float32) <= lookups)  # a row's catalogue no longer than its H x L x log M lookups
        return tf.cond(dense, lambda: self._summed(candidates), lambda: self._looked_up(candidates))

    def _summed(self, candidates):
        rows = tf.range(self.batch)[:, None, None] * self.size + self.neighbours
        dense = tf.math.unsorted_segment_sum(tf.reshape(self.weight, [-1]), tf.reshape(rows, [-1]),
                                             self.batch * self.size)
        score = tf.gather(tf.reshape(dense, [self.batch, self.size]), candidates, batch_dims=1)
        return tf.where(candidates > 0, score, 0.0)

    def _looked_up(self, candidates):
        """Each history item's row searched for every candidate (``searchsorted``; no sort)."""
        width, length = tf.shape(self.neighbours)[2], tf.shape(candidates)[1]
        rows = tf.reshape(self.neighbours, [-1, width])  # (b * H, M)
        values = tf.reshape(tf.repeat(candidates[:, None, :], self.horizon, axis=1), [-1, length])  # (b * H, L)
        position = tf.minimum(tf.searchsorted(rows, values, side="left"), width - 1)
        hit = (tf.gather(rows, position, batch_dims=1) == values) & (values > 0)
        weight = tf.where(hit, tf.gather(tf.reshape(self.weight, [-1, width]), position, batch_dims=1), 0.0)
        return tf.reduce_sum(tf.reshape(weight, [self.batch, self.horizon, length]), axis=1)

    def reached(self) -> Reached:
        """Every item the histories reach, with its summed score (``Reached``): the H x M entries
        sorted by item, each item's run summed (``unsorted_segment_sum``, in entry order: the same
        sums as ``of``'s)."""
        batch = self.batch
        weight = tf.reshape(self.weight, [batch, -1])
        items = tf.where(weight > 0, tf.reshape(self.neighbours, [batch, -1]), 0)
        # one empty entry in front: never an empty row, and padding sorts first
        items = tf.concat([tf.zeros([batch, 1], tf.int32), items], axis=1)
        weight = tf.concat([tf.zeros([batch, 1], tf.float32), weight], axis=1)
        order = tf.argsort(items, axis=1, stable=True)
        items = tf.gather(items, order, batch_dims=1)  # (b, N) ascending
        width = tf.shape(items)[1]
        first = tf.concat([tf.ones([batch, 1], tf.bool), items[:, 1:] != items[:, :-1]], axis=1)
        run = tf.cumsum(tf.cast(first, tf.int32), axis=1) - 1  # (b, N) each entry's item, per row
        total = tf.math.unsorted_segment_sum(tf.gather(weight, order, batch_dims=1),
                                             run + tf.range(batch)[:, None] * width, batch * width)
        return Reached(items, tf.gather(tf.reshape(total, [batch, width]), run, batch_dims=1), first)


class Reached:
    """What a batch of histories reaches under one source (``SourceScores.reached``): ``items``
    (b, N) ascending (0s first: padding and unreached entries), one entry per neighbour entry that
    reaches an item; ``totals`` (b, N) each entry's item's summed score; ``first`` (b, N) whether
    the entry is its item's first. The served list proposes from it and scores its merged
    candidates by it (``of``), so a request sorts each source's entries once."""

    def __init__(self, items, totals, first):
        self.items, self.totals, self.first = items, totals, first

    def unique(self):
        """(b, N) item rows and scores: every reached item once (its other entries and padding: 0)."""
        keep = self.first & (self.items > 0)
        return tf.where(keep, self.items, 0), tf.where(keep, self.totals, 0.0)

    def of(self, candidates):
        """(b, L) each candidate row's score (0 = not reached, or padding): ``SourceScores.of``'s
        numbers, by a search of the sorted items."""
        candidates = tf.cast(candidates, tf.int32)
        position = tf.minimum(tf.searchsorted(self.items, candidates, side="left"), tf.shape(self.items)[1] - 1)
        hit = (tf.gather(self.items, position, batch_dims=1) == candidates) & (candidates > 0)
        return tf.where(hit, tf.gather(self.totals, position, batch_dims=1), 0.0)

    def repeat(self, repeats: int) -> Reached:
        """Each row ``repeats`` times in a row (the feed asks one history of every domain)."""
        if repeats == 1:
            return self
        return Reached(*(tf.repeat(t, repeats, axis=0) for t in (self.items, self.totals, self.first)))
