"""Prometheus metrics on the REST port, configured by TF Serving's --monitoring_config_file."""

import shutil
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crossrec.errors import ConfigError
from serving.client import CrossrecClient, _history_inputs
from serving.monitoring import metrics_path
from tests.test_serving import history_of, rest

CONFIG = 'prometheus_config {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n'


def test_the_monitoring_config_file_is_tf_servings_text_proto(tmp_path):
    path = tmp_path / "monitoring.config"
    path.write_text(CONFIG)
    assert metrics_path(path) == "/monitoring/prometheus/metrics"
    path.write_text("prometheus_config { enable: false }")
    assert metrics_path(path) is None
    assert metrics_path(None) is None
    path.write_text("prometheus_config { enabled: true }")
    with pytest.raises(ConfigError, match=r"monitoring.config.*has no field named \"enabled\""):
        metrics_path(path)
    path.write_text('prometheus_config { enable: true path: "/v1/models/x" }')
    with pytest.raises(ConfigError, match="must start with / and not with /v1/"):
        metrics_path(path)
    with pytest.raises(ConfigError, match="file not found"):
        metrics_path(tmp_path / "missing.config")


def test_metrics_without_a_rest_port_are_refused(tiny_exported, tmp_path):
    from serving.models import ModelManager, ModelSpec
    from serving.server import Server, ServerOptions

    manager = ModelManager([ModelSpec("retrieval", tiny_exported[2] / "retrieval")])
    with pytest.raises(ConfigError, match="--rest_api_port"):
        Server(manager, ServerOptions(port=0, rest_api_port=0, metrics_path="/metrics")).start()


def _scrape(server) -> dict:
    url = f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples, name, **labels):
    return sum(v for (n, key), v in samples.items() if n == name and labels.items() <= dict(key).items())


def test_requests_latency_batches_and_model_states_are_counted(tiny_exported, tmp_path):
    from serving.models import ModelManager, ModelSpec
    from serving.server import Server, ServerOptions, free_port

    _, run, out, _ = tiny_exported
    root = tmp_path / "saved_models"
    shutil.copytree(out, root)
    manager = ModelManager([ModelSpec(n, root / n) for n in ("retrieval", "recommender")])
    server = Server(manager, ServerOptions(port=0, rest_api_port=free_port(), poll_seconds=0,
                                           metrics_path="/monitoring/prometheus/metrics")).start()
    try:
        _, histories, domains = history_of(run, 2)
        inputs = {**_history_inputs(histories, domains), "k": np.array([3, 3], np.int32),
                  "exclude_history": np.array([True, True])}
        with CrossrecClient(f"127.0.0.1:{server.port}") as client:
            client.predict("retrieval", inputs)
            client.predict("retrieval", inputs)
            with pytest.raises(grpc.RpcError):
                client.predict("retrieval", {**inputs, "k": np.array([0, 3], np.int32)})
            with pytest.raises(grpc.RpcError):
                client.predict("no-such-model", inputs)
        body = {"instances": [{"history_item_ids": [i for _, i in histories[1]] or [""],
                               "history_domains": [d for d, _ in histories[1]] or [""],
                               "target_domain": domains[1], "k": 3, "exclude_history": True}]}
        assert rest(server, "/v1/models/recommender:predict", body)[0] == 200
        broken = root / "retrieval" / "2"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a saved model")
        manager.poll()

        samples = _scrape(server)
        requests = "crossrec_serving_requests_total"
        assert _value(samples, requests, model="retrieval", version="1", api="grpc", code="OK",
                      signature="serving_default") == 2
        assert _value(samples, requests, model="retrieval", api="grpc", code="INVALID_ARGUMENT") == 1
        assert _value(samples, requests, model="<unknown>", api="grpc", code="NOT_FOUND") == 1
        assert _value(samples, requests, model="recommender", api="rest", code="OK") == 1
        latency = "crossrec_serving_request_latency_seconds_count"
        assert _value(samples, latency, model="retrieval", api="grpc") == 3
        assert _value(samples, "crossrec_serving_batch_size_count", model="retrieval") == 2  # the refused k ran nothing
        assert _value(samples, "crossrec_serving_batch_size_sum", model="retrieval") == 4  # two rows each
        # where the time went: per request decode, check, encode; per call the signature (no batching)
        stage = "crossrec_serving_stage_seconds_count"
        assert _value(samples, stage, model="retrieval", stage="decode") == 3  # the refused k was decoded
        assert _value(samples, stage, model="retrieval", stage="signature") == 2
        assert _value(samples, stage, model="retrieval", stage="encode") == 2
        assert _value(samples, "crossrec_serving_stage_seconds_sum", model="retrieval", stage="signature") > 0
        assert _value(samples, "crossrec_serving_model_versions", model="retrieval", state="AVAILABLE") == 1
        assert _value(samples, "crossrec_serving_model_versions", model="retrieval", state="END") == 1
        assert _value(samples, "crossrec_serving_model_version_available", model="recommender", version="1") == 1
        assert _value(samples, "crossrec_serving_model_load_failures_total", model="retrieval") == 1
        assert _value(samples, "crossrec_serving_model_load_failures_total", model="recommender") == 0
    finally:
        server.stop()


def test_a_client_that_disconnects_mid_body_is_counted_without_a_traceback(tiny_exported, tmp_path, caplog):
    import logging
    import socket
    import time

    from serving.models import ModelManager, ModelSpec
    from serving.server import Server, ServerOptions, free_port

    root = tmp_path / "saved_models"
    shutil.copytree(tiny_exported[2] / "retrieval", root / "retrieval")
    manager = ModelManager([ModelSpec("retrieval", root / "retrieval")])
    server = Server(manager, ServerOptions(port=0, rest_api_port=free_port(), poll_seconds=0,
                                           metrics_path="/monitoring/prometheus/metrics")).start()
    caplog.set_level(logging.INFO)
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)
            sock.sendall(b"POST /v1/models/retrieval:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                         b"{\"inst")  # 7 of 100 bytes, then gone
            sock.close()
        deadline = time.monotonic() + 20
        requests = "crossrec_serving_requests_total"
        while _value(_scrape(server), requests, api="rest", code="CANCELLED") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _value(_scrape(server), requests, model="retrieval", api="rest", code="CANCELLED") == 3
        assert "REST request failed" not in caplog.text and "Traceback" not in caplog.text
        assert not [r for r in caplog.records if r.exc_info]
    finally:
        server.stop()
