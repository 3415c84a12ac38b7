"""Prometheus metrics of the embedded server, through the Prometheus client library, served on the
REST port at the path of TF Serving's ``--monitoring_config_file``
(``prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }``).

- ``crossrec_serving_requests_total{model, version, signature, api, code}``: Predict requests by
  gRPC status code (``OK``, ``INVALID_ARGUMENT``, ``NOT_FOUND``, ...), over gRPC and REST;
- ``crossrec_serving_request_latency_seconds{model, signature, api}``: their latency (histogram);
- ``crossrec_serving_batch_size{model, signature}``: rows per signature call (histogram; with
  server-side batching, rows of the merged call);
- ``crossrec_serving_model_versions{model, state}``: versions per state (AVAILABLE, LOADING, END);
- ``crossrec_serving_model_version_available{model, version}``: 1 for each version served;
- ``crossrec_serving_model_load_failures_total{model}``: failed loads (retries included).
"""

from __future__ import annotations

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
from serving.models import AVAILABLE, ModelManager
from serving.protos import MonitoringConfig, parse_text_file

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


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
        self.registry.register(_ModelCollector(manager))

    def observe_request(self, api: str, model: str, version, signature: str, code: str, seconds: float) -> None:
        signature = signature or "serving_default"
        self.requests.labels(model, "" if version is None else str(version), signature, api, code).inc()
        self.latency.labels(model, signature, api).observe(seconds)

    def observe_batch(self, model: str, signature: str, rows: int) -> None:
        self.batch_size.labels(model, signature or "serving_default").observe(rows)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
