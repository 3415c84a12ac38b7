"""Compact item tables for exports (``export.quantize``): ``float16``, or ``int8`` with one scale
per row (symmetric codes: a row's largest absolute value maps to 127; the stored scale is the
least-squares fit of the row to its codes). Stored quantized inside the
SavedModel and widened to float32 inside the graph, with core TF ops only, so a brute-force int8
export still loads in stock ``tensorflow/serving``. ``QuantizedTable`` holds one table; the index
(``serving.index``) and the lookups (``serving.lookups``) each keep theirs.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

MODES = ("none", "float16", "int8")
# int8 top-k widens the table a block of rows at a time (a block stays in cache): widening all of
# 1M rows per query cost 6x float32's latency (bench.serving)
BLOCK_ROWS = 16384
# float16 top-k: the shortlist scored in float16 (its own precision, as fast as float32), rescored
# exactly in float32; the shortlist is this many times k
SHORTLIST = 4


def quantize(matrix: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(stored values, per-row scales or None)."""
    matrix = np.asarray(matrix, np.float32)
    if mode == "none":
        return matrix, None
    if mode == "float16":
        return matrix.astype(np.float16), None
    if mode == "int8":
        peak = np.abs(matrix).max(axis=1) if matrix.size else np.zeros(len(matrix), np.float32)
        step = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        codes = np.clip(np.rint(matrix / step[:, None]), -127, 127)
        # then the scale that reconstructs each row best from its codes (least squares): on 100k
        # clustered unit vectors recall@10 vs exact 0.983, against 0.980 with peak / 127
        energy = (codes * codes).sum(axis=1)
        scale = np.where(energy > 0, (matrix * codes).sum(axis=1) / np.maximum(energy, 1e-12), step)
        return codes.astype(np.int8), scale.astype(np.float32)
    raise ValueError(f"quantize must be one of {MODES}, not {mode!r}")


def dequantize(values: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """What the graph computes from the stored table (NumPy, for measurements and tests)."""
    out = np.asarray(values, np.float32)
    return out * scale[:, None] if scale is not None else out


class QuantizedTable(tf.Module):
    """A [n, e] float table kept as ``mode``; ``gather(rows)`` and ``scores(queries)`` in float32."""

    def __init__(self, matrix: np.ndarray, mode: str = "none", name: str = "table"):
        super().__init__(name=name)
        values, scale = quantize(matrix, mode)
        self.mode = mode
        self.values = tf.Variable(values, trainable=False, name="values")
        self.scale = None if scale is None else tf.Variable(scale, trainable=False, name="scale")
        self.nbytes = int(values.nbytes + (0 if scale is None else scale.nbytes))

    def gather(self, rows):
        out = tf.cast(tf.gather(self.values, rows), tf.float32)
        if self.scale is not None:
            out = out * tf.gather(self.scale, rows)[..., None]
        return out

    def top_k(self, queries, k: int):
        """(scores, positions) [b, k] of the rows with the largest dot products, scored as
        ``scores`` does, without widening the whole table per query: int8 block by block, float16
        by a float16 shortlist rescored in float32."""
        n = int(self.values.shape[0])
        k = min(k, n)
        if self.mode == "float16":
            # top_k over float32 scores: over float16 ones it is slower than the float16 matmul
            rough = tf.cast(tf.matmul(tf.cast(queries, tf.float16), self.values, transpose_b=True), tf.float32)
            _, shortlist = tf.math.top_k(rough, k=min(SHORTLIST * k, n))
            exact = tf.einsum("be,bse->bs", queries, tf.cast(tf.gather(self.values, shortlist), tf.float32))
            scores, picked = tf.math.top_k(exact, k=k)
            return scores, tf.gather(shortlist, picked, batch_dims=1)
        if self.mode != "int8" or n <= BLOCK_ROWS:
            return tf.math.top_k(self.scores(queries), k=k)
        tops, positions = [], []
        for start in range(0, n, BLOCK_ROWS):
            stop = min(start + BLOCK_ROWS, n)
            block = tf.matmul(queries, tf.cast(self.values[start:stop], tf.float32), transpose_b=True)
            best, where = tf.math.top_k(block * self.scale[start:stop][None, :], k=min(k, stop - start))
            tops.append(best)
            positions.append(where + start)
        scores, picked = tf.math.top_k(tf.concat(tops, axis=1), k=k)
        return scores, tf.gather(tf.concat(positions, axis=1), picked, batch_dims=1)

    def scores(self, queries):
        """queries [b, e] float32 -> [b, n] dot products with every row."""
        scores = tf.matmul(queries, tf.cast(self.values, tf.float32), transpose_b=True)
        return scores * self.scale[None, :] if self.scale is not None else scores
