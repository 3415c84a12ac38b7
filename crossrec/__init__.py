"""crossrec: a cross-domain recommender on TensorFlow, TFRS and keras-hub.

Importing this package first sets up the TensorFlow / Keras environment (see ``crossrec.env``).
"""

from crossrec import env as _env  # noqa: F401  (must run before TensorFlow is imported)

__version__ = "0.1.0"
