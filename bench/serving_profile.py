"""Where a served request's time goes: the profile behind server-side batching (issue 50).

    python -m bench.serving_profile [--quick]   (bench.serving runs it too, and records it)

- In-process: the ``recommender``'s ``serving_default`` and ``feed`` signatures called with 1, 8
  and 32 rows: milliseconds per call and per row. The per-row cost at 1 row over that at b rows
  is the most any batching can gain from the model.
- Over gRPC: ``crossrec serve`` in its own process with batching off and on, asked by 1, 4 and 8
  client processes: throughput, the clients' p50, and the server's own account of each request
  (``crossrec_serving_stage_seconds``, ``serving.monitoring.STAGES``, scraped before and after):
  decode, check, queue, merge, signature, split and encode, each as long as the request waited
  through it (a batch's signature call counts for each of its requests).
The model is bench.serving's: the real user tower and an untrained student over 100k synthetic items.
"""

from __future__ import annotations

import multiprocessing
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import tensorflow as tf

from bench.common import Results, bench_parser, start_server
from bench.serving import _percentiles, export_synthetic, request_inputs, small_config, small_towers

ROWS = (1, 8, 32)
CLIENTS = (1, 4, 8)
# the server's batching file: batches as large as the queue holds, no waiting for more, one batch
# at a time (a merged call uses every core by itself; at 8 clients on 2 cores one thread formed
# batches of 3.95 rows and served 380 req/s, two threads 2.3 rows and 356 req/s: docs/serving.md)
BATCHING = ("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 0 }\n"
            "num_batch_threads { value: 1 }\npad_variable_length_inputs: true\n")


def batch_inputs(rows: int, seed: int, n: int, feed: bool = False) -> dict:
    """``rows`` requests of bench.serving's shape in one batch (the feed's inputs with ``feed``)."""
    parts = [request_inputs(20, seed + i, n) for i in range(rows)]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if feed:
        merged = {"history_item_ids": merged["history_item_ids"], "history_domains": merged["history_domains"],
                  "n": np.full(rows, 10, np.int32), "diversity": np.full(rows, 0.3, np.float32),
                  "calibration": np.ones(rows, np.float32), "target_shares": np.zeros((rows, 0), np.float32),
                  "exclude_history": merged["exclude_history"]}
    return {k: tf.constant(v) for k, v in merged.items()}


def rows_profile(results: Results, path: Path, n: int, calls: int) -> None:
    loaded = tf.saved_model.load(str(path))
    for signature in ("serving_default", "feed"):
        function = loaded.signatures[signature]
        per_row = {}
        for rows in ROWS:
            asks = [batch_inputs(rows, 100 * s, n, signature == "feed") for s in range(4)]
            per_call = _percentiles(function, asks, calls)[0]
            per_row[rows] = per_call / rows
            results.add(f"{signature}, {rows} rows per call, in-process p50", per_call, "ms",
                        note=f"{per_row[rows]:.3f} ms per row")
        for rows in ROWS[1:]:
            results.add(f"{signature}: cost per row, 1 row / {rows} rows", per_row[1] / per_row[rows], "x",
                        note="the most batching can gain from the model")


def _client(port: int, seconds: float, seed: int, queue) -> None:
    from serving.client import CrossrecClient

    inputs = request_inputs(20, seed)
    times = []
    with CrossrecClient(f"127.0.0.1:{port}") as client:
        client.predict("recommender", inputs)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            client.predict("recommender", inputs)
            times.append(time.perf_counter() - start)
    queue.put(times)


def _stages(rest_port: int) -> dict[str, tuple[float, float]]:
    """stage (and "request", "rows" per signature call) -> (sum, count) from the server's metrics,
    recommender only."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics").read().decode()
    names = {"crossrec_serving_stage_seconds": None, "crossrec_serving_request_latency_seconds": "request",
             "crossrec_serving_batch_size": "rows"}
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in names:
            continue
        for sample in family.samples:
            if sample.labels.get("model") != "recommender" or not sample.name.endswith(("_sum", "_count")):
                continue
            key = sample.labels.get("stage", names[family.name])
            out.setdefault(key, [0.0, 0.0])[sample.name.endswith("_count")] += sample.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def _load(port: int, rest_port: int, clients: int, seconds: float) -> dict:
    """Throughput, clients' p50 and the server's mean ms per request in each stage."""
    from serving.monitoring import STAGES

    before = _stages(rest_port)
    context = multiprocessing.get_context("spawn")  # gRPC channels do not survive fork
    queue = context.Queue()
    workers = [context.Process(target=_client, args=(port, seconds, i, queue)) for i in range(clients)]
    for worker in workers:
        worker.start()
    times = [t for _ in workers for t in queue.get(timeout=seconds + 120)]
    for worker in workers:
        worker.join()
    after = _stages(rest_port)

    def delta(key, i):  # i: 0 the sum, 1 the count
        return after.get(key, (0, 0))[i] - before.get(key, (0, 0))[i]

    per_request = {stage: 1000 * delta(stage, 0) / delta("request", 1) for stage in (*STAGES, "request")}
    return {"throughput": len(times) / seconds, "p50": 1000 * float(np.median(times)),
            "p99": 1000 * float(np.percentile(times, 99)), "stages": per_request,
            "rows_per_call": delta("rows", 0) / max(delta("rows", 1), 1)}


def server_profile(results: Results, base: Path, quick: bool, batching: str | None, label: str) -> dict:
    """``crossrec serve`` over the models under ``base``, with ``batching`` (a batching parameters
    file's text; None: off), asked by each number of clients in turn: {clients: ``_load``'s
    measures}, each added to ``results`` as "batching <label>"."""
    from serving.server import free_port

    with tempfile.TemporaryDirectory() as tmp:
        monitoring = Path(tmp) / "monitoring.config"
        monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
        flags = ["--monitoring_config_file", str(monitoring)]
        if batching:
            (Path(tmp) / "batching.config").write_text(batching)
            flags += ["--enable_batching", "--batching_parameters_file", str(Path(tmp) / "batching.config")]
        rest_port = free_port()
        server, port = start_server(base, "--rest_api_port", str(rest_port), *flags)
        measured = {}
        try:
            _load(port, rest_port, 1, 1.0)  # warm-up
            for clients in (1, 2) if quick else CLIENTS:
                m = measured[clients] = _load(port, rest_port, clients, 1.5 if quick else 8.0)
                stages = m["stages"]
                accounted = sum(v for k, v in stages.items() if k != "request")
                note = ", ".join(f"{k} {v:.2f}" for k, v in stages.items() if k != "request" and v > 0)
                results.add(f"batching {label}, {clients} clients: throughput", m["throughput"], "req/s",
                            note=f"{m['rows_per_call']:.2f} rows per signature call")
                results.add(f"batching {label}, {clients} clients: client p99", m["p99"], "ms",
                            "<= 15" if clients == 1 else "")
                results.add(f"batching {label}, {clients} clients: client p50", m["p50"], "ms",
                            note=f"server {stages['request']:.2f} ms, of which {note}; "
                                 f"unaccounted in the server {stages['request'] - accounted:.2f}")
        finally:
            server.terminate()
            server.wait(timeout=30)
    return measured


def batching_profile(results: Results, model, config, quick: bool) -> None:
    """The whole profile over one synthetic export (bench.serving runs it too), with issue 50's
    targets: batching on / off >= 1.5x throughput at the most clients, p99 at 1 client <= 1.2x."""
    n = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        path = export_synthetic(model, config, n, Path(tmp))
        rows_profile(results, path, n, 20 if quick else 200)
        off = server_profile(results, Path(tmp), quick, None, "off")
        on = server_profile(results, Path(tmp), quick, BATCHING, "on")
    most = max(off)
    results.add(f"throughput at {most} clients: batching on / off", on[most]["throughput"] / off[most]["throughput"],
                "x", ">= 1.5", note=f"{on[most]['throughput']:.0f} vs {off[most]['throughput']:.0f} req/s")
    results.add("p99 at 1 client: batching on / off", on[1]["p99"] / off[1]["p99"], "x", "<= 1.2",
                note=f"{on[1]['p99']:.2f} vs {off[1]['p99']:.2f} ms")


def main(argv=None) -> int:
    parser = bench_parser(__doc__, "20k items, fewer calls, 1 and 2 clients")
    args = parser.parse_args(argv)
    results = Results("serving_profile")
    batching_profile(results, small_towers(args.preset).model, small_config(args.preset), args.quick)
    results.write(args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
