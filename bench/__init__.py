"""Benchmarks: each prints a table and writes JSON under bench/results/ (see README: Benchmarks)."""

import crossrec  # noqa: F401  (sets up the TF/Keras environment before TensorFlow is imported)
