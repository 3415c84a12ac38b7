"""Ranking: a separate model that reorders retrieved candidates."""

import crossrec  # noqa: F401  (sets up the TF/Keras environment before TensorFlow is imported)
