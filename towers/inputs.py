"""The towers' input pipeline: ``tf.data`` batches over the training examples of an
``crossrec.experiment.ExperimentData``."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from crossrec.features import Examples
from crossrec.windows import Windows


def make_dataset(examples: Windows | Examples, batch_size: int, *, seed: int = 0,
                 balance_domains: bool = False, shuffle: bool = True, with_user_ids: bool = False,
                 shard: tuple[int, int] = (1, 0)) -> tf.data.Dataset:
    """Batches of training features. Whole batches are gathered from in-memory tensors by a shuffled index (one shuffle per
    epoch), which is several times faster than slicing examples one by one; ``Windows`` keep one
    row per interaction and each batch's histories are built by one gather, so memory grows with
    the interactions, not interactions x history length. ``balance_domains`` draws every domain's
    examples equally often instead. ``shard`` (count, index): this input
    pipeline's share of a multi-worker run: every pipeline shuffles the same way (same seed) and
    keeps every count-th example, all with the same number of batches."""
    columns = {"target": examples.target, "target_domain": examples.target_domain, "weight": examples.weight}
    if isinstance(examples, Windows):
        columns.update(position=examples.position, user_start=examples.user_start)
    else:
        columns["history"] = examples.history
    if with_user_ids:
        columns["user_id"] = examples.user_id.astype(str)
    tensors = {k: tf.constant(v) for k, v in columns.items()}
    n = len(examples)
    if balance_domains:
        domains = examples.target_domain
        parts = [tf.data.Dataset.from_tensor_slices(np.flatnonzero(domains == d).astype(np.int64))
                 .shuffle(int((domains == d).sum()), seed=seed).repeat() for d in np.unique(domains)]
        index = tf.data.Dataset.sample_from_datasets(parts, seed=seed).take(n)
    else:
        index = tf.data.Dataset.range(n)
        if shuffle:
            index = index.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    count, which = shard
    if count > 1:
        n //= count
        index = index.take(n * count).shard(count, which)
    drop = n >= batch_size
    batches = index.batch(batch_size, drop_remainder=drop)
    gather = _window_batch(examples, tensors) if isinstance(examples, Windows) else \
        (lambda i: {k: tf.gather(t, i) for k, t in tensors.items()})
    return batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _window_batch(windows: Windows, tensors: dict):
    """index batch -> features, each history built from the flat rows (``crossrec.windows``)."""
    rows = tf.constant(windows.rows)
    steps = tf.range(windows.history_length, dtype=tf.int32) - windows.history_length

    def gather(i):
        batch = {k: tf.gather(t, i) for k, t in tensors.items()}
        position, start = batch.pop("position"), batch.pop("user_start")
        offsets = position[:, None] + steps[None, :]
        batch["history"] = tf.where(offsets >= start[:, None], tf.gather(rows, tf.maximum(offsets, 0)), 0)
        return batch

    return gather
