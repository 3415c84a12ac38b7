"""Benchmarks: each prints a table and writes JSON under bench/results/ (the docs' results pages are generated from them)."""

import crossrec  # noqa: F401  (sets up the TF/Keras environment before TensorFlow is imported)
