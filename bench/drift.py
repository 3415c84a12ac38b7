"""Drift benchmark: does ``crossrec monitor`` report drift where it exists and none where it does
not?

    python -m bench.drift [--quick] [--movielens DIR]

Each data set is split in time: the first 80% of its interactions is the training period, the
last 20% the new data. A tenth of the training period's users (all their interactions in it) is
held out of training: the same period, users the model never saw, so no drift is expected there.
A version is trained on the rest (one epoch: the profile does not depend on the weights) and
exported, then ``crossrec monitor`` compares with it: the held-out sample, the later period, and
on the built-in data the later period with its kitchen interactions nearly all gone (a shifted
domain mix). ``--movielens`` adds MovieLens 100k (a folder with ``interactions.csv`` and
``items.csv`` in crossrec's table layout).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import Results, bench_parser
from crossrec.cli import main as crossrec


def periods(interactions: pd.DataFrame, seed: int = 0):
    """(training, held-out sample of the training period, later period)."""
    ordered = interactions.sort_values("timestamp", kind="stable")
    cut = int(len(ordered) * 0.8)
    first, later = ordered.iloc[:cut], ordered.iloc[cut:]
    users = first["user_id"].drop_duplicates().sample(frac=0.1, random_state=seed)
    held = first["user_id"].isin(set(users))
    return first[~held], first[held], later


def _write(frame: pd.DataFrame, items: pd.DataFrame | None, folder: Path) -> Path:
    folder.mkdir(parents=True)
    frame.to_parquet(folder / "interactions.parquet", index=False)
    if items is not None:
        items.to_parquet(folder / "items.parquet", index=False)
    return folder


def monitor(model_dir: Path, data: Path, out: Path) -> dict:
    code = crossrec(["monitor", "--data", str(data), "--model-dir", str(model_dir), "--out", str(out)])
    assert code == 0, f"crossrec monitor exited {code}"
    return json.loads(out.read_text())


def drift_case(results: Results, name: str, interactions: pd.DataFrame, items: pd.DataFrame, tmp: Path,
               shifted_domain: str | None, preset: str | None) -> None:
    train, held_out, later = periods(interactions)
    root = tmp / name
    train_dir = _write(train, items, root / "train")
    flags = ["--preset", preset] if preset else []
    assert crossrec(["train", "retrieval", "--data", str(train_dir), "--out", str(root / "towers"), "--epochs", "1",
                     "--quiet", *flags]) == 0
    assert crossrec(["export", "--retrieval", str(root / "towers"), "--out", str(root / "saved_models"),
                     "--models", "retrieval", "--quiet"]) == 0
    cases = {"held-out users of the training period": held_out, "the later 20%": later}
    if shifted_domain:
        rng = np.random.default_rng(0)
        cases[f"the later 20%, {shifted_domain} nearly gone"] = later[
            (later["domain"] != shifted_domain) | (rng.random(len(later)) < 0.05)]
    for label, frame in cases.items():
        folder = _write(frame, None, root / label.replace(" ", "_").replace(",", "").replace("%", ""))
        report = monitor(root / "saved_models", folder, folder / "drift.json")
        note = "drift: " + (", ".join(report["drifted"]) or "none")
        for part, value in report["psi"].items():
            if part != "text_share_change":
                results.add(f"{name}, {label}: {part} PSI", value, "", note=note)
        results.add(f"{name}, {label}: unknown item share", report["unknown_item_share"], "", note=note)


def main(argv=None) -> int:
    parser = bench_parser(__doc__, "the built-in data at a tenth of its size")
    parser.add_argument("--movielens", metavar="DIR", help="MovieLens 100k in crossrec's table layout")
    args = parser.parse_args(argv)
    from crossrec.config import SynthConfig
    from crossrec.data.synth import generate

    results = Results("drift")
    sizes = dict(n_users=300, n_items=450, n_interactions=9000) if args.quick else {}
    data = generate(SynthConfig(**sizes))
    with tempfile.TemporaryDirectory() as tmp:
        drift_case(results, "built-in", data.interactions, data.items, Path(tmp), "kitchen", args.preset)
        if args.movielens:
            folder = Path(args.movielens)
            drift_case(results, "MovieLens 100k", pd.read_csv(folder / "interactions.csv"),
                       pd.read_csv(folder / "items.csv"), Path(tmp), None, args.preset)
    results.write(args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
