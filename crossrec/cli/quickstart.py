"""``crossrec quickstart``: the main job end to end on the built-in data, each step printed as
the ``crossrec`` command that runs it."""

from __future__ import annotations

import argparse
import json


def cmd_quickstart(args: argparse.Namespace) -> int:
    """The main job on the built-in data (or ``--data``, the user's own): generate, validate,
    describe and split it; train the retrieval towers and the rankers and compare them with the
    baselines; export every model; serve them and ask for three users over gRPC; write candidates
    for every user on Beam."""
    from pathlib import Path

    from crossrec.cli import main
    from crossrec.pipelines.quickstart import BUILT_IN_TARGET, choose_target, serve_and_query

    out = Path(args.out)
    own = args.data is not None
    data_dir = Path(args.data) if own else out / "data"
    split_dir = out / "split"
    saved_models = out / "saved_models"
    synth = ["data", "synth", "--out", str(data_dir), "--overwrite", "--seed", str(args.seed)]
    if args.tiny:
        synth += ["--n-users", "150", "--n-items", "240", "--n-interactions", "3000"]
    quick = ["--epochs", "2"] if args.tiny else []
    data = ["--data", str(data_dir)]
    if own:
        code = main(["data", "validate", *data])  # before anything reads it: a clear error naming file, row, column
        if code:
            return code
    target = args.target_domain or (choose_target(data_dir) if own else BUILT_IN_TARGET)
    zero_shot = [] if own else ["--zero-shot-domain", target]  # the built-in data also shows a domain never trained on
    steps = [
        ("generate the built-in data", None if own else synth),
        ("validate it", ["data", "validate", *data]),
        ("describe it", ["data", "describe", *data, "--tables", "per_domain"]),
        (f"split it: cross-domain cold start on {target}", [
            "data", "split", *data, "--out", str(split_dir), "--overwrite",
            "--kind", "cold_start", "--target-domain", target, "--seed", str(args.seed)]),
        ("train the retrieval towers (frozen MiniLM, cached) and the rankers; compare with the baselines", [
            "evaluate", *data, "--out", str(out / "report"), "--model-out", str(out / "retrieval"),
            "--ranking-out", str(out / "ranking"), *zero_shot, *quick]),
        ("export every model in TF Serving's layout", [
            "export", "--retrieval", str(out / "retrieval"), "--ranking", str(out / "ranking"),
            "--out", str(saved_models), "--quiet"]),
        ("serve them on loopback and ask for three users over gRPC", "serve"),
        ("candidates for every user, on Apache Beam", [  # the split's copy: Parquet, whatever the input's format
            "candidates", "--model-dir", str(saved_models), "--interactions", str(split_dir / "interactions.parquet"),
            "--domains", target, "--output", str(out / "candidates"), "--k", "20", "--rank-top", "5"]),
    ]
    steps = [(title, argv) for title, argv in steps if argv is not None]
    for number, (title, argv) in enumerate(steps, 1):
        if argv == "serve":
            print(f"\n[{number}/{len(steps)}] {title}", flush=True)
            serve_and_query(saved_models, data_dir, target)
            continue
        print(f"\n[{number}/{len(steps)}] {title}: crossrec {' '.join(argv)}", flush=True)
        code = main(argv)
        if code:
            return code
    print(f"\nquickstart done: outputs in {out}/ (report: {out / 'report' / 'report.md'})")
    print(next_commands(out, data_dir, saved_models, target))
    return 0


def next_commands(out, data_dir, saved_models, target: str) -> str:
    """The exact commands that serve, explore and query this run's own output."""
    import os
    import shutil
    import sys
    from pathlib import Path

    from crossrec.pipelines.quickstart import example_history

    crossrec = "crossrec"
    if shutil.which("crossrec") is None:  # run as .venv/bin/crossrec (make quickstart): say where it is
        crossrec = str(Path(sys.executable).parent / "crossrec")
        relative = os.path.relpath(crossrec)
        crossrec = relative if not relative.startswith("..") else crossrec
    domain, item = example_history(data_dir, target)
    body = json.dumps({"inputs": {"history_item_ids": [[item]], "history_domains": [[domain]],
                                  "target_domain": [target], "k": [5], "exclude_history": [True]}})
    return "\n".join([
        "next:",
        f"  serve it (explorer: http://127.0.0.1:8501/ui):  {crossrec} serve --model_base_path {saved_models} --ui "
        f"--ui_data {data_dir}",
        f"  ask over gRPC (another terminal):              {crossrec} query --domain {target} --history {domain}:{item} --k 5 "
        f"--items {data_dir}",
        f"  ask over REST:                                 curl -s http://127.0.0.1:8501/v1/models/recommender:predict -d '{body}'",
        f"  next week's data:                              {crossrec} retrain --data NEW_DATA/ --model-dir {saved_models}  "
        "(docs: retraining)"])


def register(commands) -> None:
    quickstart = commands.add_parser(
        "quickstart", help="run the main job end to end on the built-in data (or --data: yours)",
        description="Run the main job end to end on the built-in data, printing each step's command so you "
                    "can run it yourself: generate, validate, describe and split the data, train the retrieval "
                    "towers and the rankers and compare them with the baselines, export every model, serve "
                    "them and query three users over gRPC, and write candidates for every user on Beam.")
    quickstart.add_argument("--out", default=".runs/quickstart", help="output folder (default .runs/quickstart)")
    quickstart.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    quickstart.add_argument("--tiny", action="store_true", help="a very small run (for tests and smoke checks)")
    quickstart.add_argument("--data", metavar="PATH",
                            help="your own data instead of the built-in: a folder with interactions.* and items.* "
                                 "(.parquet/.csv/.csv.gz/.jsonl; columns in the README's Your data section), checked "
                                 "first with `crossrec data validate`")
    quickstart.add_argument("--target-domain", help="the domain to recommend from in the demo and to hold out for "
                                                    "cross-domain cold start (default: movies on the built-in data; "
                                                    "with --data, the domain with the fewest interactions)")
    quickstart.set_defaults(func=cmd_quickstart)
