"""Scale benchmark: how time and memory grow with the data.

    python -m bench.scale [--scales 1,4,16,64] [--quick]

The built-in generator at k times its default size, users, items and interactions scaled
together (1x: 2,000 users, 3,000 items, 60,000 interactions; 64x: 128k users, 192k items,
3.84M interactions). At each size every stage runs as the user's command, in a fresh process:

  validate     load + validate the Parquet dataset              crossrec data validate
  train        the towers for one epoch (fresh text cache)      crossrec train retrieval --epochs 1
               and its parts from run_summary.json: data preparation, text encoding, the epoch,
               the test evaluation
  export       the retrieval SavedModel with its exact index    crossrec export --models retrieval
  candidates   top 100 for every user of a users table          crossrec candidates (Beam, local runner)

Time is the command's own (the process's imports excluded); peak memory is the process's
resident high-water mark (``ru_maxrss``, imports included: what the machine must have). For
each figure the growth exponent a of value ~ size^a is fitted over the sizes (least squares in
log-log), and ``scale.png`` plots both. Targets (issue: scale): training's peak memory grows
with a <= 0.5, the epoch's time with a <= 1.1.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, Results, bench_parser

BASE = {"n_users": 2000, "n_items": 3000, "n_interactions": 60000}
STAGES = ("validate", "train", "export", "candidates")
MARK = "BENCH_SCALE_RESULT "


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def child(argv: list[str]) -> int:
    """Runs one crossrec command in this process after its imports, and prints its seconds and
    peak memory as one JSON line."""
    import tensorflow  # noqa: F401

    import crossrec  # noqa: F401 (environment first)
    from crossrec.cli import main

    if argv[0] == "train":
        import towers.train  # noqa: F401
    elif argv[0] == "export":
        import serving.export  # noqa: F401
    elif argv[0] == "candidates":
        import serving.batch  # noqa: F401
    imported = _rss_mb()
    started = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - started
    print(MARK + json.dumps({"code": code, "seconds": seconds, "peak_mb": _rss_mb(), "imports_mb": imported}),
          flush=True)
    return code


def _run(args: list[str], log: Path) -> dict:
    print(f"  crossrec {' '.join(args[:2])} ...", end="", flush=True)  # the 64x training alone takes ~30 minutes
    with open(log, "a") as out:
        out.write(f"\n$ crossrec {' '.join(args)}\n")
        out.flush()
        proc = subprocess.run([sys.executable, "-m", "bench.scale", "--child", *args], stdout=subprocess.PIPE,
                              stderr=out, text=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
        out.write(proc.stdout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode or not lines:
        raise RuntimeError(f"crossrec {' '.join(args)} failed (exit {proc.returncode}); see {log}")
    measured = json.loads(lines[-1][len(MARK):])
    print(f" {measured['seconds']:.0f} s, peak {measured['peak_mb']:,.0f} MB", flush=True)
    return measured


def users_table(data: Path, out: Path, history: int = 20) -> int:
    """Each user's last ``history`` interactions, oldest first, as ``crossrec candidates`` reads them."""
    import pandas as pd

    frame = pd.read_parquet(data / "interactions.parquet", columns=["user_id", "item_id", "domain", "timestamp"])
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable").groupby("user_id").tail(history)
    users = frame.groupby("user_id", sort=False).agg(history_item_ids=("item_id", list),
                                                     history_domains=("domain", list)).reset_index()
    users.to_parquet(out, index=False)
    return len(users)


def measure(scale: float, work: Path, preset: str | None, log: Path) -> dict:
    sizes = {k: max(1, round(v * scale)) for k, v in BASE.items()}
    data, run, models, out = work / "data", work / "run", work / "saved_models", work / "candidates"
    subprocess.run([sys.executable, "-m", "crossrec", "data", "synth", "--out", str(data), "--overwrite",
                    "--n-users", str(sizes["n_users"]), "--n-items", str(sizes["n_items"]),
                    "--n-interactions", str(sizes["n_interactions"])], check=True, stdout=subprocess.DEVNULL)
    n_users = users_table(data, work / "users.parquet")
    config = work / "config.yaml"
    config.write_text(f"encoder:\n  cache_dir: {work / 'text_cache'}\n" + (f"  preset: {preset}\n" if preset else ""))
    point = {"scale": scale, **sizes, "users_table": n_users, "stages": {}}
    point["stages"]["validate"] = _run(["data", "validate", "--data", str(data)], log)
    point["stages"]["train"] = _run(["train", "retrieval", "--config", str(config), "--data", str(data / "interactions.parquet"),
                                     "--items", str(data / "items.parquet"), "--epochs", "1", "--quiet",
                                     "--out", str(run)], log)
    summary = json.loads((run / "run_summary.json").read_text())
    point["interactions"] = summary["examples"]
    point["train_parts"] = {"data": summary.get("data_seconds"), "text encoding": summary["text_encoder"]["seconds"],
                            "epoch": summary["fit_seconds"], "evaluation": summary.get("evaluation_seconds")}
    point["stages"]["export"] = _run(["export", "--retrieval", str(run), "--out", str(models), "--models", "retrieval",
                                      "--quiet"], log)
    point["stages"]["candidates"] = _run(["candidates", "--input", str(work / "users.parquet"), "--model-dir",
                                          str(models), "--output", str(out), "--k", "100"], log)
    return point


def exponent(sizes, values) -> float:
    """a in value ~ size^a, least squares over log-log points."""
    return float(np.polyfit(np.log(sizes), np.log(np.maximum(values, 1e-9)), 1)[0])


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [p["scale"] for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in STAGES:
        left.plot(scales, [p["stages"][stage]["seconds"] for p in points], "o-", label=stage)
        right.plot(scales, [p["stages"][stage]["peak_mb"] for p in points], "o-", label=stage)
    left.plot(scales, [p["train_parts"]["epoch"] for p in points], "k--", label="train: the epoch alone")
    for axis, title, unit in ((left, "time", "seconds"), (right, "peak resident memory", "MB")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("data size (x the built-in default)")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle("crossrec at scale (one process per command, 2 CPU cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(points: list[dict], results: Results) -> None:
    scales = [p["scale"] for p in points]
    for p in points:
        size = f"{p['scale']:g}x ({p['interactions']:,} training examples, {p['n_users']:,} users, {p['n_items']:,} items)"
        for stage in STAGES:
            s = p["stages"][stage]
            results.add(f"{stage} at {p['scale']:g}x: time", s["seconds"], "s", note=size if stage == "validate" else "")
            results.add(f"{stage} at {p['scale']:g}x: peak memory", s["peak_mb"], "MB")
        for part, seconds in p["train_parts"].items():
            if seconds is not None:
                results.add(f"train at {p['scale']:g}x: {part}", seconds, "s")
    if len(points) < 2:
        return
    span = f"{scales[0]:g}x..{scales[-1]:g}x"
    for stage in STAGES:
        results.add(f"{stage}: time exponent", exponent(scales, [p["stages"][stage]["seconds"] for p in points]),
                    "", note=span)
        target = "<= 0.5" if stage == "train" else ""
        results.add(f"{stage}: peak memory exponent", exponent(scales, [p["stages"][stage]["peak_mb"] for p in points]),
                    "", target, span)
        above = [p["stages"][stage]["peak_mb"] - p["stages"][stage]["imports_mb"] for p in points]
        results.add(f"{stage}: memory above the imports, exponent", exponent(scales, above), "", note=span)
    for part in ("epoch", "evaluation", "text encoding", "data"):
        values = [p["train_parts"][part] for p in points]
        if all(v is not None for v in values):
            results.add(f"train, {part}: time exponent", exponent(scales, values), "",
                        "<= 1.1" if part == "epoch" else "", span)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    parser = bench_parser(__doc__, "two small sizes (1/16x and 1/4x) for a smoke test")
    parser.add_argument("--scales", default="1,4,16,64", help="comma-separated sizes (default 1,4,16,64)")
    parser.add_argument("--work-dir", help="where the data and runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    scales = [0.0625, 0.25] if args.quick else [float(s) for s in args.scales.split(",")]
    results = Results("scale")
    directory = Path(args.results_dir or RESULTS)
    directory.mkdir(parents=True, exist_ok=True)
    points = []
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        log = directory / "scale.log"
        log.write_text("")
        for scale in scales:
            print(f"scale {scale:g}x ...", flush=True)
            work = Path(tmp) / f"x{scale:g}"
            work.mkdir()
            points.append(measure(scale, work, args.preset, log))
            (directory / "scale_points.json").write_text(json.dumps(points, indent=2))
    report(points, results)
    plot(points, directory / "scale.png")
    results.write(directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
