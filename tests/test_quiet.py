"""What crossrec silences, and that it silences nothing else."""

import logging

import pytest

from crossrec.quiet import quiet_logs, unactionable


def test_the_cuda_probe_line_is_noise_only_without_nvidia_hardware():
    line = "E external/local_xla/xla/stream_executor/cuda/cuda_platform.cc:51] failed call to cuInit: UNKNOWN ERROR"
    assert unactionable(line, gpu_hardware=False)
    assert not unactionable(line, gpu_hardware=True)  # with a GPU it is a real error
    assert not unactionable("E tensorflow/core/framework/op_kernel.cc] OOM when allocating", gpu_hardware=False)


def test_known_noise_is_dropped_and_other_warnings_are_not(caplog):
    quiet_logs()
    quiet_logs()  # idempotent
    with caplog.at_level(logging.WARNING):
        logging.warning("Resource module is not available for current platform, memory usage cannot be fetched.")
        logging.getLogger("tensorflow").warning("5 out of the last 9 calls to <f> triggered tf.function retracing.")
        logging.warning("a real warning")
        logging.getLogger("tensorflow").warning("a real tensorflow warning")
    assert [r.getMessage() for r in caplog.records] == ["a real warning", "a real tensorflow warning"]


def test_the_onednn_int64_note_is_spent_unseen_and_other_lines_stay(tmp_path):
    """TensorFlow's E-level "oneDNN supports DT_INT64 only on platforms with AVX-512" note (once a
    process, on CPUs without AVX-512) is spent by ``spend_onednn_note`` with stderr captured; a
    real C++ error logged afterwards still reaches the user."""
    import subprocess
    import sys

    script = (
        "import crossrec, sys\n"
        "import tensorflow as tf\n"
        "from crossrec.quiet import spend_onednn_note\n"
        "spend_onednn_note(); spend_onednn_note()\n"
        "tf.function(tf.transpose, autograph=False)(tf.ones([2, 3], tf.int64))\n"  # what logged it
        "print('after', file=sys.stderr)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "oneDNN supports" not in run.stderr and "after" in run.stderr
    # the same lines without the spend print it wherever oneDNN takes int64 ops (this machine's
    # CPU has AVX-512 flags and still does): the probe reaches the op that logs the note
    bare = subprocess.run([sys.executable, "-c", script.replace("spend_onednn_note(); spend_onednn_note()", "")],
                          capture_output=True, text=True, timeout=120)
    if "oneDNN supports DT_INT64" not in bare.stderr:
        pytest.skip("this TensorFlow build logs no oneDNN int64 note here")
