"""The text encoder's adaptation to the catalogue (towers.adapt): the pairs it learns from, what it
learns, its cache, budget and resume, and that training, the saved run and the encoder read later
all use the adapted encoder."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from crossrec.config import AdaptConfig, load_config
from crossrec.errors import ConfigError
from crossrec.experiment import prepare_data
from crossrec.features import Catalogue
from towers import adapt_fit
from towers.adapt import adapt_encoder, training_pairs
from towers.encoder import TextEncoder


def _catalogue() -> Catalogue:
    items = pd.DataFrame({"item_id": ["a1", "a2", "a3", "o1", "o2"],
                          "domain": ["arts", "arts", "arts", "office", "office"],
                          "text": ["paint", "brush", "canvas", "pen", "paper"]})
    return Catalogue.build(items, ["arts", "office"])


def test_pairs_are_neighbours_in_each_users_own_time_order_across_domains():
    catalogue = _catalogue()
    train = pd.DataFrame({"user_id": ["u1", "u1", "u1", "u2", "u2", "u2"],
                          "item_id": ["o1", "a1", "a2", "a1", "o1", "a1"],
                          "domain": ["office", "arts", "arts", "arts", "office", "arts"],
                          "timestamp": [3, 1, 2, 1, 2, 3]})
    row = dict(zip(zip(catalogue.items.domain, catalogue.items.item_id, strict=True), catalogue.items.row, strict=True))
    a1, a2, o1 = row["arts", "a1"], row["arts", "a2"], row["office", "o1"]
    pairs = {tuple(p) for p in training_pairs(train, catalogue, window=1)}
    # u1 in time order: a1 a2 o1 -> (a1,a2), (a2,o1); u2: a1 o1 a1 -> (a1,o1) once; never u1's last with u2's first
    assert pairs == {tuple(sorted(p)) for p in [(a1, a2), (a2, o1), (a1, o1)]}
    wider = {tuple(p) for p in training_pairs(train, catalogue, window=2)}
    assert wider == pairs  # u1's (a1, o1) two steps apart is the same unordered pair as u2's
    with pytest.raises(ConfigError, match="window"):
        training_pairs(train, catalogue, window=0)


def _adapt_config(tiny_config, **settings):
    adapt = AdaptConfig(enabled=True, layers=1, batch_size=32, epochs=3, learning_rate=1e-3, budget_minutes=5)
    return replace(tiny_config, encoder=replace(tiny_config.encoder, adapt=replace(adapt, **settings)))


def test_adaptation_learns_the_pairs_is_cached_and_is_read_as_the_encoder(tiny_config, monkeypatch):
    config = _adapt_config(tiny_config)
    data = prepare_data(config)
    adapted, adaptation = adapt_encoder(config, data.train, data.catalogue, progress=False)
    report = adaptation.report
    assert report["steps"] > 0 and not report["stopped_by_budget"]
    assert report["held_out_pairs"] > 0 and report["trained_pairs"] + report["held_out_pairs"] == report["pairs"]
    # the synthetic users' pairs share themes, so the adapted encoder finds held-out pairs better
    assert report["recall_at_10_after"] > report["recall_at_10_before"]
    assert adapted.encoder.adapted == str(adaptation.path)
    texts = data.catalogue.items["text"].tolist()[:20]
    base, tuned = TextEncoder(config.encoder), TextEncoder(adapted.encoder)
    assert tuned.fingerprint != base.fingerprint
    assert not np.allclose(base.encode(texts), tuned.encode(texts), atol=1e-4)
    # the same data and settings read the cache (a larger budget too); nothing is fitted again
    monkeypatch.setattr("towers.adapt.fit_adapter", lambda *a, **k: pytest.fail("fitted again"))
    again = adapt_encoder(_adapt_config(tiny_config, budget_minutes=60), data.train, data.catalogue, progress=False)
    assert again[1].path == adaptation.path
    off, none = adapt_encoder(replace(adapted, encoder=replace(adapted.encoder, adapt=AdaptConfig())), data.train,
                              data.catalogue)
    assert none is None and off.encoder.adapted is None


def test_a_killed_adaptation_resumes_from_its_checkpoint(tiny_config, monkeypatch):
    config = _adapt_config(tiny_config, epochs=2)
    data = prepare_data(config)
    monkeypatch.setattr(adapt_fit, "CHECKPOINT_SECONDS", 0.0)
    calls = {"n": 0}
    original = adapt_fit._save_state

    def killed_after_three(work, top, optimizer, meta):
        original(work, top, optimizer, meta)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as a kill would, after the third checkpoint

    monkeypatch.setattr(adapt_fit, "_save_state", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        adapt_encoder(config, data.train, data.catalogue, progress=False)
    monkeypatch.setattr(adapt_fit, "_save_state", original)
    real, steps = adapt_fit._step_function, []

    def counting(*args):
        step = real(*args)

        def counted(*batch):
            steps.append(1)
            return step(*batch)

        return counted

    monkeypatch.setattr(adapt_fit, "_step_function", counting)
    _, adaptation = adapt_encoder(config, data.train, data.catalogue, progress=False)
    assert len(steps) > 0
    assert adaptation.report["steps"] == 3 + len(steps)  # the three checkpointed steps were not run again


def test_the_budget_stops_it_and_says_so(tiny_config, monkeypatch):
    config = _adapt_config(tiny_config, budget_minutes=1e-6)
    data = prepare_data(config)
    _, adaptation = adapt_encoder(config, data.train, data.catalogue, progress=False)
    assert adaptation.report["stopped_by_budget"] and adaptation.report["steps"] == 0


def test_bad_settings_are_clear_errors(tiny_config):
    data = prepare_data(tiny_config)
    with pytest.raises(ConfigError, match="adapt.layers must be between 1 and 1"):
        adapt_encoder(_adapt_config(tiny_config, layers=2), data.train, data.catalogue, progress=False)
    with pytest.raises(ConfigError, match="needs at least"):
        adapt_encoder(_adapt_config(tiny_config, batch_size=100000), data.train, data.catalogue, progress=False)
    with pytest.raises(ConfigError, match="budget_minutes"):
        adapt_encoder(_adapt_config(tiny_config, budget_minutes=0), data.train, data.catalogue, progress=False)


def test_a_trained_run_keeps_and_reads_its_adapted_encoder(tiny_config, tmp_path):
    from towers.train import load_trained, train_retrieval

    config = _adapt_config(tiny_config, epochs=1)
    run = train_retrieval(config, tmp_path / "run", progress=False)
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.encoder.adapted == str(tmp_path / "run" / "adapted_encoder")
    assert (tmp_path / "run" / "adapted_encoder" / "adapt.json").exists()
    # the towers' text table is what the saved run's encoder gives (export and catalogue add read that one)
    texts = run.data.catalogue.items["text"].tolist()[:10]
    encoder = TextEncoder(saved.encoder)
    assert encoder.fingerprint == run.text.fingerprint
    np.testing.assert_allclose(encoder.encode(texts), run.text.table[1:11], atol=1e-5)
    _, _, loaded = load_trained(tmp_path / "run")
    assert loaded.encoder.adapted == saved.encoder.adapted
    assert "adaptation" in json.loads((tmp_path / "run" / "run_summary.json").read_text())
    # a copy of the run folder (as the training state beside a serving folder is) reads its own copy
    import shutil
    shutil.copytree(tmp_path / "run", tmp_path / "moved")
    shutil.rmtree(tmp_path / "run")
    moved = load_config(tmp_path / "moved" / "config.yaml")
    assert moved.encoder.adapted == str(tmp_path / "moved" / "adapted_encoder")
    assert TextEncoder(moved.encoder).fingerprint == run.text.fingerprint


def test_the_adapt_command_reports_what_it_learnt_and_where_it_cached_it(tiny_preset, tmp_path, capsys):
    from crossrec.cli import main

    config = tmp_path / "cfg.yaml"
    config.write_text(f"data:\n  synth: {{n_users: 80, n_items: 120, n_interactions: 1600, seed: 3}}\n"
                      f"encoder:\n  preset: {tiny_preset}\n  sequence_length: 16\n  cache_dir: {tmp_path / 'cache'}\n"
                      f"  adapt: {{batch_size: 32}}\n")
    assert main(["adapt", "--config", str(config), "--budget", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "item pairs" in out and "Recall@10" in out and str(tmp_path / "cache" / "adapted") in out
