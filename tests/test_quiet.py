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
