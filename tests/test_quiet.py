"""What crossrec silences, and that it silences nothing else."""

import logging

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


def test_onednns_integer_fallback_note_is_spent_inside_the_device_probe(tmp_path):
    """Every command that loaded a model printed 'E ... oneDNN supports DT_INT64 only on platforms
    with AVX-512. Falling back ...' (a note that TensorFlow uses its other kernel)."""
    import subprocess
    import sys

    script = ("import crossrec\nfrom crossrec.quiet import init_devices\ninit_devices()\nimport tensorflow as tf\n"
              "for dtype in (tf.int32, tf.int64):\n"
              "    tf.function(lambda x: tf.transpose(x, [2, 0, 1]), autograph=False)(tf.zeros([2, 3, 4], dtype))\n"
              "    tf.function(lambda x: tf.transpose(x), autograph=False)(tf.zeros([2, 3], dtype))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "oneDNN supports" not in done.stderr and "Falling back to the default Eigen" not in done.stderr
