"""Every benchmark in one command: ``crossrec bench`` (or ``make bench``, ``python -m bench.all``).

Runs the towers, ranking, serving, monitoring, batch, batch_stress, retrain, catalogue, catalogue_scale, feed and scale
(1x and 4x) benchmarks
one after another at their default sizes (about 20 minutes on 2 CPU cores), each writing ``bench/results/<name>.json``
and ``.md`` as when run alone, then prints one table of every figure against its target from
the issues and writes it to ``bench/results/latest.json`` and ``latest.md``.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

from bench.common import RESULTS, Results, Row, bench_parser

BENCHMARKS = ("towers", "ranking", "serving", "monitoring", "batch", "batch_stress", "retrain", "catalogue", "catalogue_scale",
              "feed", "scale")
# Beyond the shared flags: `crossrec bench` runs the scale benchmark's 1x and 4x points only
# (python -m bench.scale runs 1x..64x, about 40 minutes).
EXTRA_FLAGS = {"scale": ["--scales", "1,4"]}


def main(argv=None) -> int:
    parser = bench_parser(__doc__, "every benchmark at smoke-test size (about a minute each)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: rebuild latest.json/.md from each benchmark's last results")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    directory = Path(args.results_dir or RESULTS)
    latest = Results("latest")
    seconds = {}
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        flags = ["--results-dir", str(directory)]
        if args.quick:
            flags.append("--quick")
        else:
            flags += EXTRA_FLAGS.get(name, [])
        if args.preset:
            flags += ["--preset", args.preset]
        started = time.perf_counter()
        code = 0 if args.collect else importlib.import_module(f"bench.{name}").main(flags)
        seconds[name] = round(time.perf_counter() - started, 1)
        if code:
            print(f"bench.{name} failed with exit status {code}")
            return code
        for row in json.loads((directory / f"{name}.json").read_text())["rows"]:
            latest.rows.append(Row(f"{name}: {row['benchmark']}", row["value"], row["unit"], row["target"],
                                   row["note"]))
    print(f"\n=== all benchmarks ({sum(seconds.values()):.0f} s: " +
          ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ") ===")
    latest.write(directory)
    with_targets = [r for r in latest.rows if r.target]
    missed = [r for r in with_targets if r.status == "MISSED"]
    print(f"{len(with_targets) - len(missed)} of {len(with_targets)} targets met" +
          (": missed " + "; ".join(r.benchmark for r in missed) if missed else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
