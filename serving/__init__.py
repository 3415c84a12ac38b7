"""Serving: TF Serving-layout exports, the embedded gRPC/REST server and its client."""

import crossrec  # noqa: F401  (sets up the TF/Keras environment before TensorFlow is imported)
