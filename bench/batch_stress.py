"""Batch job stress benchmark: the candidates job run many times on a busy machine (a competing
process), over ``--rank-top``, ``--feed`` and ``--interactions`` in turn, with the job's own runner
settings unless ``--workers`` / ``--running-mode`` say otherwise. Every run must finish,
balance its books (input rows and users reached = what the files hold, queries in = lists out,
rows counted = rows written, dead letters counted = written) and write exactly the rows of a
reference run of the same mode with one worker.

    python -m bench.batch_stress [--quick] [--runs N] [--workers N] [--modes rank_top,feed,interactions]
                                 [--model-dir DIR --interactions FILE] [--read beam] [--no-contention]

Without ``--model-dir`` it exports small towers over 20k synthetic items; with it, the export and
the interactions table given (the quickstart's: ``.runs/quickstart/saved_models`` and
``.runs/quickstart/data/interactions.parquet``; the users table is built from the interactions).
``--read beam`` runs the job with the read it had before issue 45 (Beam's ``ReadFromParquet``),
so that before and after are measured the same way. CI runs a smaller version (tests/test_batch.py).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import pandas as pd

import serving.batch
from bench.batch import users_table
from bench.common import Results, bench_parser
from crossrec import schema
from serving.batch import BatchRequest, run_candidates
from serving.batch_accounting import IncompleteOutput
from serving.batch_feed import FeedRequest

MODES = ("rank_top", "feed", "interactions")


class BeamParquetRead(beam.PTransform):
    """The job's read before issue 45: Beam's splittable ``ReadFromParquet`` over one file."""

    def __init__(self, surveyed):
        super().__init__()
        files = sorted({path for path, _ in surveyed.pieces})
        assert len(files) == 1, "the old read is measured on one input file"
        self.path = files[0]

    def expand(self, pbegin):
        return pbegin | beam.io.ReadFromParquet(self.path)


def read_rows(folder: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(f) for f in sorted(folder.glob("candidates-*.parquet"))]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["user_id", "domain", "rank"])
    return rows.sort_values(["user_id", "domain", "rank"], ignore_index=True)


def histories(interactions: pd.DataFrame) -> pd.DataFrame:
    """The users table of an interactions table: each user's history, oldest first."""
    order = schema.TIMESTAMP if schema.TIMESTAMP in interactions else schema.SEQ_POS
    ordered = interactions.sort_values([schema.USER_ID, order], kind="stable")
    grouped = ordered.groupby(schema.USER_ID, sort=True)[[schema.ITEM_ID, schema.DOMAIN]].agg(list)
    return pd.DataFrame({schema.USER_ID: grouped.index, "history_item_ids": grouped[schema.ITEM_ID].to_numpy(),
                         "history_domains": grouped[schema.DOMAIN].to_numpy()})


def inputs(args, tmp: Path) -> tuple[Path, Path, Path, str]:
    """(export folder, users table, interactions table, a note on what they are)."""
    if args.model_dir:
        interactions = pd.read_parquet(args.interactions)
        histories(interactions).to_parquet(tmp / "users.parquet")
        return Path(args.model_dir), tmp / "users.parquet", Path(args.interactions), (
            f"{interactions[schema.USER_ID].nunique()} users of {args.interactions}, export {args.model_dir}")
    from bench.serving import export_synthetic, small_config, small_towers

    n_users, n_items = (300, 3_000) if args.quick else (2_000, 20_000)
    config, model = small_config(args.preset), small_towers(args.preset).model
    for name in ("retrieval", "recommender"):
        export_synthetic(model, config, n_items, tmp / "saved_models", name)
    users = users_table(n_users, n_items).drop(columns=["domain"])  # every domain
    users.to_parquet(tmp / "users.parquet")
    rows = users.explode(["history_item_ids", "history_domains"])
    interactions = pd.DataFrame({schema.USER_ID: rows[schema.USER_ID].to_numpy(),
                                 schema.ITEM_ID: rows["history_item_ids"].to_numpy(),
                                 schema.DOMAIN: rows["history_domains"].to_numpy(),
                                 schema.SEQ_POS: rows.groupby(level=0).cumcount().to_numpy()})
    interactions.to_parquet(tmp / "interactions.parquet", row_group_size=2_000)
    return tmp / "saved_models", tmp / "users.parquet", tmp / "interactions.parquet", (
        f"{n_users} users, {n_items // 1000}k synthetic items")


def one_run(mode: str, models: Path, users: Path, interactions: Path, out: Path, workers: int | None,
            running_mode: str | None = None):
    ask = {"rank_top": dict(users=str(users), k=20, rank_top=5),
           "feed": dict(users=str(users), feed=FeedRequest(10)),
           "interactions": dict(interactions=str(interactions), k=20, rank_top=5)}[mode]
    pipeline_args = [] if workers is None else ["--direct_num_workers", str(workers)]
    if running_mode:
        pipeline_args += ["--direct_running_mode", running_mode]
    return run_candidates(models, out, BatchRequest(**ask), batch_size=64, pipeline_args=pipeline_args)


def parse_args(argv):
    parser = bench_parser(__doc__, "fewer runs and users (a smoke run)")
    parser.add_argument("--runs", type=int, help="runs of the job, the modes in turn (default 51; --quick 3)")
    parser.add_argument("--workers", type=int, help="Beam workers (default: the job's own choice)")
    parser.add_argument("--running-mode", choices=("in_memory", "multi_threading"),
                        help="Beam's direct_running_mode (default: the job's own choice)")
    parser.add_argument("--model-dir", help="an export to use (default: small synthetic towers)")
    parser.add_argument("--interactions", help="with --model-dir: the interactions table to read")
    parser.add_argument("--read", choices=("row-groups", "beam"), default="row-groups",
                        help="the job's read: row groups as elements (the product's) or Beam's ReadFromParquet "
                             "(before issue 45)")
    parser.add_argument("--no-contention", action="store_true", help="no competing busy process")
    parser.add_argument("--modes", default=",".join(MODES), help=f"the modes to run in turn (default {','.join(MODES)})")
    args = parser.parse_args(argv)
    if bool(args.model_dir) != bool(args.interactions):
        parser.error("--model-dir and --interactions go together")
    args.runs = args.runs or (3 if args.quick else 51)
    args.modes = [m.strip() for m in args.modes.split(",")]
    if set(args.modes) - set(MODES):
        parser.error(f"--modes: unknown {sorted(set(args.modes) - set(MODES))}; choose from {', '.join(MODES)}")
    return args


def references(args, tmp: Path, data) -> dict:
    """mode -> (queries, rows) of a one-worker run; a run whose books do not close is asked again."""
    reference = {}
    for mode in args.modes:
        for attempt in range(5):
            try:
                done = one_run(mode, *data, tmp / f"ref-{mode}-{attempt}", 1, args.running_mode)
                break
            except IncompleteOutput as exc:
                print(f"  reference ({mode}): {str(exc)[:300]}", flush=True)
        reference[mode] = (done.counts["queries"], read_rows(tmp / f"ref-{mode}-{attempt}"))
    return reference


def stress(args, tmp: Path, data, reference: dict) -> dict:
    """Runs the job ``args.runs`` times, the modes in turn; what went wrong, counted."""
    tally = {"failed": 0, "differing": 0, "lost_queries": 0, "seconds": []}
    for run in range(args.runs):
        mode = args.modes[run % len(args.modes)]
        started = time.perf_counter()
        try:
            result = one_run(mode, *data, tmp / f"out{run}", args.workers, args.running_mode)
        except Exception as exc:  # a crash or unbalanced books: counted, and the stress goes on
            print(f"  run {run + 1} ({mode}): failed: {type(exc).__name__}: {str(exc)[:400]}", flush=True)
            tally["failed"] += 1
            continue
        tally["seconds"].append(time.perf_counter() - started)
        rows = read_rows(tmp / f"out{run}")
        queries, expected = reference[mode]
        same = len(rows) == len(expected) and rows.equals(expected)
        tally["differing"] += not same
        tally["lost_queries"] += max(queries - result.counts["queries"], 0)
        print(f"  run {run + 1}/{args.runs} ({mode}): {result.counts['queries']} queries, {len(rows)} rows, "
              f"{'same rows' if same else 'ROWS DIFFER'}, {tally['seconds'][-1]:.1f} s", flush=True)
    return tally


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.read == "beam":
        serving.batch.ReadRowGroups = BeamParquetRead
    results = Results("batch_stress" + ("_beam_read" if args.read == "beam" else ""))
    busy = None if args.no_contention else subprocess.Popen(
        [sys.executable, "-c", "while True: sum(i * i for i in range(10**6))"])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            *data, note = inputs(args, tmp)
            tally = stress(args, tmp, data, references(args, tmp, data))
    finally:
        if busy is not None:
            busy.kill()
    contention = "none" if args.no_contention else "one busy process"
    workers = args.workers or "the job default"
    results.add("runs", args.runs, "runs", note=f"{note}; modes {', '.join(args.modes)} in turn; workers: {workers}; "
                                                f"contention: {contention}; read: {args.read}; running mode: "
                                                f"{args.running_mode or 'the job default'}")
    results.add("failed runs (crash or unbalanced books)", tally["failed"], "runs", "<= 0")
    results.add("finished runs whose rows differ from the reference", tally["differing"], "runs", "<= 0")
    results.add("queries lost by finished runs", tally["lost_queries"], "queries", "<= 0")
    if tally["seconds"]:
        results.add("seconds per run (median)", sorted(tally["seconds"])[len(tally["seconds"]) // 2], "s")
    results.write(args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
