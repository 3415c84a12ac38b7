"""Catalogue benchmark: new items served without retraining, against a retrain that knows them.

    python -m bench.catalogue [--quick] [--config bench/configs/amazon_urllm.yaml]

The data's new-item split (``crossrec.data.splits.new_item``: a seeded share of each domain's
items, ``--new-share``) makes the new items: the served version 1 is trained and exported on every
other item's interactions and knows nothing of them. Then:
1. ``crossrec catalogue add`` of the new items' file, with ``crossrec serve`` watching the folder
   in its own process: the time from the file to the first gRPC answer of the new version;
2. a retrain that knows the new items' text and none of their interactions (towers, rankers and
   export on the same interactions, the new items in the catalogue): its time, and the ratio;
3. the new items' quality: each user's first interaction with a new item, asked with the user's
   interactions before it as history and ranked among all items of its domain (exact, no
   sampling) by the refreshed towers and by the retrained ones: NDCG@10 and Recall@50 of each,
   and their ratio (target >= 0.9);
4. old answers: the share of version 1's retrieval answers that version 2 gives unchanged (ids
   and scores), among queries whose version-2 top 10 holds no new item (target 1);
5. 10,000 more new items (the new items' texts with an edition number) added to version 2: the
   time from their file to version 3's first gRPC answer (target <= 120 s on 2 cores; not in a
   ``--quick`` run).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from bench.common import Results, bench_parser, start_server
from bench.retrain import _config
from crossrec import schema


def _quality(towers_dir: Path, known: pd.DataFrame, targets: pd.DataFrame, history_length: int) -> dict:
    """NDCG@10 and Recall@50 of ``targets`` by the towers in ``towers_dir`` (full corpus, the
    user's ``known`` interactions before each target as its history and excluded from ranking)."""
    from crossrec.evaluation import QuerySet, evaluate, seen_rows
    from crossrec.features import query_examples
    from towers.queries import scorer_for
    from towers.train import load_trained

    model, catalogue, _ = load_trained(towers_dir)
    examples = query_examples(known, targets, catalogue, history_length)
    queries = QuerySet("new_item", examples, seen_rows(known, examples.user_id, catalogue))
    metrics = evaluate([scorer_for(model, "towers")], [queries], catalogue, ks=(10, 50))
    row = metrics[metrics["domain"] == "all"].iloc[0]
    return {"ndcg@10": float(row["ndcg@10"]), "recall@50": float(row["recall@50"]), "queries": len(examples)}


def _refresh(work: Path, client, new_items: pd.DataFrame, history, results: Results,
             label: str) -> tuple[float, Path]:
    """``crossrec catalogue add`` while ``client``'s server serves ``work / "saved_models"``:
    (seconds from the file to the new version's first gRPC answer, the run folder). The probe:
    the ranking model scores a new item, which the version before does not know."""
    from crossrec.pipelines.catalogue import add_items

    path = work / f"{label.replace(' ', '_').replace(',', '')}.csv"
    new_items.to_csv(path, index=False)
    probe = new_items.iloc[0]
    started = time.perf_counter()
    result = add_items(path, work / "saved_models", work_dir=work / "catalogue", progress=False)
    published = time.perf_counter() - started
    while client.rank(history, probe[schema.DOMAIN], [str(probe[schema.ITEM_ID])])[0]["engagement"] < -1e8:
        if time.perf_counter() - started > 600:
            raise RuntimeError("the new version did not answer within 10 minutes")
        time.sleep(0.05)
    answering = time.perf_counter() - started
    results.add(f"catalogue add, {label}: items added", result.added, "items")
    for stage, seconds in result.seconds.items():
        results.add(f"catalogue add, {label}: {stage}", seconds, "s",
                    note="publish: every served model written and warmed" if stage == "publish" else "")
    results.add(f"catalogue add, {label}: file to the new version's first gRPC answer", answering, "s", "<= 120",
                note=f"crossrec serve polling the folder every second; published after {published:.1f} s")
    return answering, result.work_dir


def _train_and_export(config, data_dir: Path, out: Path, base: Path) -> float:
    """Towers and rankers trained on ``data_dir`` and exported to ``base``: seconds."""
    from ranking.train import train_ranking
    from serving.export import export_models
    from towers.train import train_retrieval

    config = replace(config, data=replace(config.data, interactions=str(data_dir), items=None, format="table",
                                          amazon_files={}))
    started = time.perf_counter()
    run = train_retrieval(config, out / "towers", progress=False)
    train_ranking(config, run, out / "ranking", progress=False)
    export_models(out / "towers", base, ranking_dir=out / "ranking", progress=False)
    return time.perf_counter() - started


def _old_answers_unchanged(base: Path, queries: list, added: set[bytes], results: Results) -> None:
    import tensorflow as tf

    from serving.client import _history_inputs

    before, after = (tf.saved_model.load(str(base / "retrieval" / v)).signatures["serving_default"] for v in "12")
    same = compared = 0
    for history, domain in queries:
        inputs = {k: tf.constant(v) for k, v in _history_inputs([history], [domain]).items()}
        old, new = (f(**inputs, k=tf.constant([10]), exclude_history=tf.constant([True])) for f in (before, after))
        if set(new["item_ids"].numpy()[0]) & added:
            continue
        compared += 1
        same += bool((old["item_ids"].numpy() == new["item_ids"].numpy()).all()
                     and (old["scores"].numpy() == new["scores"].numpy()).all())
    results.add("old answers unchanged (version 2 top 10 holds no new item)", same / max(compared, 1), "share", ">= 1",
                note=f"{compared} queries compared")


def _both_additions(work: Path, new_items: pd.DataFrame, history, more: int, results: Results) -> tuple[float, Path]:
    """The new items, then ``more`` items made of their texts with an edition number (none: skipped),
    added while one ``crossrec serve`` watches the folder: (the first addition's seconds, its run
    folder)."""
    from serving.client import CrossrecClient

    server, port = start_server(work / "saved_models", "--rest_api_port", "0", "--file_system_poll_wait_seconds", "1")
    try:
        with CrossrecClient(f"127.0.0.1:{port}") as client:
            first = _refresh(work, client, new_items, history, results, "the new items")
            if not more:
                return first
            copies = [new_items.assign(**{schema.ITEM_ID: new_items[schema.ITEM_ID].astype(str) + f"-ed{k}",
                                          schema.TITLE: new_items[schema.TITLE].astype(str) + f" (edition {k})"})
                      for k in range(2, 3 + more // len(new_items))]
            _refresh(work, client, pd.concat(copies, ignore_index=True).head(more), history, results,
                     f"{more:,} more items")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return first


def main(argv=None) -> int:
    from crossrec.data.dataset import Dataset
    from crossrec.data.loaders import load_dataset, text_template
    from crossrec.data.splits import new_item

    parser = bench_parser(__doc__, "small built-in data and one epoch (a smoke run)")
    parser.add_argument("--config", help="YAML config of the data and training (default: the built-in data)")
    parser.add_argument("--new-share", type=float, default=0.2, help="share of each domain's items made new")
    parser.add_argument("--work-dir", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    config = _config(args)
    config = replace(config, data=replace(config.data, text_template=text_template(config.data)))
    results = Results("catalogue")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work_dir or scratch)
        # a text cache of its own: the new items' texts are encoded by `catalogue add`, never found cached
        config = replace(config, encoder=replace(config.encoder, cache_dir=str(work / "text_cache")))
        full = load_dataset(config.data).clean()
        interactions = full.interactions.drop(columns=["split", "role"], errors="ignore")
        held = new_item(interactions, fraction=args.new_share, seed=config.split.seed)[schema.SPLIT] != schema.TRAIN
        keys = pd.MultiIndex.from_frame(interactions.loc[held.to_numpy(), list(schema.ITEM_KEY)].drop_duplicates())
        is_new = pd.MultiIndex.from_frame(full.items[list(schema.ITEM_KEY)]).isin(keys)
        old_items, new_items = full.items[~is_new], full.items[is_new].drop(columns=[schema.TEXT])
        served = interactions[~held.to_numpy()]
        Dataset(served, old_items).save(work / "served_data", overwrite=True)
        Dataset(served, full.items).save(work / "with_text_data", overwrite=True)
        results.add("new items", len(new_items), "items", note=f"{args.new_share:.0%} of each domain's items")
        served_s = _train_and_export(config, work / "served_data", work / "served_run", work / "saved_models")
        results.add("version 1: towers, rankers, export", served_s, "s", note="without the new items")
        targets = interactions[held.to_numpy()].drop_duplicates([schema.USER_ID, *schema.ITEM_KEY])
        user = targets.iloc[0][schema.USER_ID]
        history = list(served[served[schema.USER_ID] == user][[schema.DOMAIN, schema.ITEM_ID]].itertuples(
            index=False, name=None))[-5:]
        refresh_s, refresh_run = _both_additions(work, new_items, history, 0 if args.quick else 10_000, results)
        retrain_s = _train_and_export(config, work / "with_text_data", work / "with_text_run", work / "retrained")
        results.add("retrain knowing the new items' text: towers, rankers, export", retrain_s, "s")
        results.add("catalogue add to gRPC answer / retrain time", refresh_s / retrain_s, "x", "<= 0.1")
        refreshed = _quality(refresh_run / "towers", interactions, targets,
                             config.towers.history_length)
        retrained = _quality(work / "with_text_run" / "towers", interactions, targets, config.towers.history_length)
        for metric in ("ndcg@10", "recall@50"):
            results.add(f"new items, {metric}, added by catalogue add", refreshed[metric], "",
                        note=f"{refreshed['queries']} queries, full corpus")
            results.add(f"new items, {metric}, after a retrain knowing their text", retrained[metric], "")
            results.add(f"new items, {metric}: added / retrained", refreshed[metric] / max(retrained[metric], 1e-9),
                        "x", ">= 0.9")
        queries = [(list(g[[schema.DOMAIN, schema.ITEM_ID]].itertuples(index=False, name=None))[-6:], domain)
                   for _, g in list(served.groupby(schema.USER_ID))[:40 if args.quick else 400]
                   for domain in sorted(full.items[schema.DOMAIN].unique())]
        added = {i.encode() for i in new_items[schema.ITEM_ID].astype(str)}
        _old_answers_unchanged(work / "saved_models", queries, added, results)
    results.write(args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
