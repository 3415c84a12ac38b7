"""Retraining benchmark: a week's model, then the next week's data, warm-started.

    python -m bench.retrain [--config bench/configs/amazon_urllm.yaml] [--quick]

Splits every user's history in two halves by position (the first half is "last week", the
second half the new data, with the items first seen in it as new items), then:
1. trains the towers and rankers on the first half and exports them (the served version 1);
2. runs ``crossrec retrain`` with the second half (warm start from version 1);
3. reports the first-half model's test metrics, the gate's validation metric of the served and
   the warm-started towers on both halves (the same queries), the warm-started model's test
   metrics, the data changes, and the time each step took.
With ``--cold`` it also trains from scratch on both halves, for the time and quality a warm
start saves. Without ``--config`` it runs on the built-in data. The dataset's own split columns
are dropped: both halves are evaluated with crossrec's own split.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.common import Results, bench_parser
from crossrec import schema
from crossrec.config import Config, SynthConfig, load_config
from crossrec.data.dataset import Dataset
from crossrec.data.loaders import load_dataset, text_template
from crossrec.pipelines.retrain import retrain


def halves(dataset: Dataset) -> tuple[Dataset, Dataset]:
    """(first half of each user's history with the items it uses; second half with the items
    first seen in it)."""
    interactions = dataset.interactions.drop(columns=["split", "role"], errors="ignore")
    order = schema.order_column(interactions.columns)
    ranked = interactions.assign(_pos=np.arange(len(interactions))).sort_values([schema.USER_ID, order, "_pos"],
                                                                                 kind="stable")
    position = ranked.groupby(schema.USER_ID).cumcount()
    size = ranked.groupby(schema.USER_ID)[schema.ITEM_ID].transform("size")
    first_mask = (position < np.ceil(size / 2)).to_numpy()
    first = ranked[first_mask].drop(columns="_pos")
    second = ranked[~first_mask].drop(columns="_pos")
    keys = list(schema.ITEM_KEY)
    seen = first[keys].drop_duplicates()
    items = dataset.items
    first_items = items.merge(seen, on=keys)
    new_items = items.merge(second[keys].drop_duplicates(), on=keys).merge(seen, on=keys, how="left", indicator=True)
    new_items = new_items[new_items["_merge"] == "left_only"].drop(columns=["_merge", schema.TEXT])
    return Dataset(first, first_items), Dataset(second, new_items)


def week_one(config: Config, work: Path) -> tuple[Dataset, Dataset, Dataset, Config]:
    """(the whole data, its first half, its second half, the config that trains on the first
    half, saved in ``work / "first"``): last week's data and this week's."""
    full = load_dataset(config.data).clean()
    first, second = halves(full)
    first.save(work / "first", overwrite=True)
    first_config = replace(config, data=replace(config.data, interactions=str(work / "first"), items=None,
                                                format="table", amazon_files={},
                                                text_template=text_template(config.data)))
    return full, first, second, first_config


def _overall(metrics: list[dict], model: str = "crossrec") -> dict[str, dict]:
    return {r["slice"]: r for r in metrics if r.get("domain") == "all" and r.get("model") == model}


def _config(args) -> Config:
    config = load_config(args.config) if args.config else Config()
    if args.preset:
        config = replace(config, encoder=replace(config.encoder, preset=args.preset))
    if args.quick:
        config = replace(config, data=replace(config.data, synth=SynthConfig(n_users=120, n_items=180,
                                                                            n_interactions=3000)),
                         train=replace(config.train, epochs=1), ranking=replace(config.ranking, epochs=1),
                         export=replace(config.export, recall_queries=100))
    return replace(config, eval=replace(config.eval, use_given_split=False))


def _first_half(config: Config, work: Path, results: Results) -> None:
    """The first half trained (towers, rankers) and exported: the served version to retrain from."""
    from ranking.train import train_ranking
    from serving.export import export_models
    from towers.queries import sample_query_embeddings
    from towers.train import train_retrieval

    started = time.perf_counter()
    run = train_retrieval(config, work / "first_towers", progress=False)
    towers_s = time.perf_counter() - started
    train_ranking(config, run, work / "first_ranking", progress=False)
    ranking_s = time.perf_counter() - started - towers_s
    queries = sample_query_embeddings(run.model, run.data.examples, config.export.recall_queries)
    export_models(work / "first_towers", work / "saved_models", ranking_dir=work / "first_ranking",
                  recall_queries=queries, progress=False)
    first_s = time.perf_counter() - started
    first_test = _overall(json.loads(run.metrics.to_json(orient="records")))
    for name, row in sorted(first_test.items()):
        results.add(f"first-half model, test NDCG@10 ({name})", row["ndcg@10"], "", note="first half")
    results.add("first half: towers training", towers_s, "s")
    results.add("first half: rankers training", ranking_s, "s")
    results.add("first half: train + export in all", first_s, "s")


def _retrain_second_half(config: Config, work: Path, results: Results) -> None:
    """``crossrec retrain`` with the second half as new data, and what its run log says."""
    started = time.perf_counter()
    result = retrain(work / "second", work / "saved_models", config=config, work_dir=work / "runs", progress=False)
    retrain_s = time.perf_counter() - started
    log = [json.loads(line) for line in (result.work_dir / "run_log.jsonl").read_text().splitlines()]
    start = log[0]
    metric = result.gate["metric"]
    results.add(f"served (first-half) towers, both halves, validation {metric}", result.gate["served"], "",
                note="the gate's baseline")
    results.add(f"warm-started towers, both halves, validation {metric}", result.gate["retrained"], "")
    summary = json.loads((result.work_dir / "towers" / "run_summary.json").read_text())
    for name, row in sorted(_overall(summary["test_metrics"]).items()):
        results.add(f"warm-started model, test NDCG@10 ({name})", row["ndcg@10"], "", note="both halves")
    towers = next((r for r in log if r["event"] == "towers_trained"), {})
    rankers = next((r for r in log if r["event"] == "rankers_trained"), {})
    served_metric = next((r for r in log if r["event"] == "served_metric"), {})
    results.add("retrain: new items / users / interactions", start["new_items"], "items",
                note=f"{start['new_users']} new users, {start['new_interactions']} new interactions")
    results.add("retrain: texts encoded", served_metric.get("text_encoded", 0), "texts",
                note=f"{served_metric.get('text_cache_hits', 0)} cache hits (the cache is seeded from the served model)")
    results.add("retrain: towers training", towers.get("seconds", 0), "s",
                note=f"{towers.get('epochs')} epochs, {rankers.get('how', '')} rankers")
    results.add("retrain: rankers training", rankers.get("seconds", 0), "s")
    results.add("retrain: all (merge, gate, train, export)", retrain_s, "s",
                note="published" if result.published else "kept: " + result.reason)


def _cold(config: Config, full: Dataset, results: Results) -> None:
    """Towers trained from scratch on both halves, for comparison."""
    from towers.train import train_retrieval

    both = Dataset(full.interactions.drop(columns=["split", "role"], errors="ignore"), full.items)
    started = time.perf_counter()
    cold = train_retrieval(config, progress=False, dataset=both)
    cold_s = time.perf_counter() - started
    for name, row in sorted(_overall(json.loads(cold.metrics.to_json(orient="records"))).items()):
        results.add(f"cold-start towers, test NDCG@10 ({name})", row["ndcg@10"], "", note="both halves")
    results.add("cold start: towers training", cold_s, "s", note=f"{len(cold.history.get('loss', []))} epochs")


def main(argv=None) -> int:
    parser = bench_parser(__doc__, "small built-in data and one epoch (a smoke run)")
    parser.add_argument("--config", help="YAML config of the data and training (default: the built-in data)")
    parser.add_argument("--cold", action="store_true", help="also train from scratch on both halves")
    parser.add_argument("--work-dir", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    config = _config(args)
    results = Results("retrain")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work_dir or scratch)
        full, first, second, first_config = week_one(config, work)
        second.save(work / "second", overwrite=True)
        results.add("interactions, first half", len(first.interactions), "")
        results.add("interactions, second half (new)", len(second.interactions), "")
        _first_half(first_config, work, results)
        _retrain_second_half(first_config, work, results)
        if args.cold:
            _cold(config, full, results)
    results.write(args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
