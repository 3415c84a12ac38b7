"""``crossrec quickstart``: the main job end to end on the built-in data, each step printed as
the ``crossrec`` command that runs it."""

from __future__ import annotations

import argparse
import json


def cmd_quickstart(args: argparse.Namespace) -> int:
    """The main job on the built-in data: generate, validate, describe and split it; train the
    retrieval towers and the rankers and compare them with the baselines; export every model;
    serve them and ask for three users over gRPC; write candidates for every user on Beam."""
    from pathlib import Path

    from crossrec.cli import main
    from crossrec.pipelines.quickstart import TARGET, serve_and_query

    out = Path(args.out)
    data_dir = out / "data"
    split_dir = out / "split"
    saved_models = out / "saved_models"
    synth = ["data", "synth", "--out", str(data_dir), "--overwrite", "--seed", str(args.seed)]
    if args.tiny:
        synth += ["--n-users", "150", "--n-items", "240", "--n-interactions", "3000"]
    quick = ["--epochs", "2"] if args.tiny else []
    steps = [
        ("generate the built-in data", synth),
        ("validate it", ["data", "validate", "--data", str(data_dir)]),
        ("describe it", ["data", "describe", "--data", str(data_dir), "--tables", "per_domain"]),
        (f"split it: cross-domain cold start on {TARGET}", [
            "data", "split", "--data", str(data_dir), "--out", str(split_dir), "--overwrite",
            "--kind", "cold_start", "--target-domain", TARGET, "--seed", str(args.seed)]),
        ("train the retrieval towers (frozen MiniLM, cached) and the rankers; compare with the baselines", [
            "evaluate", "--data", str(data_dir), "--out", str(out / "report"), "--model-out", str(out / "retrieval"),
            "--ranking-out", str(out / "ranking"), "--zero-shot-domain", TARGET, *quick]),
        ("export every model in TF Serving's layout", [
            "export", "--retrieval", str(out / "retrieval"), "--ranking", str(out / "ranking"),
            "--out", str(saved_models), "--quiet"]),
        ("serve them on loopback and ask for three users over gRPC", None),
        ("candidates for every user, on Apache Beam", [
            "candidates", "--model-dir", str(saved_models), "--interactions", str(data_dir / "interactions.parquet"),
            "--domains", TARGET, "--output", str(out / "candidates"), "--k", "20", "--rank-top", "5"]),
    ]
    for number, (title, argv) in enumerate(steps, 1):
        if argv is None:
            print(f"\n[{number}/{len(steps)}] {title}", flush=True)
            serve_and_query(saved_models, data_dir)
            continue
        print(f"\n[{number}/{len(steps)}] {title}: crossrec {' '.join(argv)}", flush=True)
        code = main(argv)
        if code:
            return code
    print(f"\nquickstart done: outputs in {out}/ (report: {out / 'report' / 'report.md'})")
    print(next_commands(out, data_dir, saved_models))
    return 0


def next_commands(out, data_dir, saved_models) -> str:
    """The exact commands that serve, explore and query this run's own output."""
    import os
    import shutil
    import sys
    from pathlib import Path

    from crossrec.pipelines.quickstart import TARGET, example_history

    crossrec = "crossrec"
    if shutil.which("crossrec") is None:  # run as .venv/bin/crossrec (make quickstart): say where it is
        crossrec = str(Path(sys.executable).parent / "crossrec")
        relative = os.path.relpath(crossrec)
        crossrec = relative if not relative.startswith("..") else crossrec
    domain, item = example_history(data_dir)
    body = json.dumps({"inputs": {"history_item_ids": [[item]], "history_domains": [[domain]],
                                  "target_domain": [TARGET], "k": [5], "exclude_history": [True]}})
    return "\n".join([
        "next:",
        f"  serve it (explorer: http://127.0.0.1:8501/ui):  {crossrec} serve --model_base_path {saved_models} --ui "
        f"--ui_data {data_dir}",
        f"  ask over gRPC (another terminal):              {crossrec} query --domain {TARGET} --history {domain}:{item} --k 5 "
        f"--items {data_dir}",
        f"  ask over REST:                                 curl -s http://127.0.0.1:8501/v1/models/recommender:predict -d '{body}'",
        f"  next week's data:                              {crossrec} retrain --data NEW_DATA/ --model-dir {saved_models}  "
        "(README: Retraining)"])


def register(commands) -> None:
    quickstart = commands.add_parser(
        "quickstart", help="run the main job end to end on the built-in data",
        description="Run the main job end to end on the built-in data, printing each step's command so you "
                    "can run it yourself: generate, validate, describe and split the data, train the retrieval "
                    "towers and the rankers and compare them with the baselines, export every model, serve "
                    "them and query three users over gRPC, and write candidates for every user on Beam.")
    quickstart.add_argument("--out", default=".runs/quickstart", help="output folder (default .runs/quickstart)")
    quickstart.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    quickstart.add_argument("--tiny", action="store_true", help="a very small run (for tests and smoke checks)")
    quickstart.set_defaults(func=cmd_quickstart)
