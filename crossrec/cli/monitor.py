"""``crossrec monitor``: how far new data has drifted from the served models' training data."""

from __future__ import annotations

import argparse
from pathlib import Path

EXIT_DRIFT = 4  # with --fail-on-drift: some part drifted past its threshold


def cmd_monitor(args: argparse.Namespace) -> int:
    from crossrec.config import DataConfig
    from crossrec.pipelines.monitor import drift_report

    data = DataConfig(interactions=args.data, items=args.items, format=args.format or "table")
    report = drift_report(args.model_dir, data, threshold=args.threshold, unknown_threshold=args.unknown_threshold)
    print("\n".join(report.lines()))
    if args.out:
        Path(args.out).write_text(report.to_json())
        print(f"report: {args.out}")
    return EXIT_DRIFT if args.fail_on_drift and report.drifted else 0


def add_drift_flags(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    from crossrec.pipelines.monitor import UNKNOWN_THRESHOLD
    from crossrec.profile import DRIFT_THRESHOLD

    parser.add_argument(f"--{prefix}threshold", dest="threshold", type=float, default=DRIFT_THRESHOLD,
                        help=f"PSI above which a part of the profile has drifted (default {DRIFT_THRESHOLD})")
    parser.add_argument(f"--{prefix}unknown-threshold", dest="unknown_threshold", type=float,
                        default=UNKNOWN_THRESHOLD,
                        help="share of new interactions on items the model does not know above which the data has "
                             f"drifted (default {UNKNOWN_THRESHOLD})")


def register(commands) -> None:
    monitor = commands.add_parser(
        "monitor", help="compare new interactions with the served models' training data (drift report)",
        description="Profile a new interactions table as the served models would meet it and compare it with "
                    "the profile of their training data, which every export records: the domain mix, users' "
                    "history lengths and the training popularity of the items interacted with (population "
                    "stability index each), the share of interactions on items the model does not know, and "
                    "the share of items with text. `crossrec retrain --when-drift` reads the same report.")
    monitor.add_argument("--data", required=True, metavar="PATH",
                         help="new interactions: a folder with interactions.* (items.* optional) or a file")
    monitor.add_argument("--items", metavar="FILE", help="new items file, when --data is a file (optional)")
    monitor.add_argument("--format", choices=["table", "movielens", "amazon"], help="source format (default table)")
    monitor.add_argument("--model-dir", default="saved_models",
                         help="the serving folder whose newest complete version to compare with (default saved_models)")
    add_drift_flags(monitor)
    monitor.add_argument("--out", metavar="FILE", help="also write the report as JSON")
    monitor.add_argument("--fail-on-drift", action="store_true",
                         help=f"exit with status {EXIT_DRIFT} when some part drifted (for schedulers)")
    monitor.set_defaults(func=cmd_monitor)
