"""crossrec's answer-quality metrics and its Prometheus rules, down to a real Prometheus server:
promtool checks and unit-tests the shipped rules, the Grafana dashboard's queries parse, the
metrics stay bounded whatever ids arrive, and a Prometheus scraping a real `crossrec serve` sees
the drift alerts go pending when the traffic drifts. `make test` installs Debian's `prometheus`
package (which ships `promtool`) as it installs Chromium; without it these tests skip and say so."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from crossrec.profile import psi
from serving.answer_metrics import AnswerMetrics, Coverage

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "serving" / "prometheus" / "crossrec-rules.yml"
DASHBOARD = ROOT / "serving" / "prometheus" / "grafana-dashboard.json"
needs_prometheus = pytest.mark.skipif(
    shutil.which("promtool") is None or shutil.which("prometheus") is None,
    reason="Debian's prometheus package is not installed (make test installs it: apt-get install prometheus)")


@needs_prometheus
def test_promtool_checks_and_unit_tests_the_rules():
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(["promtool", "test", "rules", str(ROOT / "tests" / "prometheus" / "crossrec-rules.test.yml")],
                          capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr


@needs_prometheus
def test_the_dashboards_queries_parse(tmp_path):
    panels = json.loads(DASHBOARD.read_text())["panels"]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel{p['id']}", "expr": t["expr"]} for p in panels for t in p["targets"]]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_drift_rule_is_crossrec_profiles_psi():
    """The rules' unit test expects PSI 4.80 for one-domain traffic against a 45/33/22 mix: the
    number `crossrec monitor` computes for the same shares."""
    assert round(psi({"books": 0.45, "movies": 0.33, "kitchen": 0.22}, {"books": 1.0}), 2) == 4.80


class _Manager:
    def __init__(self, model):
        self.model, self.specs = model, {model.name: None}

    def get(self, name, version=None, label=None):
        if name != self.model.name:
            raise KeyError(name)
        return self.model


def _model(version=1):
    return SimpleNamespace(name="recommender", version=version, metadata={
        "domains": ["books", "movies"], "history_length": 4,
        "index": {"domains": {"books": {"items": 500}, "movies": {"items": 500}}},
        "reference_profile": {"domain_shares": {"books": 0.6, "movies": 0.4}, "history_length": {"<=4": 1.0}}})


def _answer(ids, known, scores=None):
    ids = np.asarray(ids, object)
    return {"item_ids": ids, "scores": np.asarray(scores if scores is not None else np.ones(ids.shape), np.float32),
            "history_known": np.asarray(known, np.int32)}


def _samples(registry) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}


def test_answer_metrics_count_what_was_answered():
    registry = CollectorRegistry()
    model = _model()
    metrics = AnswerMetrics(registry, _Manager(model))
    inputs = {"history_item_ids": np.array([[b"a", b"b", b"c", b"d", b"e", b"f"], [b"x", b"", b"", b"", b"", b""]], object),
              "history_domains": np.array([[b"books"] * 6, [b"movies"] + [b""] * 5], object),
              "target_domain": np.array([b"movies", b"books"], object), "k": np.array([3, 3], np.int32)}
    # row 0: 6 items sent, 4 slots (history_length), 3 of them known; row 1: one unknown item, 2 items answered
    metrics.observe(model, "serving_default", inputs, _answer([[b"m1", b"m2", b"m3"], [b"b1", b"b2", b""]], [3, 0],
                                                              [[9.0, 5.0, 3.0], [0.5, 0.2, -1e9]]))
    s = _samples(registry)
    assert s[("crossrec_answer_rows_total", (("model", "recommender"), ("signature", "serving_default")))] == 2
    assert s[("crossrec_answer_history_items_total", (("model", "recommender"), ("used", "true")))] == 3
    assert s[("crossrec_answer_history_items_total", (("model", "recommender"), ("used", "false")))] == 2
    assert s[("crossrec_answer_unknown_histories_total", (("model", "recommender"),))] == 1
    assert s[("crossrec_answer_history_domain_items_total", (("domain", "books"), ("model", "recommender")))] == 6
    assert s[("crossrec_answer_items_total", (("domain", "movies"), ("model", "recommender"),
                                              ("signature", "serving_default")))] == 3
    assert s[("crossrec_answer_short_total", (("model", "recommender"), ("signature", "serving_default")))] == 1
    assert s[("crossrec_answer_empty_total", (("model", "recommender"), ("signature", "serving_default")))] == 0
    assert s[("crossrec_answer_score_count", (("model", "recommender"), ("signature", "serving_default"),
                                              ("version", "1")))] == 2  # each row's top score
    assert s[("crossrec_reference_domain_share", (("domain", "books"), ("model", "recommender")))] == 0.6
    coverage = s[("crossrec_answer_catalogue_coverage", (("model", "recommender"),))]
    assert abs(coverage - 5 / 1000) < 1e-4
    model.version = 2  # version 1 no longer served: its score histogram goes at the next scrape
    assert not [k for k in _samples(registry) if k[0].startswith("crossrec_answer_score") and ("version", "1") in k[1]]


def test_answer_metrics_stay_bounded_whatever_ids_arrive():
    """100,000 requests, every history item and domain an id never seen before: the registry
    exposes the same series afterwards as after the first request."""
    registry = CollectorRegistry()
    model = _model()
    metrics = AnswerMetrics(registry, _Manager(model))

    def request(i):
        inputs = {"history_item_ids": np.array([[f"unknown-{i}".encode()]], object),
                  "history_domains": np.array([[f"domain-{i % 7}".encode()]], object),
                  "target_domain": np.array([f"domain-{i}".encode()], object), "k": np.array([2], np.int32)}
        metrics.observe(model, "serving_default", inputs, _answer([[f"i{i}".encode(), f"j{i}".encode()]], [0]))

    request(0)
    first = set(_samples(registry))
    for i in range(1, 100_000):
        request(i)
    assert set(_samples(registry)) == first
    assert metrics.coverage["recommender"].current.nbytes == Coverage().current.nbytes


def test_coverage_counts_distinct_items_over_a_sliding_window():
    now = [0.0]
    coverage = Coverage(bits=1 << 16, window=10, clock=lambda: now[0])
    coverage.add([("books", str(i)) for i in range(3000)] * 2)
    assert abs(coverage.distinct() - 3000) < 60
    now[0] = 12  # next window: the previous one still counts
    coverage.add([("books", "new")])
    assert abs(coverage.distinct() - 3001) < 60
    now[0] = 35  # two windows after the last rotation: only what came since
    coverage.add([("movies", "1")])
    assert abs(coverage.distinct() - 1) < 1


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@needs_prometheus
def test_a_real_prometheus_sees_the_drift_alerts_go_pending(tiny_exported, tmp_path):
    """A Prometheus server scrapes a real `crossrec serve` every second with the shipped rules;
    traffic from one domain only, of items the model never saw, sets off the unknown-history and
    domain-mix alerts (pending: their `for` is minutes), as Prometheus' own API reports."""
    from serving.client import CrossrecClient
    from serving.models import ModelManager, ModelSpec
    from serving.server import Server, ServerOptions, free_port

    root = tmp_path / "saved_models"
    shutil.copytree(tiny_exported[2], root)
    manager = ModelManager([ModelSpec(n, root / n) for n in ("retrieval", "recommender")])
    server = Server(manager, ServerOptions(port=0, rest_api_port=free_port(), poll_seconds=0,
                                           metrics_path="/monitoring/prometheus/metrics")).start()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "crossrec", "metrics_path": "/monitoring/prometheus/metrics",
                            "static_configs": [{"targets": [f"127.0.0.1:{server.rest_port}"]}]}]}))
    with open(tmp_path / "prometheus.log", "w") as log:  # the child keeps its own descriptor
        prometheus = subprocess.Popen(["prometheus", f"--config.file={config}",
                                       f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                      stdout=subprocess.DEVNULL, stderr=log)
    domain = manager.get("recommender").metadata["domains"][0]
    states: dict = {}
    started = time.monotonic()
    try:
        with CrossrecClient(f"127.0.0.1:{server.port}") as client:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                for i in range(5):
                    client.recommend([(domain, f"never-seen-{time.time_ns()}-{i}")], domain, k=3)
                try:
                    alerts = _get(f"http://127.0.0.1:{port}/api/v1/alerts")["data"]["alerts"]
                except OSError:
                    alerts = []  # Prometheus still starting
                states = {(a["labels"]["alertname"], a["labels"].get("model")): a["state"] for a in alerts}
                if {("CrossrecUnknownHistories", "recommender"), ("CrossrecDomainMixDrift", "recommender")} <= set(states):
                    break
                time.sleep(1)
        print(f"after {time.monotonic() - started:.0f} s, Prometheus' /api/v1/alerts: {sorted(states.items())}")
        assert states.get(("CrossrecUnknownHistories", "recommender")) in ("pending", "firing"), (
            states, (tmp_path / "prometheus.log").read_text()[-2000:])
        assert states.get(("CrossrecDomainMixDrift", "recommender")) in ("pending", "firing"), states
        assert ("CrossrecDomainMixDrift", "retrieval") not in states  # served, but no traffic: nothing to compare
        share = _get(f"http://127.0.0.1:{port}/api/v1/query?query=crossrec:history_unknown_share:rate15m")
        values = {r["metric"]["model"]: float(r["value"][1]) for r in share["data"]["result"]}
        assert values["recommender"] == 1.0
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        server.stop()
