"""Serving benchmark: the index, and the embedded server answering gRPC.

    python -m bench.serving [--quick]

- ScaNN (crossrec's default settings) vs exact search over 100k and 1M clustered 64-d item
  vectors: recall@10 against exact, and single-query latency (target from issue 5: recall@10 >=
  0.95 with the defaults).
- One ``recommender`` request in-process over 100k items, the served list (the towers' 50 and
  each candidate source's 25, merged and ranked) against the towers' 50 alone: p50 and p99; and
  the ``feed`` signature (10 items from every domain, diversity 0.3, calibration 1) against the
  served list's request (target from issue 32: <= 1.5x).
- The ``recommender`` model (retrieve 50 + sources -> rank with the student -> top 10) over 100k items,
  served by ``crossrec serve`` in its own process, batching off and on, and asked by 1, 4 and 8
  client processes with the official gRPC stubs: throughput, p50/p99 and where the server's time
  goes; the model's cost per row at 1, 8 and 32 rows (``bench.serving_profile``; targets from
  issue 50: batching on / off >= 1.5x throughput at 8 clients, p99 at 1 client <= 1.2x off).
The towers are trained briefly on the built-in data (their weights do not change the timings);
the large catalogues are synthetic vectors.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from bench.common import Results, bench_parser
from crossrec import schema
from crossrec.config import Config, EncoderConfig, SynthConfig
from crossrec.features import Catalogue


def clustered_vectors(n: int, dim: int = 64, clusters: int = 1000, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``clusters`` centres: closer to real item embeddings than uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def synthetic_catalogue(n: int, domains: list[str]) -> Catalogue:
    real = [d for d in domains[1:]]
    domain = np.array(real)[np.arange(n) % len(real)]
    items = pd.DataFrame({schema.ITEM_ID: [f"I{i:07d}" for i in range(n)], schema.DOMAIN: domain,
                          schema.TEXT: ""})
    return Catalogue.build(items, real)


def index_benchmark(results: Results, n: int, queries: int = 1000) -> None:
    from serving.index import DomainIndex

    catalogue = synthetic_catalogue(n, ["<unseen>", "all"])
    vectors = np.concatenate([np.zeros((1, 64), np.float32), clustered_vectors(n)])
    probe = clustered_vectors(queries, seed=1)
    started = time.perf_counter()
    scann = DomainIndex(catalogue, vectors, k=10, history_length=0, kind="scann")
    build = time.perf_counter() - started
    exact = DomainIndex(catalogue, vectors, k=10, history_length=0, kind="brute_force")
    quantized = {mode: DomainIndex(catalogue, vectors, k=10, history_length=0, quantize=mode)
                 for mode in ("float16", "int8")}
    approx_rows, exact_rows = scann.rows_for(probe, 1, 10), exact.rows_for(probe, 1, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx_rows, exact_rows, strict=True)])
    params = scann.parameters["domains"]["all"]
    size = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
    results.add(f"ScaNN recall@10 vs exact, {size} items", recall, "", ">= 0.95",
                note=f"leaves {params['leaves']}, search {params['leaves_to_search']}, reorder {params['reorder']}")
    for mode, index in quantized.items():
        rows = index.rows_for(probe, 1, 10)
        results.add(f"{mode} brute-force recall@10 vs float32 exact, {size} items",
                    np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact_rows, strict=True)]), "",
                    ">= 0.98", note=f"table {index.nbytes / 2**20:.1f} MiB vs {exact.nbytes / 2**20:.1f} MiB float32")
        results.add(f"{mode} table size reduction, {size} items", exact.nbytes / index.nbytes, "x",
                    ">= 3.5" if mode == "int8" else "")
    for name, index in [("ScaNN", scann), ("exact", exact), *[(f"{m} exact", i) for m, i in quantized.items()]]:
        search = tf.function(lambda q, index=index: index.search(q, tf.ones([1], tf.int32), tf.zeros([1, 1], tf.int32), 10))
        search(tf.constant(probe[:1]))
        times = []
        for i in range(200):
            q = tf.constant(probe[i:i + 1])
            start = time.perf_counter()
            search(q)[1].numpy()
            times.append(time.perf_counter() - start)
        results.add(f"{name} single-query latency p50, {size} items", 1000 * np.median(times), "ms")
    results.add(f"ScaNN index build, {size} items", build, "s")


def export_synthetic(model, config: Config, n: int, out: Path, name: str = "recommender") -> Path:
    """``name`` (recommender or retrieval) over ``n`` synthetic items, with the real user tower
    and an untrained student ranker, as version 1 under ``out/<name>/``."""
    import json

    from ranking.fit import build_ranker
    from ranking.ranker_spec import STUDENT, TEACHER, RankerSpec
    from ranking.served_list import ServedListSpec
    from ranking.sources import NeighbourTable
    from ranking.tables import FeatureTables
    from serving.feed import FeedRecommenderModule
    from serving.index import DomainIndex
    from serving.layout import METADATA_FILE
    from serving.lookups import Lookups
    from serving.parts import ExportParts
    from serving.signatures import RetrievalModule

    domains = ["<unseen>", "books", "kitchen", "movies"]
    catalogue = synthetic_catalogue(n, domains)
    e = config.towers.embedding_dim
    vectors = np.concatenate([np.zeros((1, e), np.float32), clustered_vectors(n, e)])
    parts = ExportParts(config, catalogue, model, vectors, Lookups(catalogue, vectors, config.towers.history_length),
                        served_list=ServedListSpec.from_config(config, 0.0))
    parts.index = DomainIndex(catalogue, vectors, k=max(config.export.max_k, config.ranking.candidates),
                              history_length=config.towers.history_length, kind=config.export.index)
    rng = np.random.default_rng(0)  # neighbour tables of the configured width, random: same cost as real ones
    width = config.ranking.source_neighbours * (len(domains) - 1)
    sources = [NeighbourTable(name, rng.integers(1, len(vectors), (len(vectors), width)).astype(np.int32),
                              rng.random((len(vectors), width)).astype(np.float32), 1.0)
               for name in config.ranking.sources]
    tables = FeatureTables(vectors, catalogue.item_domain, len(domains), np.ones(len(vectors), np.float32),
                           sources=sources)
    served = TEACHER if config.export.ranker == "teacher" else STUDENT
    parts.ranker = build_ranker(RankerSpec.of(config, served), tables)  # untrained: the same cost as trained
    module = (FeedRecommenderModule if name == "recommender" else RetrievalModule)(parts)
    path = out / name / "1"
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"] if config.export.index == "scann" else None)
    tf.saved_model.save(module, str(path), options=options,
                        signatures={"serving_default": module.serve, **getattr(module, "extra_signatures", {})})
    (path / "assets").mkdir(exist_ok=True)
    metadata = {"domains": domains[1:], "max_k": config.export.max_k}
    if hasattr(module, "feed"):  # as serving.export records it: the batch job's --feed looks for it
        from serving.export import signature_description

        metadata["feed_signature"] = signature_description(module.feed)
    (path / "assets" / METADATA_FILE).write_text(json.dumps(metadata))
    return path


def request_inputs(history_length: int, seed: int, n: int = 100_000) -> dict:
    rng = np.random.default_rng(seed)
    items = [f"I{i:07d}".encode() for i in rng.integers(0, n, history_length)]
    domains = [("books", "kitchen", "movies")[int(i[1:]) % 3].encode() for i in items]
    return {"history_item_ids": np.array([items], dtype=object), "history_domains": np.array([domains], dtype=object),
            "target_domain": np.array([b"movies"], dtype=object), "k": np.array([10], np.int32),
            "exclude_history": np.array([True])}


def warmup_benchmark(results: Results, model, config: Config, trials: int = 2, n: int = 100_000) -> None:
    """The first request a new version answers, loaded with and without TF Serving's warm-up
    file (``serving.warmup``), as the model manager loads a hot-swapped version."""
    import shutil

    from serving.models import load_saved_model
    from serving.predictor import Predictor
    from serving.warmup import write_warmup

    with tempfile.TemporaryDirectory() as tmp:
        cold = export_synthetic(model, config, n, Path(tmp) / "cold")
        warm = Path(tmp) / "warm" / "recommender" / "1"
        shutil.copytree(cold, warm)
        write_warmup(warm, "recommender", [request_inputs(20, seed) for seed in range(4)])
        inputs = request_inputs(20, 99)
        predictor = Predictor(manager=None)
        first = {"cold": [], "warm": []}
        steady = []
        for _ in range(trials):
            for kind, path in (("cold", cold), ("warm", warm)):
                loaded = load_saved_model("recommender", 1, path)
                start = time.perf_counter()
                predictor.predict(loaded, "", inputs)
                first[kind].append(time.perf_counter() - start)
                for _ in range(20):
                    start = time.perf_counter()
                    predictor.predict(loaded, "", inputs)
                    steady.append(time.perf_counter() - start)
    no, yes, later = (1000 * float(np.median(first["cold"])), 1000 * float(np.median(first["warm"])),
                      1000 * float(np.median(steady)))
    results.add("first request after a version loads, without warm-up", no, "ms", note=f"recommender, {n // 1000}k items")
    results.add("first request after a version loads, with warm-up", yes, "ms")
    results.add("steady-state request p50", later, "ms")
    results.add("first request with warm-up / steady-state p50", yes / later, "x", "<= 2",
                note=f"without warm-up: {no / later:.0f}x")


def served_list_benchmark(results: Results, model, config: Config, quick: bool) -> None:
    """One ``recommender`` request over 100k items, in-process, p50/p99: the served list (the
    towers' 50 and each candidate source's 25 merged, ranked by the student, new items placed)
    against the towers' 50 ranked alone (the recommender before the sources) and against the
    same list ranked by the teacher (``export.ranker: teacher``), in the same run."""
    from crossrec.config import DEFAULT_STUDENT_FEATURES

    n, requests = (20_000, 100) if quick else (100_000, 400)
    towers_only = replace(config, ranking=replace(config.ranking, sources=[], features=None,
                                                  student=replace(config.ranking.student,
                                                                  features=list(DEFAULT_STUDENT_FEATURES))))
    p = {}
    with tempfile.TemporaryDirectory() as tmp:
        teacher = replace(config, export=replace(config.export, ranker="teacher"))
        for label, which in (("towers' 50 only", towers_only), ("served list by the teacher", teacher),
                             ("served list", config)):  # the last: the feed below is asked of its export
            path = export_synthetic(model, which, n, Path(tmp) / str(len(p)))
            serve = tf.saved_model.load(str(path)).signatures["serving_default"]
            asks = [{k: tf.constant(v) for k, v in request_inputs(20, seed, n).items()} for seed in range(16)]
            p[label] = _percentiles(serve, asks, requests)
            results.add(f"recommender p50, {label}, {n // 1000}k items, in-process", p[label][0], "ms")
            results.add(f"recommender p99, {label}, {n // 1000}k items, in-process", p[label][1], "ms")
        feed = tf.saved_model.load(str(path)).signatures["feed"]  # the served list's export
        feeds = [{"history_item_ids": a["history_item_ids"], "history_domains": a["history_domains"],
                  "n": tf.constant([10], tf.int32), "diversity": tf.constant([0.3]), "calibration": tf.constant([1.0]),
                  "target_shares": tf.zeros([1, 0]), "exclude_history": a["exclude_history"]} for a in asks]
        p["feed"] = _percentiles(feed, feeds, requests)
        results.add(f"feed p50, n 10 from 3 domains, {n // 1000}k items, in-process", p["feed"][0], "ms",
                    note="diversity 0.3, calibration 1")
        results.add(f"feed p99, n 10 from 3 domains, {n // 1000}k items, in-process", p["feed"][1], "ms")
    sources = len(config.ranking.sources)
    results.add("served list / towers' 50 only, p50", p["served list"][0] / p["towers' 50 only"][0], "x", "<= 1.25",
                note=f"{sources} sources: the history's neighbour entries (ranking.source_scores), top "
                     f"{config.ranking.source_candidates} each")
    results.add("served list by the teacher / by the student, p50",
                p["served list by the teacher"][0] / p["served list"][0], "x",
                note="what serving the teacher's order would cost (issue 51)")
    results.add("feed / recommender request, p50", p["feed"][0] / p["served list"][0], "x", "<= 1.5",
                note="the feed asks the recommender's work for every domain's row in one call, then picks greedily")


def _percentiles(signature, asks: list[dict], requests: int) -> tuple[float, float]:
    """p50 and p99 (ms) of ``signature`` asked ``asks`` in turn, ``requests`` times, after four
    calls that warm it up."""
    for ask in asks[:4]:
        signature(**ask)
    times = []
    for i in range(requests):
        start = time.perf_counter()
        {k: v.numpy() for k, v in signature(**asks[i % len(asks)]).items()}
        times.append(time.perf_counter() - start)
    return 1000 * np.percentile(times, 50), 1000 * np.percentile(times, 99)


def small_config(preset: str | None) -> Config:
    config = Config(encoder=EncoderConfig(preset=preset))
    return replace(config, data=replace(config.data, synth=SynthConfig(n_users=200, n_items=300, n_interactions=4000)),
                   train=replace(config.train, epochs=1))


def small_towers(preset: str | None):
    """Towers trained for one epoch on small built-in data: real layers for timing, nothing more."""
    from towers.train import train_retrieval

    return train_retrieval(small_config(preset), progress=False)


def main(argv=None) -> int:
    parser = bench_parser(__doc__, "smaller index sizes and fewer requests")
    args = parser.parse_args(argv)
    results = Results("serving")
    for n in ((20_000,) if args.quick else (100_000, 1_000_000)):
        index_benchmark(results, n, queries=200 if args.quick else 1000)
    config = small_config(args.preset)
    towers = small_towers(args.preset).model
    served_list_benchmark(results, towers, config, args.quick)
    from bench.serving_profile import batching_profile  # it builds on this module's helpers

    batching_profile(results, towers, config, args.quick)
    warmup_benchmark(results, towers, config, n=20_000 if args.quick else 100_000)
    results.write(args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
