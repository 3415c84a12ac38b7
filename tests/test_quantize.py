"""Compact exports: float16 / int8 item tables, their error, and an int8 export end to end."""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf

from crossrec.errors import ConfigError
from serving.client import _history_inputs
from serving.quantize import QuantizedTable, dequantize, quantize
from tests.test_serving import history_of


def test_int8_keeps_each_row_within_a_step_of_its_own_scale_and_fits_it_best():
    matrix = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    matrix[3] *= 100  # rows of very different size each get their own scale
    values, scale = quantize(matrix, "int8")
    assert values.dtype == np.int8 and scale.shape == (50,)
    step = np.abs(matrix).max(axis=1) / 127
    error = np.abs(dequantize(values, scale) - matrix)
    assert (error <= step[:, None] + 1e-6).all()
    assert np.abs(values).max() == 127
    # the least-squares scale reconstructs every row at least as well as peak / 127 does
    fitted = ((dequantize(values, scale) - matrix) ** 2).sum(axis=1)
    assert (fitted <= ((dequantize(values, step) - matrix) ** 2).sum(axis=1) + 1e-9).all()
    half, none = quantize(matrix, "float16")
    assert half.dtype == np.float16 and none is None
    np.testing.assert_allclose(dequantize(half, None), matrix, rtol=1e-3)
    with pytest.raises(ValueError, match="quantize must be one of"):
        quantize(matrix, "int4")


def test_the_graph_computes_what_numpy_dequantizes():
    matrix = np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32)
    table = QuantizedTable(matrix, "int8")
    values, scale = quantize(matrix, "int8")
    expected = dequantize(values, scale)
    rows = np.array([[0, 5], [29, 3]])
    np.testing.assert_allclose(table.gather(tf.constant(rows)).numpy(), expected[rows], rtol=1e-6)
    queries = np.random.default_rng(2).normal(size=(4, 8)).astype(np.float32)
    np.testing.assert_allclose(table.scores(tf.constant(queries)).numpy(), queries @ expected.T, rtol=1e-5, atol=1e-5)
    assert table.nbytes == 30 * 8 + 30 * 4


def test_an_int8_export_is_smaller_measured_and_loads_with_tensorflow_alone(tiny_pipeline, tmp_path):
    from serving.export import export_models
    from serving.parts import load_parts, sample_queries

    config, run, retrieval_dir, _ = tiny_pipeline
    queries = sample_queries(load_parts(retrieval_dir, None), 50)
    answers, infos = {}, {}
    _, histories, domains = history_of(run, 6)
    inputs = {**_history_inputs(histories, domains), "k": np.full(len(domains), 5, np.int32),
              "exclude_history": np.ones(len(domains), bool)}
    for mode in ("none", "int8"):
        quantized = replace(config, export=replace(config.export, quantize=mode))
        result = export_models(retrieval_dir, tmp_path / mode, config=quantized, models=["retrieval"],
                               recall_queries=queries, progress=False)
        infos[mode] = result.metadata["retrieval"]["index"]
        serve = tf.saved_model.load(str(result.paths["retrieval"])).signatures["serving_default"]
        answers[mode] = serve(**{k: tf.constant(v) for k, v in inputs.items()})["item_ids"].numpy()
    assert infos["int8"]["quantize"] == "int8" and infos["none"]["quantize"] == "none"
    assert infos["int8"]["index_bytes"] < infos["none"]["index_bytes"] / 3
    assert infos["int8"]["embedding_table_bytes"] < infos["none"]["embedding_table_bytes"] / 3
    assert infos["none"]["recall@10"] == 1.0 and infos["int8"]["recall@10"] >= 0.9
    assert infos["int8"]["search_ms_per_query"] > 0
    overlap = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(answers["int8"], answers["none"], strict=True)])
    assert overlap >= 0.8
    script = f"""
import json, sys
import tensorflow as tf
f = tf.saved_model.load({str(tmp_path / "int8" / "retrieval" / "1")!r}).signatures["serving_default"]
inputs = json.loads({json.dumps(json.dumps({k: v.tolist() for k, v in inputs.items()}, default=bytes.decode))})
out = f(**{{k: tf.constant(v) for k, v in inputs.items()}})
loaded = [m for m in ("crossrec", "scann", "tensorflow_text", "tensorflow_recommenders") if m in sys.modules]
print(json.dumps({{"ids": out["item_ids"].numpy().astype(str).tolist(), "loaded": loaded}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [] and report["ids"] == answers["int8"].astype(str).tolist()


def test_quantize_with_a_scann_index_is_a_clear_error(tiny_pipeline, tmp_path):
    from serving.export import export_models

    config, _, retrieval_dir, _ = tiny_pipeline
    bad = replace(config, export=replace(config.export, index="scann", quantize="int8"))
    with pytest.raises(ConfigError, match="needs export.index: brute_force"):
        export_models(retrieval_dir, tmp_path, config=bad, models=["retrieval"], progress=False)


@pytest.mark.parametrize("mode", ["float16", "int8"])
def test_top_k_in_the_tables_own_precision_finds_what_the_widened_table_finds(mode, monkeypatch):
    """int8 scored block by block, float16 by a float16 shortlist rescored in float32: the same
    rows and scores as widening the whole table (blocks made small here so there are several)."""
    import serving.quantize as q

    monkeypatch.setattr(q, "BLOCK_ROWS", 64)
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(1000, 16)).astype(np.float32)
    queries = tf.constant(rng.normal(size=(5, 16)).astype(np.float32))
    table = QuantizedTable(matrix, mode)
    scores, rows = table.top_k(queries, 10)
    widened = table.scores(queries).numpy()
    expected = np.argsort(-widened, axis=1, kind="stable")[:, :10]
    assert (np.sort(rows.numpy(), axis=1) == np.sort(expected, axis=1)).all()
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(widened, expected, 1), rtol=1e-5, atol=1e-5)
    assert table.top_k(queries, 5000)[1].shape == (5, 1000)  # k past the table's size: every row
