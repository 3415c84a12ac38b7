"""Drift against the training data: the profile every export records (``crossrec.profile``), and
``crossrec monitor`` / ``crossrec retrain --when-drift`` reading it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd

from crossrec.cli import main
from crossrec.data.synth import generate
from crossrec.profile import DRIFT_THRESHOLD, drift, profile, psi


def test_psi_is_zero_on_the_same_mix_and_large_on_a_moved_one():
    mix = {"books": 0.45, "movies": 0.33, "kitchen": 0.22}
    assert psi(mix, mix) == 0
    assert psi(mix, {"books": 0.44, "movies": 0.34, "kitchen": 0.22}) < 0.01
    assert psi(mix, {"books": 0.9, "movies": 0.1}) > DRIFT_THRESHOLD


def test_a_held_out_sample_of_the_training_period_does_not_drift_and_a_moved_mix_does():
    """The built-in data: half of its users (their whole histories, as a later table of the same
    period holds them) against the whole; then the same users with kitchen nearly gone."""
    data = generate()
    train = data.interactions
    users = train["user_id"].drop_duplicates().sample(frac=0.5, random_state=0)
    sample = train[train["user_id"].isin(set(users))]
    reference = profile(train, data.items)
    same = drift(reference, profile(sample, data.items, training=train))
    assert max(same[p] for p in ("domain_shares", "history_length", "item_popularity")) < 0.1, same
    rng = np.random.default_rng(0)
    moved = sample[(sample["domain"] != "kitchen") | (rng.random(len(sample)) < 0.05)]
    shifted = drift(reference, profile(moved, data.items, training=train))
    assert shifted["domain_shares"] > DRIFT_THRESHOLD, shifted


def test_crossrec_monitor_reports_drift_where_it_exists(tiny_exported, tmp_path, capsys):
    _, run, out, _ = tiny_exported
    base = tmp_path / "saved_models"
    shutil.copytree(out, base)
    shutil.copytree(out.parent / f"{out.name}.training_state", tmp_path / "saved_models.training_state")
    train = pd.read_parquet(run.out_dir / "data" / "interactions.parquet")
    (tmp_path / "same").mkdir()
    train.to_parquet(tmp_path / "same" / "interactions.parquet")
    assert main(["monitor", "--data", str(tmp_path / "same"), "--model-dir", str(base), "--fail-on-drift",
                 "--out", str(tmp_path / "same.json")]) == 0
    assert "no drift above the thresholds" in capsys.readouterr().out
    report = json.loads((tmp_path / "same.json").read_text())
    assert report["unknown_item_share"] == 0 and max(report["psi"].values()) < 1e-9

    (tmp_path / "moved").mkdir()
    one = train[train["domain"] == train["domain"].iloc[0]].copy()
    one.loc[one.index[: len(one) // 2], "item_id"] = [f"never-seen-{i}" for i in range(len(one) // 2)]
    one.to_parquet(tmp_path / "moved" / "interactions.parquet")
    assert main(["monitor", "--data", str(tmp_path / "moved"), "--model-dir", str(base), "--fail-on-drift"]) == 4
    text = capsys.readouterr().out
    assert "drift: domain_shares" in text and "unknown_items" in text and "unknown items    50.0%" in text
    # the retrain reads the same report: no drift, no training
    assert main(["retrain", "--data", str(tmp_path / "same"), "--model-dir", str(base), "--when-drift"]) == 0
    assert '"skipped": "no drift above the thresholds (--when-drift)"' in capsys.readouterr().out
