"""The one place that sets up the TensorFlow / Keras environment.

crossrec runs two Keras generations in one process: TensorFlow Recommenders needs Keras 2
(``tf_keras``, reached as ``tf.keras`` once ``TF_USE_LEGACY_KERAS=1``), while keras-hub is
Keras 3 (``import keras``). Both read these variables when TensorFlow / Keras are first
imported, so this module must run before either. ``crossrec/__init__.py`` imports it first,
and every entry point (``towers``, ``ranking``, ``serving``, the CLI, the tests) imports
``crossrec`` before TensorFlow.
"""

from __future__ import annotations

import os
import sys

# Values crossrec needs; a value the user already set explicitly wins only where it agrees.
REQUIRED_ENV = {
    # tf.keras -> tf_keras (Keras 2), which tensorflow-recommenders is written against.
    "TF_USE_LEGACY_KERAS": "1",
    # keras-hub (Keras 3) runs on the TensorFlow backend, in the same graph as TFRS.
    "KERAS_BACKEND": "tensorflow",
    # No network at run time: Hugging Face-format presets load from local directories only.
    "HF_HUB_OFFLINE": "1",
}
# Defaults a user may override (quieter logs).
DEFAULT_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def _already_imported() -> list[str]:
    return [name for name in ("tensorflow", "keras", "tf_keras") if name in sys.modules]


def setup() -> None:
    """Sets the variables above; fails loudly if TensorFlow or Keras got imported first."""
    wrong = {k: os.environ[k] for k, v in REQUIRED_ENV.items() if os.environ.get(k, v) != v}
    if wrong:
        raise RuntimeError(
            "crossrec needs "
            + ", ".join(f"{k}={REQUIRED_ENV[k]}" for k in wrong)
            + " but the environment has "
            + ", ".join(f"{k}={v}" for k, v in wrong.items())
            + ". Unset these variables (crossrec sets them itself)."
        )
    missing = [k for k in REQUIRED_ENV if k not in os.environ]
    early = _already_imported()
    if missing and early:
        raise RuntimeError(
            f"{', '.join(early)} was imported before crossrec, so {', '.join(missing)} came too "
            "late to take effect. Import crossrec (or towers / ranking / serving) before "
            "tensorflow and keras."
        )
    for key, value in REQUIRED_ENV.items():
        os.environ[key] = value
    for key, value in DEFAULT_ENV.items():
        os.environ.setdefault(key, value)


setup()
