"""Prometheus metrics of the embedded server, through the Prometheus client library, served on the
REST port at the path of TF Serving's ``--monitoring_config_file``
(``prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }``).

- ``crossrec_serving_requests_total{model, version, signature, api, code}``: Predict requests by
  gRPC status code (``OK``, ``INVALID_ARGUMENT``, ``NOT_FOUND``, ...), over gRPC and REST;
- ``crossrec_serving_request_latency_seconds{model, signature, api}``: their latency (histogram);
- ``crossrec_serving_batch_size{model, signature}``: rows per signature call (histogram; with
  server-side batching, rows of the merged call);
- ``crossrec_serving_stage_seconds{model, stage}``: where a Predict's time goes in the server
  (``STAGES``; ``bench.serving_profile`` reads it), observed once per request: ``decode`` (the
  request's tensors to arrays), ``check`` (names, types, shapes, limits), ``queue`` (waiting for
  a batch thread, with batching), ``merge`` and ``split`` (its batch's, with batching),
  ``signature`` (the model call it waited for, with its input and output copies) and ``encode``
  (the answer's arrays to tensors);
- ``crossrec_serving_model_versions{model, state}``: versions per state (AVAILABLE, LOADING, END);
- ``crossrec_serving_model_version_available{model, version}``: 1 for each version served;
- ``crossrec_serving_model_load_failures_total{model}``: failed loads (retries included);
- what the models answer (history the model knows, new items, domain mix, scores, coverage) and
  the training data's profile to compare with: ``serving.answer_metrics``, observed on a thread of
  its own from a bounded queue (``crossrec_answer_dropped_total`` counts what a full queue refused).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from crossrec.errors import ConfigError
from serving.answer_metrics import AnswerMetrics
from serving.models import AVAILABLE, ModelManager
from serving.protos import MonitoringConfig, parse_text_file
from serving.training_state import AddedItems

log = logging.getLogger(__name__)
ANSWER_QUEUE = 10_000
_START = threading.Lock()
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
STAGES = ("decode", "check", "queue", "merge", "signature", "split", "encode")
STAGE_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, *LATENCY_BUCKETS[1:])


def metrics_path(config_file: str | Path | None) -> str | None:
    """The metrics path a ``--monitoring_config_file`` enables, or None (off)."""
    if not config_file:
        return None
    config = parse_text_file(config_file, MonitoringConfig, "--monitoring_config_file").prometheus_config
    if not config.enable:
        return None
    path = config.path or "/monitoring/prometheus/metrics"
    if not path.startswith("/") or path.startswith("/v1/"):
        raise ConfigError(f"--monitoring_config_file {config_file}: prometheus_config.path {path!r} must start "
                          "with / and not with /v1/ (the model API's paths)")
    return path


class _ModelCollector:
    """Model states read from the manager at scrape time (nothing to keep in sync)."""

    def __init__(self, manager: ModelManager):
        self.manager = manager

    def collect(self):
        versions = GaugeMetricFamily("crossrec_serving_model_versions", "Model versions by state",
                                     labels=["model", "state"])
        available = GaugeMetricFamily("crossrec_serving_model_version_available", "1 for each version served",
                                      labels=["model", "version"])
        failures = CounterMetricFamily("crossrec_serving_model_load_failures", "Failed version loads",
                                       labels=["model"])
        for name in self.manager.specs:
            counts: dict[str, int] = {}
            for number, status in sorted(self.manager.status(name).items()):
                counts[status.state] = counts.get(status.state, 0) + 1
                if status.state == AVAILABLE:
                    available.add_metric([name, str(number)], 1)
            for state, count in sorted(counts.items()):
                versions.add_metric([name, state], count)
            failures.add_metric([name], self.manager.load_failures.get(name, 0))
        yield from (versions, available, failures)


class ServingMetrics:
    """The server's metrics in their own registry (several servers in one process stay apart)."""

    def __init__(self, manager: ModelManager):
        self.registry = CollectorRegistry()
        self.requests = Counter("crossrec_serving_requests", "Predict requests by model, version, signature, API "
                                "and gRPC status code", ["model", "version", "signature", "api", "code"],
                                registry=self.registry)
        self.latency = Histogram("crossrec_serving_request_latency_seconds", "Predict latency in the server",
                                 ["model", "signature", "api"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("crossrec_serving_batch_size", "Rows per signature call",
                                    ["model", "signature"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.stage = Histogram("crossrec_serving_stage_seconds", "Time in each stage of a Predict in the server",
                               ["model", "stage"], buckets=STAGE_BUCKETS, registry=self.registry)
        self.registry.register(_ModelCollector(manager))
        self.answers = AnswerMetrics(self.registry, manager, AddedItems(manager))
        # answers are observed on a thread of their own: right after a signature ran, TensorFlow's
        # threads still hold the cores and the same work took 5x as long inside the request
        self._pending: queue.Queue = queue.Queue(maxsize=ANSWER_QUEUE)
        self._worker: threading.Thread | None = None
        self.dropped = Counter("crossrec_answer_dropped", "Answers not observed: the metrics' queue was full",
                               registry=self.registry)

    def observe_request(self, api: str, model: str, version, signature: str, code: str, seconds: float) -> None:
        signature = signature or "serving_default"
        self.requests.labels(model, "" if version is None else str(version), signature, api, code).inc()
        self.latency.labels(model, signature, api).observe(seconds)

    def observe_batch(self, model: str, signature: str, rows: int) -> None:
        self.batch_size.labels(model, signature or "serving_default").observe(rows)

    def observe_stage(self, model: str, stage: str, seconds: float) -> None:
        """``seconds`` spent in ``stage`` (one of ``STAGES``) by a request or a signature call of a
        served ``model`` (a name the server serves: the label's values stay bounded)."""
        self.stage.labels(model, stage).observe(seconds)

    def observe_answer(self, model, signature: str, inputs: dict, outputs: dict) -> None:
        """Queues what one Predict answered for ``serving.answer_metrics`` (at most ``ANSWER_QUEUE``
        answers wait; beyond that they are counted as dropped, never waited for)."""
        if self._worker is None:
            with _START:
                if self._worker is None:
                    self._worker = threading.Thread(target=self._observe_queued, daemon=True,
                                                    name="crossrec-answer-metrics")
                    self._worker.start()
        try:
            self._pending.put_nowait((model, signature or "serving_default", inputs, outputs))
        except queue.Full:
            self.dropped.inc()

    def _observe_queued(self) -> None:
        while True:
            model, signature, inputs, outputs = self._pending.get()
            try:
                self.answers.observe(model, signature, inputs, outputs)
            except Exception:  # noqa: BLE001 (metrics must not stop: a bad answer is logged)
                log.exception("answer metrics of %s failed", model.name)
            finally:
                self._pending.task_done()

    def flush(self, timeout: float = 5.0) -> None:
        """Waits (up to ``timeout`` seconds) until every queued answer is observed."""
        deadline = time.monotonic() + timeout
        while self._pending.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.001)

    def exposition(self) -> tuple[bytes, str]:
        self.flush(timeout=1.0)  # a scrape right after requests sees them
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
