"""The towers' training step against the machine's roofline (used by ``bench.towers``).

- ``step_flops``: one training step's floating-point operations for the default model, counted
  from the layer shapes: the item tower on every distinct item a batch reads (history and
  targets, measured on real batches), the user tower on every query, the in-batch logits of the
  loss (and of the text-only loss); backward taken as twice forward (the usual 3x rule), less the
  input gradient of the layers that read the frozen text (nothing upstream of it trains).
- ``matmul_rate``: the sustained float32 matmul rate of this machine, measured now (large
  square matmuls in a graph, best of several runs).
- ``step_split``: a step's time split into input pipeline, forward (with the loss),
  backward and optimizer update, each timed alone in a graph.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf


def matmul_rate(size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of float32 ``size`` x ``size`` matmuls (the best of three timings)."""
    a, b = tf.random.normal([size, size]), tf.random.normal([size, size])
    matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    matmul(a, b).numpy()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            out = matmul(a, b)
        out.numpy()
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * size ** 3 / best


def distinct_items(batches) -> float:
    """Mean number of distinct item rows (history and target) per batch."""
    counts = []
    for x in batches:
        rows = np.concatenate([np.asarray(x["history"]).ravel(), np.asarray(x["target"]).ravel()])
        counts.append(len(np.unique(rows[rows > 0])))
    return float(np.mean(counts))


def step_flops(model, batch_size: int, items_per_step: float) -> float:
    """Forward + backward FLOPs of one step (see the module docstring)."""
    towers = model.tower_spec
    tower = model.item_tower
    e, d, k = towers.embedding_dim, tower.text_dim, towers.text_experts
    domains = tower.num_domains
    item, reads_text = 0.0, 0.0
    if towers.use_text:
        reads_text = 2 * d * 2 * e + ((2 * d * k * e + 2 * d * k) if k else 0)  # shared hidden, experts, gate
        item += reads_text + (2 * k * e if k else 2 * 2 * e * e)  # the experts' mix, or the second layer
        item += 2 * 2 * e * domains * e  # per-domain adapters
    h = towers.history_length
    # pooling key/query, one score and five weighted sums over the H slots' item embeddings
    # (attention, latest, same-domain mean and latest, whole mean), the two-layer head on 5 parts
    query = 2 * e * e * 2 + 2 * h * e + 5 * 2 * h * e + 2 * 5 * e * 2 * e + 2 * 2 * e * e
    losses = 1 + (model.loss_spec.text_only_loss_weight > 0 and towers.use_text)
    logits = losses * 2 * batch_size * batch_size * e
    forward = items_per_step * item + batch_size * query + logits
    # backward = 2 x forward (the gradients of a layer's weights and of its input), except that
    # the layers reading the frozen text need no input gradient: 1 x forward for those
    return 3.0 * forward - items_per_step * reads_text


def _best_seconds(function, argument, repeats: int) -> float:
    """The best of three timings of ``repeats`` calls (after one that traces)."""
    function(argument)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            out = function(argument)
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def step_split(model, optimizer, batch, repeats: int = 10) -> dict[str, float]:
    """Seconds of: forward (+loss), backward (forward+backward minus forward), the optimizer
    update alone (on gradients computed once) and the whole step, each timed in its own graph."""
    variables = model.trainable_variables

    @tf.function
    def forward(x):
        return model.compute_loss(x, None, model(x, training=True), training=True)

    @tf.function
    def gradients(x):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x, None, model(x, training=True), training=True)
        return tape.gradient(loss, variables)

    @tf.function
    def update(grads):
        optimizer.apply(grads, variables)
        return optimizer.iterations

    @tf.function
    def step(x):
        return update(gradients(x))

    seconds = {name: _best_seconds(function, batch, repeats)
               for name, function in (("forward", forward), ("forward_backward", gradients), ("step", step))}
    seconds["optimizer"] = _best_seconds(update, gradients(batch), repeats)
    return {"forward": seconds["forward"], "backward": max(seconds["forward_backward"] - seconds["forward"], 0.0),
            "optimizer": seconds["optimizer"], "step": seconds["step"]}


def input_seconds(dataset, steps: int) -> float:
    """Seconds per batch of the input pipeline alone."""
    iterator = iter(dataset)
    next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return (time.perf_counter() - start) / steps
