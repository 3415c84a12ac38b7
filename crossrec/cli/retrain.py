"""``crossrec retrain``: warm-start from the served version, train, publish if not worse."""

from __future__ import annotations

import argparse
import json
import sys

EXIT_NOT_PUBLISHED = 3  # the gate kept the served version


def cmd_retrain(args: argparse.Namespace) -> int:
    import signal

    from crossrec.config import load_config
    from crossrec.pipelines.retrain import retrain, with_overrides
    from crossrec.pipelines.served_data import served_state

    if args.when_drift:
        from crossrec.config import DataConfig
        from crossrec.pipelines.monitor import drift_report

        report = drift_report(args.base, DataConfig(interactions=args.data, items=args.items),
                              threshold=args.threshold, unknown_threshold=args.unknown_threshold)
        print("\n".join(report.lines()))
        if not report.drifted:
            print(json.dumps({"published": None, "skipped": "no drift above the thresholds (--when-drift)"}))
            return 0
    config = load_config(args.config or served_state(args.base).towers_dir / "config.yaml")
    config = with_overrides(config, epochs=args.epochs, max_regression=args.max_regression)

    def stop(signum, frame):  # SIGTERM: stop like Ctrl-C; the run folder keeps every finished stage
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        result = retrain(args.data, args.base, config=config, items=args.items, work_dir=args.work_dir,
                         progress=not args.quiet)
    except KeyboardInterrupt:
        print("crossrec: interrupted; nothing half-written was published. Run the same command again to "
              "resume", file=sys.stderr)
        return 130
    print(json.dumps({"published": result.published, "gate": result.gate, "run_folder": str(result.work_dir)}))
    return 0 if result.published is not None else EXIT_NOT_PUBLISHED


def register(commands) -> None:
    from crossrec.cli.monitor import add_drift_flags

    retrain = commands.add_parser(
        "retrain", help="warm-start from the served version, train on old + new data, publish if not worse",
        description="Retrain from the latest version under --model-dir (its training state, the user histories "
                    "it was trained on, is kept beside that folder in <folder>.training_state/, never inside "
                    "a served version): "
                    "merge its data with the new data, warm-start the towers and rankers, encode only new or "
                    "changed item texts, and export the next version of every served model, unless the "
                    "retrained towers' validation metric (retrain.metric, default Recall@50) is worse than the "
                    "served version's by more than retrain.max_regression (exit status 3, nothing published). Interrupted runs resume when "
                    "the same command is run again; each run writes run_log.jsonl in its run folder.")
    retrain.add_argument("--data", required=True, metavar="PATH",
                         help="new data: a folder with interactions.* and optional items.* (new or changed "
                              "items; a `removed` column set to true takes an item out), or an interactions file")
    retrain.add_argument("--items", metavar="FILE", help="new items file, when --data is a file")
    retrain.add_argument("--model-dir", "--from", dest="base", default="saved_models",
                         help="serving base folder to retrain from and publish to (default saved_models; "
                              "--from: the older spelling)")
    retrain.add_argument("--config", help="YAML config (default: the served version's own)")
    retrain.add_argument("--work-dir", default=".runs/retrain",
                         help="where run folders live (default .runs/retrain); resuming needs the same one")
    retrain.add_argument("--epochs", type=int, help="maximum epochs for towers and rankers")
    retrain.add_argument("--max-regression", type=float,
                         help="largest allowed relative drop in the gate's validation metric (default 0.02)")
    retrain.add_argument("--when-drift", action="store_true",
                         help="first compare the new data with the served version's training data (crossrec "
                              "monitor) and retrain only if it drifted past --drift-threshold or "
                              "--drift-unknown-threshold; otherwise exit 0 without training")
    add_drift_flags(retrain, prefix="drift-")
    retrain.add_argument("--quiet", action="store_true", help="no progress bars")
    retrain.set_defaults(func=cmd_retrain)
