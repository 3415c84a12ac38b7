"""Retrieval towers: a text-encoder item tower per domain and one shared user tower."""

import crossrec  # noqa: F401  (sets up the TF/Keras environment before TensorFlow is imported)
