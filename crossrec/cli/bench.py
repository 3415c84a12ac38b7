"""``crossrec bench``: every benchmark, one table against the targets."""

from __future__ import annotations

import argparse


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.all import main as bench_main

    flags = (["--quick"] if args.quick else []) + (["--only", args.only] if args.only else []) + \
        (["--preset", args.preset] if args.preset else []) + \
        (["--results-dir", args.results_dir] if args.results_dir else [])
    return bench_main(flags)


def register(commands) -> None:
    bench = commands.add_parser(
        "bench", help="run every benchmark and compare each figure with its target",
        description="Run the towers, ranking, serving, batch, batch_stress, retrain and scale (1x and 4x) benchmarks (about 20 minutes on 2 "
                    "CPU cores), print one table of every figure against its target, and write "
                    "bench/results/latest.json and latest.md (plus each benchmark's own results).")
    bench.add_argument("--quick", action="store_true", help="smoke-test sizes (about a minute each)")
    bench.add_argument("--only", help="comma-separated subset of towers,ranking,serving,batch,batch_stress,retrain,scale")
    bench.add_argument("--preset", help="text encoder preset folder (default: all-MiniLM-L6-v2)")
    bench.add_argument("--results-dir", help="where to write results (default bench/results)")
    bench.set_defaults(func=cmd_bench)
