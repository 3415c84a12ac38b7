"""`crossrec retrain`: warm start, catalogue changes, the no-regression gate, resuming after a
kill, and publishing under load."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from set_watch import KILL_AT, SetWatcher, run_killed

from crossrec import schema
from crossrec.config import load_config
from crossrec.errors import ConfigError
from crossrec.pipelines.retrain import Gate, retrain
from crossrec.pipelines.served_data import read_training_data, served_state
from serving.layout import TRAINING_STATE, versions
from serving.training_state import state_root

NEW_BOOKS = [("BO90001", "The Lighthouse Keeper's Almanac"), ("BO90002", "Tides of the Northern Sea")]
ZERO_SHOT = [("MU00001", "Ocean Waves: Ambient Sounds of the Sea"), ("MU00002", "Space Odyssey Synth Suite"),
             ("MU00003", "Kitchen Jazz for Slow Cooking")]


@pytest.fixture
def served(tiny_exported, tmp_path):
    """A private copy of the exported tiny pipeline (version 1 of every model)."""
    base = tmp_path / "saved_models"
    shutil.copytree(tiny_exported[2], base)
    shutil.copytree(state_root(tiny_exported[2]), state_root(base))  # retraining's state, beside it
    return base


def new_data(base: Path, out: Path, *, remove: str | None = None) -> Path:
    """Second-week data: more interactions of old users, two new users, two new books (read by
    the new users), a removed item, and a new 'music' domain with item text only."""
    old = read_training_data(served_state(base).towers_dir)
    start = int(old.interactions[schema.TIMESTAMP].max()) + 1000
    rng = np.random.default_rng(0)
    users = sorted(old.interactions[schema.USER_ID].unique())[:30]
    picks = old.items[old.items[schema.ITEM_ID] != remove].sample(90, replace=True, random_state=0)
    rows = [{"user_id": u, "item_id": i, "domain": d, "timestamp": start + n}
            for n, (u, i, d) in enumerate(zip(np.repeat(users, 3), picks[schema.ITEM_ID], picks[schema.DOMAIN],
                                              strict=True))]
    for n, user in enumerate(["NEW1", "NEW2"]):
        for j, (item, _) in enumerate(NEW_BOOKS + NEW_BOOKS):
            rows.append({"user_id": user, "item_id": item, "domain": "books", "timestamp": start + 500 + 10 * n + j})
        books = old.items[(old.items[schema.DOMAIN] == "books") & (old.items[schema.ITEM_ID] != remove)]
        rows.append({"user_id": user, "item_id": rng.choice(books[schema.ITEM_ID]), "domain": "books",
                     "timestamp": start + 600})
    interactions = pd.DataFrame(rows)
    items = [{"item_id": i, "domain": "books", "title": t, "categories": "Books > Sea Stories", "removed": False}
             for i, t in NEW_BOOKS]
    items += [{"item_id": i, "domain": "music", "title": t, "categories": "Music", "removed": False}
              for i, t in ZERO_SHOT]
    if remove is not None:
        row = old.items[old.items[schema.ITEM_ID] == remove].iloc[0]
        items.append({"item_id": remove, "domain": row[schema.DOMAIN], "title": row["title"],
                      "categories": row["categories"], "removed": True})
    out.mkdir(parents=True, exist_ok=True)
    interactions.to_csv(out / "interactions.csv", index=False)
    pd.DataFrame(items).to_csv(out / "items.csv", index=False)
    return out


def small_config(base: Path, max_regression: float = 0.5, **train):
    config = load_config(served_state(base).towers_dir / "config.yaml")
    # A text cache of its own (seeded from the served model only), max_k above the domain sizes (a
    # request can list every item of a domain), a gate metric that 40-item domains can move, and
    # a tolerant gate: on 80 users a retrain moves validation recall by a few percent either way,
    # and the tests other than the gate's are about publishing.
    return replace(config, train=replace(config.train, **train), ranking=replace(config.ranking, epochs=2),
                   retrain=replace(config.retrain, metric="recall_at_10", max_regression=max_regression),
                   encoder=replace(config.encoder, cache_dir=str(base.parent / "text_cache")),
                   export=replace(config.export, max_k=60))


def _retrieve_all(base: Path, version: int, history, domain: str) -> list[str]:
    loaded = tf.saved_model.load(str(base / "retrieval" / str(version)))
    from serving.client import _history_inputs

    out = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in _history_inputs([history], [domain]).items()},
                                               k=tf.constant([60 if version > 1 else 20]), exclude_history=tf.constant([False]))
    return [i.decode() for i in out["item_ids"].numpy()[0] if i]


# --- warm start -------------------------------------------------------------------------------------

def test_warm_start_starts_from_the_served_weights_and_remaps_items_and_domains(served, tmp_path):
    from crossrec.experiment import prepare_data
    from towers.inputs import make_dataset
    from towers.text import text_vectors
    from towers.train import build_model, load_trained
    from towers.warm_start import warm_start_towers

    old_model, old_catalogue, config = load_trained(served_state(served).towers_dir)
    data_dir = new_data(served, tmp_path / "new")
    from crossrec.pipelines.served_data import merge_data, read_new_data

    dataset, change = merge_data(read_training_data(served_state(served).towers_dir), read_new_data(data_dir), config)
    assert change.new_items == len(NEW_BOOKS) + len(ZERO_SHOT) and change.new_users == 2
    data = prepare_data(config, dataset)
    assert data.catalogue.zero_shot_domains == ["music"]
    text = text_vectors(config, data.catalogue)

    def first_batch_loss(model):
        batch = next(iter(make_dataset(data.examples, 256, shuffle=False)))
        return float(model.compute_loss(batch, y_pred=model(batch, training=False), training=False))

    keras.utils.set_random_seed(1)
    cold = build_model(config, data, text)
    warm = build_model(config, data, text)
    report = warm_start_towers(warm, old_model, old_catalogue, data.catalogue)
    assert not report.fresh and report.items_carried == len(old_catalogue)
    # warm start really starts from the previous weights: the first step's loss is lower
    assert first_batch_loss(warm) < first_batch_loss(cold)
    # item-ID rows follow their item key to its new row; a new item keeps its fresh row
    old_rows = old_catalogue.rows(["books"], ["BO00003"])[0], data.catalogue.rows(["books"], ["BO00003"])[0]
    np.testing.assert_array_equal(np.asarray(warm.item_tower.id_embedding.embeddings)[old_rows[1]],
                                  np.asarray(old_model.item_tower.id_embedding.embeddings)[old_rows[0]])
    # frozen backbone: old items' text vectors and embeddings are untouched, new ones are added
    old_rows_all = data.catalogue.rows(old_catalogue.items[schema.DOMAIN], old_catalogue.items[schema.ITEM_ID])
    np.testing.assert_array_equal(text.table[old_rows_all], np.asarray(old_model.text_table)[1:])
    # (items whose ID vector is used in both: the new split may hold other items out as "new")
    same = np.asarray(warm.id_known)[old_rows_all] == np.asarray(old_model.id_known)[1:]
    assert same.mean() > 0.9
    np.testing.assert_allclose(warm.all_item_embeddings()[old_rows_all][same], old_model.all_item_embeddings()[1:][same],
                               atol=1e-6)


# --- the whole retrain ---------------------------------------------------------------------------------

def test_retrain_publishes_new_items_removes_old_ones_and_serves_a_zero_shot_domain_under_load(served, tmp_path):
    from serving.models import ModelManager, ModelSpec
    from serving.server import Server, ServerOptions, free_port

    old = read_training_data(served_state(served).towers_dir)
    removed = old.items[old.items[schema.DOMAIN] == "books"][schema.ITEM_ID].iloc[5]
    data_dir = new_data(served, tmp_path / "new", remove=removed)
    manager = ModelManager([ModelSpec(m, served / m) for m in ("retrieval", "recommender", "item_encoder")])
    server = Server(manager, ServerOptions(port=0, rest_api_port=free_port(), poll_seconds=0.2)).start()
    clients = [subprocess.Popen([sys.executable, "-c", CLIENT_LOOP, f"127.0.0.1:{server.port}", str(tmp_path / "stop")],
                                stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        result = retrain(data_dir, served, config=small_config(served, epochs=2), work_dir=tmp_path / "runs",
                         progress=False)
        assert result.published == {"retrieval": 2, "ranking": 2, "recommender": 2, "item_encoder": 2}
        deadline = time.time() + 60
        while any(manager.get(m).version != 2 for m in ("retrieval", "recommender")) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        (tmp_path / "stop").write_text("")
        outputs = [json.loads(c.communicate(timeout=60)[0]) for c in clients]
        server.stop()
    # zero failed requests while version 2 was published and switched in, from every client process
    assert all(o["failures"] == [] and o["ok"] > 0 for o in outputs), outputs
    assert manager.get("retrieval").version == 2 and manager.get("recommender").version == 2
    # new items are retrievable, the removed one is gone; the new domain is served zero-shot
    books = _retrieve_all(served, 2, [("books", "BO00001")], "books")
    assert len(books) == 40 - 1 + len(NEW_BOOKS) and NEW_BOOKS[1][0] in books and removed not in books
    metadata = json.loads((served / "retrieval" / "2" / "assets" / "crossrec_metadata.json").read_text())
    assert metadata["index"]["domains"]["books"]["items"] == 40 - 1 + len(NEW_BOOKS)
    music = _retrieve_all(served, 2, [("books", NEW_BOOKS[0][0])], "music")
    assert sorted(music) == sorted(i for i, _ in ZERO_SHOT)
    assert metadata["zero_shot_domains"] == ["music"]
    # the next retrain starts from what was published
    state = served_state(served)
    assert (state.towers_dir / "towers.weights.h5").exists()
    # ... kept beside the serving folder: nothing served holds a user id
    assert not (served / "retrieval" / "2" / TRAINING_STATE).exists()
    assert served not in state.towers_dir.parents and state_root(served) in state.towers_dir.parents
    for table in served.rglob("*.parquet"):
        assert schema.USER_ID not in pd.read_parquet(table).columns, table
    assert served_state(served).version == 2
    log = [json.loads(line) for line in (result.work_dir / "run_log.jsonl").read_text().splitlines()]
    events = [r["event"] for r in log]
    assert events[0] == "start" and events[-1] == "published" and "gate" in events
    start = log[0]
    assert (start["new_items"], start["new_users"], start["removed_items"]) == (5, 2, 1)
    assert start["new_interactions"] > 0 and start["data_fingerprint"]
    assert start["zero_shot_domains"] == ["music"] and start["new_domains"] == []
    # only the new texts were encoded: the served model's text vectors were reused
    served_metric = next(r for r in log if r["event"] == "served_metric")
    assert served_metric["text_encoded"] == len(NEW_BOOKS) + len(ZERO_SHOT)
    gate = next(r for r in log if r["event"] == "gate")
    assert gate["publish"] and gate["retrained"] >= gate["threshold"]


CLIENT_LOOP = """
import json, os, sys
import numpy as np
from serving.client import CrossrecClient, _history_inputs
target, stop = sys.argv[1], sys.argv[2]
ok, failures = 0, []
inputs = {**_history_inputs([[("books", "BO00001"), ("movies", "MO00002")]], ["books"]),
          "k": np.array([3], np.int32), "exclude_history": np.array([True])}
with CrossrecClient(target) as client:
    while not os.path.exists(stop):
        for model in ("retrieval", "recommender"):
            try:
                client.predict(model, inputs)
                ok += 1
            except Exception as exc:
                failures.append(repr(exc)[:300])
print(json.dumps({"ok": ok, "failures": failures[:5]}))
"""


class Scramble(keras.callbacks.Callback):
    """Makes the trained towers deliberately worse: random user-tower output weights after every
    epoch (before validation, so early stopping keeps them)."""

    def on_epoch_end(self, epoch, logs=None):
        for weight in self.model.user_tower.out.weights:
            weight.assign(np.random.default_rng(0).normal(0, 5, weight.shape).astype("float32"))


def test_the_gate_keeps_the_served_version_when_the_retrained_model_is_worse(served, tmp_path):
    data_dir = new_data(served, tmp_path / "new")
    config = small_config(served, max_regression=0.02, epochs=1)
    result = retrain(data_dir, served, config=config, work_dir=tmp_path / "runs", progress=False,
                     callbacks=[Scramble()])
    assert result.published is None
    assert result.gate["retrained"] < result.gate["threshold"]
    assert "not published" in result.reason and "keeps version 1" in result.reason
    assert versions(served / "retrieval") == [1] and versions(served / "recommender") == [1]
    log = [json.loads(line) for line in (result.work_dir / "run_log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "kept" and "below" in log[-1]["reason"]
    # the same command again reports the same decision without training again
    again = retrain(data_dir, served, config=config, work_dir=tmp_path / "runs", progress=False)
    assert again.published is None and again.reason == result.reason


def test_gate_threshold_is_relative_to_the_served_metric():
    assert Gate(0.50, 0.49, 0.02).publish and not Gate(0.50, 0.489, 0.02).publish
    assert Gate(0.0, 0.0, 0.02).publish
    # a model with a NaN anywhere never publishes, whatever its metric says
    assert not Gate(0.50, float("nan"), 0.02).publish and not Gate(0.50, 1.0, 0.02, finite=False).publish
    assert "never publishes" in Gate(0.50, 1.0, 0.02, finite=False).reason(3)


def test_the_training_state_is_checked_and_unreferenced_states_are_pruned(served):
    from serving.training_state import locate, prune

    folder = locate(served, 1)
    assert folder.parent == state_root(served) and (folder / "towers" / "data").is_dir()
    stale = state_root(served) / "0123456789abcdef01234567"
    (stale / "towers").mkdir(parents=True)
    assert prune(served) == [stale] and folder.exists()
    with open(folder / "towers" / "config.yaml", "a") as handle:
        handle.write("# edited\n")
    with pytest.raises(ConfigError, match="do not match the fingerprint"):
        served_state(served)
    shutil.rmtree(state_root(served))
    with pytest.raises(ConfigError, match="training state .* is missing"):
        served_state(served)


def test_retraining_from_a_folder_without_training_state_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no version to retrain from"):
        served_state(tmp_path)
    (tmp_path / "retrieval" / "1").mkdir(parents=True)
    (tmp_path / "retrieval" / "1" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ConfigError, match="carries no training state"):
        served_state(tmp_path)


def test_a_retrain_killed_in_training_and_at_each_step_of_its_publish_ends_with_one_set_trained_once(served, tmp_path):
    """kill -9 mid-training, between two renames of the publish and right after it, with a server
    watching: it never serves a mix, each re-run resumes (training once), and the last one reports
    the set the killed run published."""
    from crossrec.config import save_config

    data_dir = new_data(served, tmp_path / "new")
    config_path = tmp_path / "retrain.yaml"
    save_config(small_config(served, epochs=4), config_path)
    args = ["retrain", "--data", str(data_dir), "--from", str(served), "--config", str(config_path),
            "--work-dir", str(tmp_path / "runs"), "--quiet"]
    models = ["retrieval", "ranking", "recommender", "item_encoder"]
    with SetWatcher(served, models) as watch:
        watch.wait_for(1)
        first = subprocess.Popen([sys.executable, KILL_AT, "never:1", *args], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 240
        backups = []
        while time.time() < deadline and first.poll() is None and not backups:
            backups = list((tmp_path / "runs").glob("*/towers/backup/*"))
            time.sleep(0.05)
        assert backups, "training never wrote a backup"
        time.sleep(0.3)  # into the next epoch
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert versions(served / "retrieval") == [1]  # nothing was published by the killed run
        second = run_killed("rename:2", args)  # training resumed and finished; half the set in place
        assert second.returncode == -9, second.stdout + second.stderr
        assert [m for m in models if versions(served / m) == [1, 2]] == ["retrieval", "ranking"]
        assert served_state(served).version == 1  # retraining starts from the last complete set
        third = run_killed("published:1", args)  # the publish finished, nothing trained again
        assert third.returncode == -9, third.stdout + third.stderr
        assert all(versions(served / m) == [1, 2] for m in models)
        last = run_killed(None, args)
        assert last.returncode == 0, last.stdout + last.stderr
        watch.wait_for(2)
    assert json.loads(last.stdout.strip().splitlines()[-1])["published"] == dict.fromkeys(models, 2)
    assert watch.mixes == [] and [set(s.values()) for s in watch.seen] == [{1}, {2}]
    log = [json.loads(line) for line in next((tmp_path / "runs").glob("*/run_log.jsonl")).read_text().splitlines()]
    events = [r["event"] for r in log]
    assert [r["resumed"] for r in log if r["event"] == "start"] == [False, True, True]
    assert events.count("towers_trained") == 1 and events.count("rankers_trained") == 1
    assert events.count("towers_reused") == 1 and events.count("rankers_reused") == 1
    assert events[-1] == "published" and "interrupted after its publish" in log[-1]["reason"]
    assert versions(served / "retrieval") == [1, 2] and not list(served.glob("*/.tmp-*"))
