"""Batch candidates benchmark: Beam (the local FnApiRunner; row "Beam DirectRunner") vs a plain loop, same SavedModel.

    python -m bench.batch [--quick]

Top-100 candidates over 100k items for every user of a users table (histories of 20 items),
through ``crossrec candidates`` (Beam's local FnApiRunner, reading and writing Parquet) and through a
plain ``tf.data`` loop over the same ``retrieval`` SavedModel (reading the same Parquet, calling
the same handler, writing one Parquet file), against the roofline of the same work (a bare
batched matmul + top-k of the same user and item counts, timed in the same run). Targets: Beam
>= 0.9x the loop and >= 0.6x the roofline.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from bench.common import Results, bench_parser
from bench.serving import export_synthetic, small_config, small_towers
from serving.batch import CANDIDATES_SCHEMA, BatchRequest, run_candidates
from serving.batch_handlers import Query, SavedModelHandler, ServedModel


def users_table(n_users: int, n_items: int, history: int = 20, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n_items, size=(n_users, history))
    domains = np.array(["books", "kitchen", "movies"])
    return pd.DataFrame({"user_id": [f"U{i:07d}" for i in range(n_users)],
                         "domain": domains[rng.integers(0, 3, n_users)],
                         "history_item_ids": [[f"I{j:07d}" for j in row] for row in items],
                         "history_domains": [list(domains[row % 3]) for row in items]})


def plain_loop(model_dir: Path, users: Path, out: Path, k: int, batch_size: int) -> float:
    """The same work without Beam: Parquet -> tf.data batches -> the handler's model call -> Parquet."""
    started = time.perf_counter()
    table = pd.read_parquet(users)
    handler = SavedModelHandler(ServedModel.latest(model_dir, "retrieval"), k=k)
    model = handler.load_model()
    queries = [Query(u, d, list(i), list(h)) for u, d, i, h in
               zip(table["user_id"], table["domain"], table["history_item_ids"], table["history_domains"], strict=True)]
    rows = {name: [] for name in CANDIDATES_SCHEMA.names}
    for index in tf.data.Dataset.range(len(queries)).batch(batch_size).as_numpy_iterator():
        batch = [queries[i] for i in index]
        for query, result in zip(batch, handler.run_inference(batch, model), strict=True):
            n = len(result["item_ids"])
            rows["user_id"] += [query.user_id] * n
            rows["domain"] += [query.domain] * n
            rows["rank"] += list(range(1, n + 1))
            rows["item_id"] += result["item_ids"]
            rows["score"] += result["scores"]
            rows["model_name"] += ["retrieval"] * n
            rows["model_version"] += [1] * n
    pq.write_table(pa.Table.from_pydict(rows, schema=CANDIDATES_SCHEMA), out / "candidates.parquet")
    return time.perf_counter() - started


def roofline(n_users: int, n_items: int, k: int, history: int = 20, batch_size: int = 1024, dim: int = 64) -> float:
    """Seconds for the bare work of the same job on the same machine: each user's query against
    its domain's items (a third of the catalogue) as one batched matmul, then top k + history
    (what the index fetches before excluding seen items); no lookups, towers or I/O."""
    rng = np.random.default_rng(0)
    items = tf.constant(rng.normal(size=(n_items // 3, dim)).astype(np.float32))
    queries = rng.normal(size=(n_users, dim)).astype(np.float32)

    @tf.function
    def search(q):
        return tf.math.top_k(tf.matmul(q, items, transpose_b=True), k=k + history)

    search(tf.constant(queries[:batch_size]))
    started = time.perf_counter()
    for start in range(0, n_users, batch_size):
        search(tf.constant(queries[start:start + batch_size]))[1].numpy()
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = bench_parser(__doc__, "fewer users and items (a smoke run)")
    parser.add_argument("--users", type=int, help="users in the table (default 50,000; --quick 2,000)")
    args = parser.parse_args(argv)
    results = Results("batch")
    n_users = args.users or (2_000 if args.quick else 50_000)
    n_items = 20_000 if args.quick else 100_000
    k = 100
    config = small_config(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export_synthetic(small_towers(args.preset).model, config, n_items, tmp / "saved_models", "retrieval")
        users_table(n_users, n_items).to_parquet(tmp / "users.parquet")
        (tmp / "loop").mkdir()
        loop = plain_loop(tmp / "saved_models", tmp / "users.parquet", tmp / "loop", k, 1024)
        started = time.perf_counter()
        result = run_candidates(tmp / "saved_models", tmp / "beam", BatchRequest(users=str(tmp / "users.parquet"), k=k),
                                pipeline_args=["--direct_num_workers=1"])
        beam_seconds = time.perf_counter() - started
        assert result.counts["users_scored"] == n_users
    note = f"{n_users} users, top {k} of {n_items // 1000}k items, history 20"
    results.add("plain tf.data loop", n_users / loop, "users/s", note=note)
    results.add("Beam DirectRunner", n_users / beam_seconds, "users/s", ">= 15000", note=note)
    results.add("Beam / plain loop", loop / beam_seconds, "x", ">= 0.9")
    bare = roofline(n_users, n_items, k)
    results.add("roofline: bare batched matmul + top-k", n_users / bare, "users/s", note=note)
    results.add("Beam / roofline", bare / beam_seconds, "x", ">= 0.6")
    results.write(args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
