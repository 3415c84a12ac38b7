"""A history's scores under one candidate source, in the graph, without a catalogue-wide tensor.

The graph's twin of ``ranking.sources.NeighbourTable.scores``: a history of H item rows reaches
at most H x M items (M neighbours each), so the scores live on those entries, sorted by item row,
each item's weights summed over its run (``unsorted_segment_sum``): the cost of a request follows
its history, not the catalogue (a dense (batch, catalogue) sum was 3 of the served list's 4 ms at
100k items). ``of`` looks candidates up (``searchsorted``); ``reached`` gives every reached item
once, with its score, for a source's top-k proposals.
"""

from __future__ import annotations

import tensorflow as tf


def sorted_member(values, rows):
    """(b, N) bool: ``values[i, j]`` is one of the nonzero ``rows[i]`` (b, H)."""
    ordered = tf.sort(rows, axis=1)
    ordered = tf.concat([ordered, tf.zeros_like(ordered[:, :1])], axis=1)  # never empty
    position = tf.minimum(tf.searchsorted(ordered, values, side="left"), tf.shape(ordered)[1] - 1)
    return (tf.gather(ordered, position, batch_dims=1) == values) & (values > 0)


class SourceScores:
    """The scores of one batch of histories (b, H) under a neighbour table (``neighbours``,
    ``weights``: (size, M)), history position ``t`` from the most recent weighing
    ``1 / (1 + t) ** position_decay``; items the history does not reach score 0."""

    def __init__(self, neighbours, weights, position_decay: float, history):
        history = tf.cast(history, tf.int32)
        batch, horizon = tf.shape(history)[0], tf.shape(history)[1]
        distance = tf.cast(tf.range(horizon - 1, -1, -1), tf.float32)
        position = 1.0 / tf.pow(1.0 + distance, position_decay)  # (H,)
        weight = tf.gather(weights, history) * position[None, :, None] * tf.cast(history > 0, tf.float32)[..., None]
        items = tf.reshape(tf.gather(neighbours, history), [batch, -1])
        weight = tf.reshape(weight, [batch, -1])
        # one empty entry in front: never an empty row, and padding sorts first
        items = tf.concat([tf.zeros([batch, 1], tf.int32), tf.where(weight > 0, items, 0)], axis=1)
        weight = tf.concat([tf.zeros([batch, 1], tf.float32), weight], axis=1)
        order = tf.argsort(items, axis=1, stable=True)
        self.items = tf.gather(items, order, batch_dims=1)  # (b, N) ascending
        width = tf.shape(self.items)[1]
        self.first = tf.concat([tf.ones([batch, 1], tf.bool), self.items[:, 1:] != self.items[:, :-1]], axis=1)
        self.run = tf.cumsum(tf.cast(self.first, tf.int32), axis=1) - 1  # (b, N) each entry's item, per row
        segment = self.run + tf.range(batch)[:, None] * width
        total = tf.math.unsorted_segment_sum(tf.gather(weight, order, batch_dims=1), segment, batch * width)
        self.total = tf.reshape(total, [batch, width])  # [i, r]: the summed weight of row i's r-th item

    def of(self, candidates):
        """(b, L) the score of each candidate item row (0 = not reached, or padding)."""
        candidates = tf.cast(candidates, tf.int32)
        position = tf.minimum(tf.searchsorted(self.items, candidates, side="left"), tf.shape(self.items)[1] - 1)
        hit = (tf.gather(self.items, position, batch_dims=1) == candidates) & (candidates > 0)
        score = tf.gather(self.total, tf.gather(self.run, position, batch_dims=1), batch_dims=1)
        return tf.where(hit, score, 0.0)

    def reached(self):
        """(b, N) item rows and scores: every reached item once (its other entries and padding: 0)."""
        keep = self.first & (self.items > 0)
        return tf.where(keep, self.items, 0), tf.where(keep, tf.gather(self.total, self.run, batch_dims=1), 0.0)
