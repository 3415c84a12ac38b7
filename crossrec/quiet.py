"""The one place that silences messages a crossrec user cannot act on, each named with why;
everything else (real warnings and errors) stays visible.

- TensorFlow's GPU probe logs ``failed call to cuInit`` from C++ on every machine without a GPU
  (the pip wheel ships CUDA). ``init_devices`` runs that probe with stderr captured and re-prints
  every other line; it keeps the line where the machine has NVIDIA hardware, where it is real.
- Apache Beam's RunInference logs "Resource module is not available for current platform" on
  every model load when PyTorch is not installed (its model manager imports torch); crossrec
  does not use the memory figure it is about. Importing Beam's I/O logs "apitools not found, and
  bigquery client libraries are not available" (crossrec reads no BigQuery).
- TensorFlow's oneDNN build logs "oneDNN supports DT_INT64 only on platforms with AVX-512.
  Falling back to the default Eigen-based implementation" at level E, once a process, the first
  time a graph holds an int64 op oneDNN would take (on every CPU without AVX-512): the fallback is
  the ordinary kernel, nothing failed. ``spend_onednn_note`` runs one such op with stderr captured,
  so the one-time note is spent where nobody sees it. It starts TensorFlow's runtime, so it runs
  after the settings that must precede that (``crossrec serve``'s thread pools, a multi-worker
  strategy's collective ops).
- TensorFlow's "N out of the last M calls to <function> triggered tf.function retracing": every
  training (the towers, each baseline, each seed) builds its own Keras model with its own traced
  step, which TensorFlow's detector counts as retracing one function; nothing for a user to change.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

CUDA_PROBE = "failed call to cuInit"
ONEDNN_NOTE = "only on platforms with AVX-512. Falling back to the default Eigen-based implementation"
BEAM_NO_RESOURCE = "Resource module is not available for current platform"


def _has_nvidia_hardware() -> bool:
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


def unactionable(line: str, *, gpu_hardware: bool) -> bool:
    """Whether a C++ log line from a probe is noise for this machine."""
    return (CUDA_PROBE in line and not gpu_hardware) or ONEDNN_NOTE in line


def _run_captured(probe) -> None:
    """Runs ``probe`` with the process's stderr (fd 2, where TensorFlow's C++ logs) captured, then
    re-prints every captured line that is not noise on this machine."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            probe()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    gpu_hardware = _has_nvidia_hardware()
    for line in text.splitlines():
        if line.strip() and not unactionable(line, gpu_hardware=gpu_hardware):
            print(line, file=sys.stderr)


def init_devices() -> None:
    """Initialises TensorFlow's devices once, printing what the probe logs except the lines that
    are noise here (see the module's docstring)."""
    import tensorflow as tf

    _run_captured(tf.config.list_physical_devices)


_ONEDNN_SPENT = False


def spend_onednn_note() -> None:
    """Spends TensorFlow's one-time oneDNN int64 note with stderr captured (see the module's
    docstring); idempotent. Starts TensorFlow's runtime: call it after thread and cluster settings."""
    global _ONEDNN_SPENT
    if _ONEDNN_SPENT:
        return
    import tensorflow as tf

    def probe():  # a transpose of an int64 matrix in a graph is the op that logs the note
        tf.function(tf.transpose, autograph=False)(tf.zeros([1, 2], tf.int64))

    _run_captured(probe)
    _ONEDNN_SPENT = True


NOISE = {  # logger name -> message parts dropped from it
    "": (BEAM_NO_RESOURCE, "apitools not found, and bigquery client libraries are not available"),
    "tensorflow": ("triggered tf.function retracing",),
}


class _DropNoise(logging.Filter):
    def __init__(self, parts: tuple[str, ...]):
        super().__init__()
        self.parts = parts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in self.parts)


def quiet_logs() -> None:
    """Drops the log messages of ``NOISE`` (see the module's docstring); idempotent."""
    for name, parts in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise(parts))
