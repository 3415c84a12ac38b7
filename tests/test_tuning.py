"""Tower settings given as `auto`: chosen on the training split's validation queries by an
Optuna study (towers.tuning), recorded with their evidence, and kept by what reads the run."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from crossrec.config import load_config
from crossrec.errors import ConfigError
from towers.train import MONITOR, train_retrieval
from towers.tuning import slice_balanced


def test_auto_item_id_dropout_is_chosen_on_validation_and_recorded(tiny_config, tmp_path, capsys):
    config = replace(tiny_config, towers=replace(tiny_config.towers, item_id_dropout="auto", auto_trials=3,
                                                 auto_budget_minutes=0.0))
    run = train_retrieval(config, tmp_path / "run", progress=True)
    out = capsys.readouterr().out
    trials = run.auto["trials"]
    # the values measured to matter run first whatever the budget; a spent budget starts no third
    assert [t["item_id_dropout"] for t in trials] == [0.1, 0.3]
    best = max(trials, key=lambda t: t["score"])
    kept = best if best["score"] > trials[0]["score"] * 1.02 else trials[0]  # the default unless clearly beaten
    assert run.auto["settings"] == {"item_id_dropout": kept["item_id_dropout"]}
    assert "auto: chose item_id_dropout" in out
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.towers.item_id_dropout == kept["item_id_dropout"]  # what retrain and export read
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert summary["auto"]["settings"] == run.auto["settings"] and not run.metrics.empty


def test_auto_is_refused_on_several_workers(tiny_config, monkeypatch):
    from crossrec.experiment import prepare_data
    from towers.tuning import choose

    config = replace(tiny_config, towers=replace(tiny_config.towers, item_id_dropout="auto"))
    monkeypatch.setenv("TF_CONFIG", "{}")
    with pytest.raises(ConfigError, match="auto trains the towers once per candidate"):
        choose(config, prepare_data(config), lambda c: {})


def test_the_choice_weighs_each_validation_slice_the_same():
    """Pooled queries are mostly warm; a setting that trades new items for warm ones is scored by
    the slices' mean at the epoch early stopping kept."""
    history = {MONITOR: [0.30, 0.32, 0.31], f"{MONITOR}_warm": [0.40, 0.42, 0.41],
               f"{MONITOR}_new_item": [0.10, 0.20, 0.30], f"{MONITOR}_cold_start": [0.2, 0.2, 0.2]}
    assert slice_balanced(history) == (0.42 + 0.20 + 0.2) / 3
    assert slice_balanced({MONITOR: [0.1, 0.3]}) == 0.3 and slice_balanced({}) != slice_balanced({})


def test_a_gain_inside_the_margin_keeps_the_default():
    import optuna

    from towers.tuning import _within_noise

    study = optuna.create_study(direction="maximize")
    for value, score in ((0.1, 0.4031), (0.3, 0.4065), (0.5, 0.39)):
        study.add_trial(optuna.trial.create_trial(params={"item_id_dropout": value}, value=score,
                                                  distributions={"item_id_dropout": optuna.distributions.FloatDistribution(0, 0.6)}))
    assert _within_noise(study, 0.02) == {"item_id_dropout": 0.1}  # +0.8%: MovieLens' validation, inside
    assert _within_noise(study, 0.005) == {"item_id_dropout": 0.3}
