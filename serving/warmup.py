"""Warm-up requests in TF Serving's own format: ``<version>/assets.extra/tf_serving_warmup_requests``,
a TFRecord file of ``PredictionLog`` protos (each a ``predict_log`` holding a ``PredictRequest``).

``crossrec export`` writes a few per model (every served domain, a one-row and a many-row batch),
so the first real request after a version is published does not pay for the graph's first run
(function tracing, table initialisation, kernel choice). The real ``tensorflow_model_server`` replays
the same file before it marks the version AVAILABLE; so does crossrec's embedded server
(``serving.models.load_saved_model``). A request that fails to replay fails the version's load,
as in TF Serving, so a broken version is never served.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving.client import predict_request
from serving.errors import op_error_message

log = logging.getLogger("crossrec.serving")

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving replays at most this many
BATCH_SIZES = (1, 16)


def warmup_path(version_dir: str | Path) -> Path:
    return Path(version_dir) / WARMUP_DIR / WARMUP_FILE


def write_warmup(version_dir: str | Path, model: str, requests: list[dict[str, np.ndarray]],
                 signature: str = "serving_default") -> Path:
    """Writes ``requests`` (input name -> array) as the version's warm-up file."""
    path = warmup_path(version_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for inputs in requests[:MAX_RECORDS]:
            record = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=predict_request(model, inputs, None, signature)))
            writer.write(record.SerializeToString())
    return path


def read_warmup(version_dir: str | Path) -> list:
    """The ``PredictRequest`` of each record (at most ``MAX_RECORDS``); [] if the file is absent."""
    path = warmup_path(version_dir)
    if not path.is_file():
        return []
    requests = []
    for record in tf.data.TFRecordDataset(str(path)).take(MAX_RECORDS):
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        kind = entry.WhichOneof("log_type")
        if kind != "predict_log":
            raise ValueError(f"{WARMUP_DIR}/{WARMUP_FILE}: a {kind} record; crossrec's models take predict_log only")
        requests.append(entry.predict_log.request)
    return requests


def replay_warmup(version_dir: str | Path, signatures: dict) -> int:
    """Runs every warm-up request through its signature; returns how many ran. Any failure raises
    (the version does not load)."""
    requests = read_warmup(version_dir)
    for i, request in enumerate(requests):
        name = request.model_spec.signature_name or "serving_default"
        if name not in signatures:
            raise ValueError(f"{WARMUP_DIR}/{WARMUP_FILE}: signature {name!r} not in the model ({sorted(signatures)})")
        try:
            signatures[name](**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
        except tf.errors.OpError as exc:
            raise ValueError(f"{WARMUP_DIR}/{WARMUP_FILE}: request {i} failed: {op_error_message(exc)}") from None
    return len(requests)


def history_requests(domains: list[str], items: list[tuple[str, str]], history_length: int,
                     extra) -> list[dict[str, np.ndarray]]:
    """Requests of the history-taking models: for each served domain, one row and a batch of
    ``BATCH_SIZES[-1]`` rows, with a history of known ``items`` from every domain; ``extra(rows,
    domain)`` adds the model's other inputs."""
    history = items[:max(1, min(history_length, len(items)))]
    ids = np.array([i.encode() for _, i in history] or [b""], dtype=object)
    doms = np.array([d.encode() for d, _ in history] or [b""], dtype=object)
    requests = []
    for domain in domains:
        for rows in BATCH_SIZES:
            requests.append({"history_item_ids": np.tile(ids, (rows, 1)), "history_domains": np.tile(doms, (rows, 1)),
                             "target_domain": np.array([domain.encode()] * rows, dtype=object), **extra(rows, domain)})
    return requests
