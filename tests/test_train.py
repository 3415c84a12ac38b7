"""The retrieval fit script end to end on tiny data and a tiny random backbone."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from crossrec import schema
from crossrec.config import EncoderConfig, TrainConfig
from crossrec.data.dataset import Dataset
from crossrec.data.splits import COLD_START, WARM
from crossrec.distribute import resolve_kind, strategy_from_config
from crossrec.errors import ConfigError
from crossrec.experiment import prepare_data
from towers.queries import query_embeddings
from towers.train import load_trained, train_retrieval


def test_fit_lowers_the_loss_and_writes_every_output(tiny_config, tmp_path):
    config = replace(tiny_config, train=replace(tiny_config.train, epochs=4))
    run = train_retrieval(config, tmp_path / "run", progress=False, baselines=True)
    loss = run.history["loss"]
    assert loss[-1] < loss[0]
    out = tmp_path / "run"
    for name in ("towers.weights.h5", "catalogue.parquet", "config.yaml", "item_embeddings.parquet",
                 "run_summary.json", "checkpoints/best.weights.h5", "test_metrics.csv"):
        assert (out / name).exists(), name
    assert any((out / "tensorboard").rglob("*tfevents*"))
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["text_encoder"]["cache_misses"] == len(run.data.catalogue)
    assert set(run.metrics["slice"]) == {"warm", "cold_start", "new_item"}
    assert set(run.metrics["model"]) == {"crossrec", "popularity"}
    table = pd.read_parquet(out / "item_embeddings.parquet")
    assert len(table) == len(run.data.catalogue) and len(table["embedding"].iloc[0]) == 16

    # the frozen encoder's vectors come from the cache the second time
    again = train_retrieval(replace(config, train=replace(config.train, epochs=1)), None, progress=False)
    assert again.text.cache_hits == len(run.data.catalogue) and again.text.cache_misses == 0

    # save -> reload -> the same queries and item embeddings
    model, catalogue, _ = load_trained(out)
    queries = run.data.test[0].examples
    np.testing.assert_allclose(query_embeddings(model, queries), query_embeddings(run.model, queries), atol=1e-6)
    np.testing.assert_allclose(model.all_item_embeddings(), run.model.all_item_embeddings(), atol=1e-6)
    assert catalogue.domains == run.data.catalogue.domains


def test_without_the_cache_the_text_table_is_the_cached_one_and_the_encoder_stays_frozen(tiny_config, tmp_path):
    from towers.text import text_vectors

    data = prepare_data(tiny_config)
    cached = text_vectors(tiny_config, data.catalogue)
    uncached_config = replace(tiny_config, encoder=replace(tiny_config.encoder, cache=False,
                                                           cache_dir=str(tmp_path / "unused")))
    uncached = text_vectors(uncached_config, data.catalogue)
    np.testing.assert_allclose(uncached.table, cached.table, atol=1e-5)
    assert uncached.fingerprint == cached.fingerprint and uncached.cache_misses == len(data.catalogue)
    assert not (tmp_path / "unused").exists()
    run = train_retrieval(replace(uncached_config, train=replace(tiny_config.train, epochs=1)), None, data=data,
                          progress=False)
    assert not any(w.trainable for w in run.model.trainable_weights if "text" in w.path)
    np.testing.assert_allclose(np.asarray(run.model.text_table), cached.table, atol=1e-5)


def test_id_only_two_tower_trains_without_an_encoder(tiny_config):
    config = replace(tiny_config, towers=replace(tiny_config.towers, use_text=False),
                     encoder=EncoderConfig(preset="/does/not/exist"))
    run = train_retrieval(config, None, progress=False)
    assert run.text.table is None and np.isfinite(run.history["loss"]).all()


def test_towers_saved_before_the_options_were_removed_still_load(tiny_config, tmp_path):
    """A served version trained while the fusion gate existed holds one more model variable (each
    item's log training count, right after ``id_known``): its towers still load, unchanged."""
    import h5py

    config = replace(tiny_config, train=replace(tiny_config.train, epochs=1))
    run = train_retrieval(config, tmp_path / "run", progress=False)
    with h5py.File(tmp_path / "run" / "towers.weights.h5", "r+") as weights:
        own = weights["vars"]
        names = [v.name for v in run.model._trainable_variables + run.model._non_trainable_variables]
        skip = names.index("id_known") + 1
        for i in reversed(range(skip, len(names))):  # make room at `skip`, as the old layout had it
            own.move(str(i), str(i + 1))
        own.create_dataset(str(skip), data=np.full(run.model.item_domain.shape, 7.0, np.float32))
    model, _, _ = load_trained(tmp_path / "run")
    np.testing.assert_allclose(model.all_item_embeddings(), run.model.all_item_embeddings(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(model.item_probability), np.asarray(run.model.item_probability))


def test_given_split_asks_cold_start_of_users_whose_target_domain_left_training(tiny_config):
    rows = []
    for u in range(30):
        user_split = "test" if u < 10 else "train"
        seq = [("books", f"b{(u + i) % 10}") for i in range(4)] + [("movies", f"m{(u + i) % 10}") for i in range(3)]
        for pos, (domain, item) in enumerate(seq):
            rows.append((f"u{u}", item, domain, pos, user_split, "history"))
        rows.append((f"u{u}", f"m{u % 10}", "movies", len(seq), user_split, "target_1"))
    inter = pd.DataFrame(rows, columns=[schema.USER_ID, schema.ITEM_ID, schema.DOMAIN, schema.SEQ_POS, "split", "role"])
    items = pd.DataFrame([(f"{d[0]}{i}", d, f"{d} item {i}") for d in ("books", "movies") for i in range(10)],
                         columns=[schema.ITEM_ID, schema.DOMAIN, schema.TEXT])
    data = prepare_data(tiny_config, Dataset(inter, items))  # given_cold_start_fraction 0.5: 5 of 10 users
    by_slice = {q.slice: q.examples for q in data.test}
    assert set(by_slice) == {WARM, COLD_START}
    warm, cold = by_slice[WARM], by_slice[COLD_START]
    assert len(warm) == 5 and len(cold) == 5
    assert not set(warm.user_id) & set(cold.user_id)
    movies = data.catalogue.domain_index("movies")
    # cold-start users' movies interactions are gone from training, for every model alike
    cold_train = data.train[data.train[schema.USER_ID].isin(set(cold.user_id))]
    assert set(cold_train[schema.DOMAIN]) == {"books"}
    assert len(data.train) == len(inter) - 10 - 5 * 3  # 10 held-out targets, 3 movies rows of 5 cold users
    assert (data.catalogue.item_domain[warm.history] == movies).any()
    assert not (data.catalogue.item_domain[cold.history] == movies).any()
    assert (cold.history > 0).any()
    # only what the query knows is excluded: nothing of the target domain for a cold-start query
    cold_seen = [q for q in data.test if q.slice == COLD_START][0].seen
    assert all(not (data.catalogue.item_domain[s] == movies).any() for s in cold_seen)
    assert data.split_kind == "given"


def test_a_diverged_fit_stops_and_saves_nothing(tiny_config, tmp_path):
    from crossrec.errors import TrainingDiverged, raise_if_diverged

    with pytest.raises(TrainingDiverged, match=r"loss became inf in epoch 2"):
        raise_if_diverged({"loss": [1.0, float("inf")], "val_recall_at_50": [0.1, 0.2]}, "towers")
    config = replace(tiny_config, train=replace(tiny_config.train, learning_rate=1e38, epochs=3))
    with pytest.raises(TrainingDiverged, match="retrieval towers"):
        train_retrieval(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "towers.weights.h5").exists()


def test_strategy_auto_is_the_default_strategy_on_cpu(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert resolve_kind(TrainConfig()) == "default"
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}')
    assert resolve_kind(TrainConfig()) == "multi_worker"
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ConfigError, match="multi_worker needs the TF_CONFIG environment variable"):
        strategy_from_config(TrainConfig(strategy="multi_worker"))


def _examples(domains):
    from crossrec.features import Examples

    n = len(domains)
    return Examples(np.arange(n * 2, dtype=np.int32).reshape(n, 2), np.arange(1, n + 1, dtype=np.int32),
                    np.asarray(domains, np.int32), np.array([f"u{i}" for i in range(n)], object),
                    np.ones(n, np.float32))


def test_each_epoch_yields_every_example_once_in_a_new_order():
    from towers.inputs import make_dataset

    ds = make_dataset(_examples([1] * 50), batch_size=16)
    epochs = [np.concatenate([b["target"].numpy() for b in ds]) for _ in range(2)]
    assert len(epochs[0]) == 48  # 3 full batches of 16; the last partial batch is dropped
    assert len(set(epochs[0])) == 48 and set(epochs[0]) <= set(range(1, 51))
    assert not np.array_equal(epochs[0], epochs[1])


def test_balanced_batches_draw_domains_equally():
    from towers.inputs import make_dataset

    examples = _examples([1] * 900 + [2] * 100)
    targets = np.concatenate([b["target_domain"].numpy() for b in make_dataset(examples, 100, balance_domains=True)])
    share = (targets == 2).mean()
    assert 0.4 < share < 0.6  # 10% of the data, half of the batches


def test_sparse_adamw_moves_only_the_rows_a_step_used_and_those_as_adamw_does():
    """Lazy updates for embedding tables: an epoch no longer costs O(catalogue) per step."""
    import keras
    import tensorflow as tf

    from towers.optimizer import SparseAdamW

    start = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    lazy_table, dense_table = keras.Variable(start.copy()), keras.Variable(start.copy())
    lazy = SparseAdamW(0.05, weight_decay=0.1, tables=[lazy_table])
    dense = keras.optimizers.AdamW(0.05, weight_decay=0.1)
    lazy.build([lazy_table])
    dense.build([dense_table])
    rng = np.random.default_rng(1)
    for _ in range(3):  # the same rows each step: lazy Adam then equals Adam on them
        values = rng.normal(size=(3, 3)).astype(np.float32)
        lazy.apply([tf.IndexedSlices(tf.constant(values), tf.constant([4, 1, 4]), tf.constant([6, 3]))], [lazy_table])
        grad = np.zeros((6, 3), np.float32)
        grad[1] += values[1]
        grad[4] += values[0] + values[2]  # a row named twice gets the sum
        dense.apply([tf.constant(grad)], [dense_table])
    got, want = lazy_table.numpy(), dense_table.numpy()
    np.testing.assert_allclose(got[[1, 4]], want[[1, 4]], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[[0, 2, 3, 5]], start[[0, 2, 3, 5]])  # untouched: no decay, no momentum
    assert not np.allclose(want[[0, 2, 3, 5]], start[[0, 2, 3, 5]])  # (dense AdamW decays them every step)


def test_only_tables_larger_than_a_step_reads_are_updated_row_wise(tiny_config):
    """Collecting a step's rows costs more than updating a table a step mostly reads anyway."""
    from dataclasses import replace

    from crossrec.experiment import prepare_data
    from towers.optimizer import rows_per_step, towers_optimizer
    from towers.text import text_vectors
    from towers.train import build_model

    config = replace(tiny_config, train=replace(tiny_config.train, batch_size=2))
    data = prepare_data(config)
    model = build_model(config, data, text_vectors(config, data.catalogue))
    table = model.item_tower.id_embedding.embeddings
    assert rows_per_step(config) == 2 * (config.towers.history_length + 1) < table.shape[0]
    assert towers_optimizer(model, 0.01, 0.0, rows_per_step=rows_per_step(config)).tables == [table]
    assert towers_optimizer(model, 0.01, 0.0, rows_per_step=table.shape[0]).tables == []
