"""Monitoring benchmark: what the answer-quality metrics (``serving.answer_metrics``) add to a
``recommender`` request, in-process, over 100k items.

    python -m bench.monitoring [--quick]

The same exported ``recommender`` (the towers trained briefly on the built-in data, 100k synthetic
items, as ``bench.serving`` builds it) is asked through the server's ``Predictor`` with its
metrics off and on, one request each in turn (the order swapped every pair) so that the machine's
drift falls on both alike; p50 of each and their ratio (target from issue 49: <= 1.05). The
answer metrics run on a thread of their own (inside the request, right after the signature, the
same work measured 5x slower: TensorFlow's threads still hold the cores), so the request pays for
queueing them; their own work per request is timed alone too (the same answers observed again and
again), which is what they cost the machine. Also the cost of one scrape of the whole registry,
which runs beside the requests, not in them.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import Results, bench_parser
from bench.serving import export_synthetic, request_inputs, small_config, small_towers


def _timed(predictor, model, ask) -> float:
    start = time.perf_counter()
    predictor.predict(model, "", ask)
    return time.perf_counter() - start


def monitoring_benchmark(results: Results, model, config, quick: bool) -> None:
    from serving.batching import call_signature
    from serving.models import ModelManager, ModelSpec
    from serving.monitoring import ServingMetrics
    from serving.predictor import Predictor

    n, pairs = (20_000, 200) if quick else (100_000, 1500)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_synthetic(model, config, n, Path(tmp))
        manager = ModelManager([ModelSpec("recommender", path.parent)])
        manager.poll()
        loaded = manager.get("recommender")
        third = n // 3  # what a real export's metadata adds: the catalogue's size, a training profile
        loaded.metadata.update({"history_length": config.towers.history_length, "index": {"domains": {
            d: {"items": third} for d in loaded.metadata["domains"]}}, "reference_profile": {
            "domain_shares": dict.fromkeys(loaded.metadata["domains"], 1 / 3)}})
        metrics = ServingMetrics(manager)
        off, on = Predictor(manager), Predictor(manager, metrics=metrics)
        asks = [request_inputs(20, seed, n) for seed in range(16)]
        times = {"off": [], "on": []}
        for i in range(pairs + 8):
            first, second = (("off", off), ("on", on)) if i % 2 else (("on", on), ("off", off))
            for label, predictor in (first, second):
                seconds = _timed(predictor, loaded, asks[i % len(asks)])
                if i >= 8:  # the first pairs warm both up
                    times[label].append(seconds)
        answers = [call_signature(loaded.signatures["serving_default"], a) for a in asks]
        start = time.perf_counter()
        for i in range(3000):
            metrics.answers.observe(loaded, "serving_default", asks[i % 16], answers[i % 16])
        observe = (time.perf_counter() - start) / 3000
        scrape = []
        for _ in range(20):
            start = time.perf_counter()
            metrics.exposition()
            scrape.append(time.perf_counter() - start)
    p50 = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    note = f"{pairs} requests each, off and on in turn, {n // 1000}k items"
    results.add("recommender p50 in-process through the Predictor, metrics off", p50["off"], "ms", note=note)
    results.add("recommender p50 in-process through the Predictor, metrics on", p50["on"], "ms", note=note)
    results.add("metrics on / off, p50", p50["on"] / p50["off"], "x", "<= 1.05")
    results.add("answer metrics' own work per request", 1e6 * observe, "us",
                note="the same answers observed 3,000 times, no model call; on the server it runs on a thread "
                     "of its own, after the answer is sent")
    results.add("answer metrics' own work / p50 with metrics off", 1000 * observe / p50["off"], "x", "<= 0.05")
    results.add("one scrape of the registry", 1000 * float(np.median(scrape)), "ms",
                note="beside the requests, not in them")


def main(argv=None) -> int:
    parser = bench_parser(__doc__, "20k items and fewer requests")
    args = parser.parse_args(argv)
    results = Results("monitoring")
    config = small_config(args.preset)
    monitoring_benchmark(results, small_towers(args.preset).model, config, args.quick)
    results.write(args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
