"""crossrec: a cross-domain recommender on TensorFlow, TFRS and keras-hub.

Importing this package first sets up the TensorFlow / Keras environment (see ``crossrec.env``).
"""

from crossrec import env as _env  # noqa: F401  (must run before TensorFlow is imported)
from crossrec import scratch as _scratch

_scratch.claim()  # TMPDIR files of libraries (autograph's) in a folder of this process's own

__version__ = "0.1.0"
