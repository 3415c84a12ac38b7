"""Batch job stress benchmark: the candidates job run many times with several worker threads and
``--rank-top``; every run must finish, balance its books (queries in = lists out, rows counted =
rows written, dead letters counted = written) and write exactly the rows of the first run.

    python -m bench.batch_stress [--quick] [--runs N]

Before retrieval and ranking ran in one step, 3 of 15 such runs on the quickstart's export crashed
in the CoGroupByKey that joined them ("Unknown type tag") and one lost 68 of 4,000 queries
without failing. CI runs a smaller version (tests/test_batch.py).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.batch import users_table
from bench.common import Results, bench_parser
from bench.serving import export_synthetic, small_config, small_towers
from serving.batch import run_candidates


def read_rows(folder: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(f) for f in sorted(folder.glob("candidates-*.parquet"))]
    return pd.concat(frames, ignore_index=True).sort_values(["user_id", "domain", "rank"], ignore_index=True)


def main(argv=None) -> int:
    parser = bench_parser(__doc__, "fewer runs and users (a smoke run)")
    parser.add_argument("--runs", type=int, help="runs of the job (default 20; --quick 3)")
    parser.add_argument("--workers", type=int, default=2, help="Beam worker threads (default 2)")
    args = parser.parse_args(argv)
    runs = args.runs or (3 if args.quick else 20)
    n_users, n_items = (300, 3_000) if args.quick else (2_000, 20_000)
    results = Results("batch_stress")
    config = small_config(args.preset)
    failed, differing, seconds, first = 0, 0, [], None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = small_towers(args.preset).model
        for name in ("retrieval", "recommender"):
            export_synthetic(model, config, n_items, tmp / "saved_models", name)
        users_table(n_users, n_items).drop(columns=["domain"]).to_parquet(tmp / "users.parquet")  # every domain
        for run in range(runs):
            started = time.perf_counter()
            try:
                result = run_candidates(tmp / "saved_models", tmp / f"out{run}", users=str(tmp / "users.parquet"),
                                        k=20, rank_top=5, batch_size=64,
                                        pipeline_args=["--direct_num_workers", str(args.workers)])
            except Exception as exc:  # a crash or unbalanced books: counted, and the stress goes on
                print(f"  run {run + 1}: failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                failed += 1
                continue
            seconds.append(time.perf_counter() - started)
            rows = read_rows(tmp / f"out{run}")
            if result.counts["queries"] != 3 * n_users or (first is not None and not rows.equals(first)):
                differing += 1
            first = rows if first is None else first
            print(f"  run {run + 1}/{runs}: {result.counts['queries']} queries, {len(rows)} rows, "
                  f"{seconds[-1]:.1f} s", flush=True)
    note = f"{n_users} users x 3 domains, top 20 over {n_items // 1000}k items, --rank-top 5, {args.workers} workers"
    results.add("runs", runs, "runs", note=note)
    results.add("failed runs (crash or unbalanced books)", failed, "runs", "<= 0")
    results.add("runs whose rows differ from the first", differing, "runs", "<= 0")
    if seconds:
        results.add("seconds per run (median)", sorted(seconds)[len(seconds) // 2], "s")
    results.write(args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
