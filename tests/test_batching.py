"""Server-side batching: merged calls, identical answers, isolation of a bad request, TF Serving's
BatchingParameters file."""

import shutil
import threading
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import tensorflow as tf

from crossrec.errors import ConfigError
from serving.batching import Batcher, BatchingOptions
from serving.client import CrossrecClient, _history_inputs
from serving.errors import ServingError
from tests.test_serving import history_of

MODEL = SimpleNamespace(name="m", version=1)


@tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
def double(x):
    check = tf.debugging.assert_non_negative(x, message="x: must not be negative")
    with tf.control_dependencies([check]):
        return {"y": 2 * x, "rows": tf.fill(tf.shape(x), tf.shape(x)[0])}


def _concurrently(batcher, inputs, function=double):
    results, errors = [None] * len(inputs), [None] * len(inputs)
    start = threading.Barrier(len(inputs))

    def one(i):
        start.wait()
        try:
            results[i] = batcher.run(MODEL, "serving_default", function, inputs[i])
        except ServingError as error:
            errors[i] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_the_parameters_file_is_tf_servings_text_proto(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 500 }\n"
                    "num_batch_threads { value: 2 }\nallowed_batch_sizes: 16\nallowed_batch_sizes: 64\n"
                    "pad_variable_length_inputs: true\n")
    options = BatchingOptions.from_file(path)
    assert (options.max_batch_size, options.batch_timeout_micros, options.num_batch_threads) == (64, 500, 2)
    assert options.allowed_batch_sizes == (16, 64) and options.pad_variable_length_inputs
    assert options.max_enqueued_batches == BatchingOptions().max_enqueued_batches  # TF Serving's default
    path.write_text("max_batch_size { value: 64 }\nallowed_batch_sizes: 16\nallowed_batch_sizes: 32\n")
    with pytest.raises(ConfigError, match="end with max_batch_size"):
        BatchingOptions.from_file(path)
    path.write_text("max_batch_size: 64\n")
    with pytest.raises(ConfigError, match="batching.config"):
        BatchingOptions.from_file(path)


def test_concurrent_requests_merge_into_one_call_and_split_back():
    sizes, stages = [], []
    batcher = Batcher(BatchingOptions(max_batch_size=12, batch_timeout_micros=2_000_000, num_batch_threads=1),
                      on_batch=lambda model, signature, rows: sizes.append(rows),
                      on_stage=lambda model, stage, seconds: stages.append(stage))
    try:
        inputs = [{"x": np.arange(i, i + 3, dtype=np.float32)} for i in range(4)]  # 4 requests x 3 rows
        results, errors = _concurrently(batcher, inputs)
    finally:
        batcher.stop()
    assert errors == [None] * 4 and sizes == [12]  # one call of all 12 rows
    # per request: its wait in the queue and the merge, signature call and split it waited through
    assert sorted(stages) == sorted(["queue", "merge", "signature", "split"] * 4)
    for given, got in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(got["y"], 2 * given["x"])
        assert got["rows"].tolist() == [12, 12, 12]  # it really ran as one batch


def test_a_request_whose_values_fail_does_not_fail_the_others():
    batcher = Batcher(BatchingOptions(max_batch_size=8, batch_timeout_micros=2_000_000, num_batch_threads=1))
    try:
        inputs = [{"x": np.array([1.0, 2.0], np.float32)}, {"x": np.array([-1.0, 2.0], np.float32)},
                  {"x": np.array([3.0, 4.0], np.float32)}, {"x": np.array([5.0, 6.0], np.float32)}]
        results, errors = _concurrently(batcher, inputs)
    finally:
        batcher.stop()
    assert errors[1] is not None and errors[1].code == grpc.StatusCode.INVALID_ARGUMENT
    assert "x: must not be negative" in errors[1].message
    assert [e for i, e in enumerate(errors) if i != 1] == [None] * 3
    np.testing.assert_array_equal(results[3]["y"], [10.0, 12.0])


def test_allowed_batch_sizes_pad_the_batch_and_drop_the_padding():
    sizes = []
    batcher = Batcher(BatchingOptions(max_batch_size=8, allowed_batch_sizes=(4, 8), num_batch_threads=1),
                      on_batch=lambda model, signature, rows: sizes.append(rows))
    try:
        out = batcher.run(MODEL, "serving_default", double, {"x": np.array([1.0, 2.0, 3.0], np.float32)})
    finally:
        batcher.stop()
    assert sizes == [4] and out["y"].tolist() == [2.0, 4.0, 6.0] and out["rows"].tolist() == [4, 4, 4]


def test_a_full_queue_answers_unavailable_and_a_request_beyond_max_batch_size_is_invalid():
    release = threading.Event()

    def slow(**arrays):
        release.wait(10)
        return double(**arrays)

    batcher = Batcher(BatchingOptions(max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1))
    try:
        with pytest.raises(ServingError, match="max_batch_size of 2"):
            batcher.run(MODEL, "serving_default", slow, {"x": np.ones(3, np.float32)})
        first = threading.Thread(target=batcher.run, args=(MODEL, "serving_default", slow,
                                                           {"x": np.ones(2, np.float32)}))
        first.start()  # taken by the only batch thread, which then waits
        while batcher._queues:
            threading.Event().wait(0.01)
        second = threading.Thread(target=batcher.run, args=(MODEL, "serving_default", slow,
                                                            {"x": np.ones(2, np.float32)}))
        second.start()  # fills the queue (one batch of 2 rows)
        while not batcher._queues:
            threading.Event().wait(0.01)
        with pytest.raises(ServingError) as error:
            batcher.run(MODEL, "serving_default", slow, {"x": np.ones(1, np.float32)})
        assert error.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        release.set()
        first.join()
        second.join()
        batcher.stop()


def test_served_answers_are_identical_with_and_without_batching(tiny_exported, tmp_path):
    """Concurrent gRPC requests with histories of different lengths (padded) and the same k."""
    from serving.models import ModelManager, ModelSpec
    from serving.server import Server, ServerOptions

    _, run, out, _ = tiny_exported
    root = tmp_path / "saved_models"
    shutil.copytree(out, root)
    _, histories, domains = history_of(run, 8)
    requests = [{**_history_inputs([h], [d]), "k": np.array([5], np.int32), "exclude_history": np.array([True])}
                for h, d in zip(histories, domains, strict=True)]
    answers = {}
    for batching in (None, BatchingOptions(max_batch_size=16, batch_timeout_micros=200_000, num_batch_threads=1,
                                           pad_variable_length_inputs=True)):
        manager = ModelManager([ModelSpec(n, root / n) for n in ("recommender", "retrieval")])
        server = Server(manager, ServerOptions(port=0, rest_api_port=0, poll_seconds=0, batching=batching)).start()
        got = {}
        try:
            def ask(i, model, port, got):
                with CrossrecClient(f"127.0.0.1:{port}") as client:
                    got[(model, i)] = client.predict(model, requests[i])

            threads = [threading.Thread(target=ask, args=(i, m, server.port, got)) for i in range(len(requests))
                       for m in ("recommender", "retrieval")]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if batching is not None:
                calls = server.metrics.registry.get_sample_value(
                    "crossrec_serving_batch_size_count", {"model": "recommender", "signature": "serving_default"})
                assert calls < len(requests)  # some requests were merged
        finally:
            server.stop()
        answers[batching is not None] = got
    assert answers[True].keys() == answers[False].keys() and len(answers[True]) == 2 * len(requests)
    for key, alone in answers[False].items():
        merged = answers[True][key]
        assert merged.keys() == alone.keys()
        for name in alone:
            if alone[name].dtype.kind == "f":
                np.testing.assert_allclose(merged[name], alone[name], rtol=1e-5, atol=1e-6, err_msg=f"{key} {name}")
            else:
                np.testing.assert_array_equal(merged[name], alone[name], err_msg=f"{key} {name}")
