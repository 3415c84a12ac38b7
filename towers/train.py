"""The retrieval fit script: data -> text vectors -> towers -> Keras ``fit`` -> outputs.

``train_retrieval(config, out_dir)`` writes to ``out_dir``:
  towers.weights.h5      final weights (the best epoch's, by the validation metric)
  catalogue.parquet      item rows, domains and texts the weights refer to
  config.yaml            the full config of the run
  item_embeddings.parquet  the item embedding table (domain, item_id, embedding)
  run_summary.json       sizes, timings, training history and test metrics
  checkpoints/  backup/  tensorboard/   Keras ModelCheckpoint, BackupAndRestore, TensorBoard
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from crossrec import schema
from crossrec.config import Config, load_config, save_config
from crossrec.data.dataset import Dataset
from crossrec.distribute import (
    is_chief,
    resolve_kind,
    set_precision,
    strategy_from_config,
    task_name,
)
from crossrec.errors import ConfigError, TrainingDiverged, raise_if_diverged
from crossrec.evaluation import PopularityScorer, evaluate
from crossrec.experiment import ExperimentData, data_fingerprint, prepare_data
from crossrec.features import Catalogue, Examples
from crossrec.progress import epoch_bar
from crossrec.typed import to_dict
from towers.adapt import Adaptation, adapt_encoder, keep_copy
from towers.callbacks import ResumableBackup, RetrievalEvaluation
from towers.embedding_table import FILE as EMBEDDINGS_FILE
from towers.embedding_table import write_item_embeddings
from towers.inputs import make_dataset
from towers.model import RetrievalModel
from towers.optimizer import rows_per_step, towers_optimizer
from towers.queries import scorer_for
from towers.spec import LossSpec, TowerSpec, TowerTables
from towers.text import TextVectors, text_vectors
from towers.tuning import choose

MONITOR = "val_recall_at_50"


def build_model(config: Config, data: ExperimentData, text: TextVectors) -> RetrievalModel:
    catalogue = data.catalogue
    counts = np.bincount(catalogue.rows(data.train[schema.DOMAIN], data.train[schema.ITEM_ID]),
                         minlength=catalogue.size)
    id_known = counts > 0
    id_known[0] = False
    tables = TowerTables(text.table, catalogue.item_domain, id_known, catalogue.text_domain,
                         None if text.table is None else catalogue.text_means(text.table),
                         catalogue.frequencies(data.train), len(catalogue.domains))
    model = RetrievalModel(tables, TowerSpec.from_config(config.towers), LossSpec.from_config(config))
    h = config.towers.history_length
    model({"history": np.zeros((1, h), np.int32), "target_domain": np.zeros(1, np.int32),
           "user_id": np.array(["u"])})
    return model


def distributed_input(strategy, config: Config, examples, batch_size: int):
    """(the training input, what the summary records of its distribution): one ``tf.data``
    pipeline, or under several replicas one per worker (``distribute_datasets_from_function``),
    each reading its own shard with the per-replica batch size."""
    options = dict(seed=config.train.seed, balance_domains=config.train.balance_domains,
                   with_user_ids=config.towers.user_id_buckets > 0)
    info = {"strategy": resolve_kind(config.train), "replicas": strategy.num_replicas_in_sync, "workers": 1,
            "examples_read": len(examples)}
    if strategy.num_replicas_in_sync == 1:
        return make_dataset(examples, batch_size, **options), info
    if config.train.balance_domains:
        raise ConfigError("train.balance_domains is not supported with several replicas yet; turn it off")

    def per_pipeline(context: tf.distribute.InputContext) -> tf.data.Dataset:
        info.update(workers=context.num_input_pipelines, examples_read=len(examples) // context.num_input_pipelines)
        return make_dataset(examples, context.get_per_replica_batch_size(batch_size), **options,
                            shard=(context.num_input_pipelines, context.input_pipeline_id))

    return strategy.distribute_datasets_from_function(per_pipeline), info


@dataclass
class RetrievalRun:
    model: RetrievalModel
    data: ExperimentData
    text: TextVectors
    history: dict
    metrics: pd.DataFrame
    out_dir: Path | None
    seconds: float
    distribution: dict = field(default_factory=dict)  # strategy, replicas, workers, examples read
    timings: dict = field(default_factory=dict)  # data_seconds, evaluation_seconds
    auto: dict | None = None  # settings chosen on validation (towers.tuning), with every trial's score
    adaptation: Adaptation | None = None  # the encoder's adaptation to the catalogue (towers.adapt)


def train_retrieval(config: Config, out_dir: str | Path | None = None, *, dataset: Dataset | None = None,
                    data: ExperimentData | None = None, progress: bool = True, baselines: bool = False,
                    initialize=None, callbacks=(), name: str = "retrieval towers", test: bool = True) -> RetrievalRun:
    """Trains the towers on ``config`` and evaluates them on the test queries (all slices).

    ``initialize(model)`` runs on the built model before training (retraining's warm start; a
    BackupAndRestore backup in ``out_dir`` still wins, so an interrupted run resumes);
    ``callbacks`` are added to ``fit``'s; ``name`` labels its progress line; settings given as
    ``auto`` are chosen first on the validation queries (``towers.tuning``); ``test=False`` skips
    the test queries' evaluation."""
    started = time.perf_counter()
    # First: MultiWorkerMirrored must set up its collectives before any other TensorFlow op runs.
    strategy = strategy_from_config(config.train)
    keras.utils.set_random_seed(config.train.seed)
    data = data or prepare_data(config, dataset)
    config, adaptation = adapt_encoder(config, data.train, data.catalogue, progress=progress)
    config, auto = choose(config, data, lambda trial: train_retrieval(
        trial, data=data, progress=False, test=False, initialize=initialize).history, progress=progress)
    timings = {"data_seconds": time.perf_counter() - started}
    config = replace(config, split=replace(config.split, kind=data.split_kind))  # what was used, when saved
    if len(data.examples) == 0:
        raise ConfigError("no training examples: every user needs at least two training interactions")
    text = text_vectors(config, data.catalogue, progress=progress)
    set_precision(config.train)
    with strategy.scope():
        model = build_model(config, data, text)
        if initialize is not None:
            initialize(model)
        model.compile(optimizer=towers_optimizer(model, config.train.learning_rate, config.train.weight_decay,
                                                 rows_per_step=rows_per_step(config)),
                      steps_per_execution=config.train.steps_per_execution)
    out = Path(out_dir) if out_dir else None
    if out is not None and not is_chief(strategy):  # every worker writes; only the chief's is the run
        out = out / task_name(strategy)
    callbacks = fit_callbacks(config, data, text, out, list(callbacks))
    dataset_, distribution = distributed_input(strategy, config, data.examples, config.train.batch_size)
    fit_started = time.perf_counter()
    if progress:
        callbacks.append(epoch_bar(name, config.train.epochs, keras.callbacks.Callback))
    history = model.fit(dataset_, epochs=config.train.epochs, callbacks=callbacks,
                        shuffle=False, verbose=0)  # tf.data already shuffles
    fit_seconds = time.perf_counter() - fit_started
    raise_if_diverged(history.history, "retrieval towers")
    if not np.isfinite(model.all_item_embeddings()).all():
        raise TrainingDiverged("retrieval towers: some item embeddings are NaN or infinite; nothing was saved. "
                               "Check the data's weights for extreme values, or lower train.learning_rate")
    scorers = [scorer_for(model, "crossrec")]
    if baselines:
        scorers.append(PopularityScorer(data.train, data.catalogue))
    evaluation_started = time.perf_counter()
    metrics = evaluate(scorers, data.test, data.catalogue, ks=tuple(config.eval.ks),
                       exclude_seen=config.eval.exclude_seen) if test else pd.DataFrame()
    timings["evaluation_seconds"] = time.perf_counter() - evaluation_started
    run = RetrievalRun(model, data, text, {k: [float(v) for v in vs] for k, vs in history.history.items()}, metrics,
                       out, time.perf_counter() - started, distribution, timings,
                       None if auto is None else auto.summary(), adaptation)
    if out is not None:
        save_run(run, config, fit_seconds)
    return run


def fit_callbacks(config: Config, data: ExperimentData, text: TextVectors, out: Path | None,
                  callbacks: list[keras.callbacks.Callback]) -> list[keras.callbacks.Callback]:
    """``callbacks`` + per-epoch validation with early stopping on it, TerminateOnNaN and, with an ``out`` folder, the best checkpoint, the
    resumable backup and TensorBoard."""
    monitor, mode = "loss", "min"
    validation = [q.sample(config.train.validation_queries, config.train.seed) for q in data.validation
                  if len(q.examples)]
    if validation:
        callbacks.append(RetrievalEvaluation(validation, data.catalogue, exclude_seen=config.eval.exclude_seen))
        monitor, mode = MONITOR, "max"
    callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, restore_best_weights=True,
                                                   patience=config.train.early_stopping_patience))
    callbacks.append(keras.callbacks.TerminateOnNaN())
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        callbacks += [
            keras.callbacks.ModelCheckpoint(str(out / "checkpoints" / "best.weights.h5"), monitor=monitor, mode=mode,
                                            save_best_only=True, save_weights_only=True),
            ResumableBackup(str(out / "backup")),
            keras.callbacks.TensorBoard(str(out / "tensorboard"), write_graph=False, profile_batch=0),
        ]
    return callbacks


def save_run(run: RetrievalRun, config: Config, fit_seconds: float) -> None:
    out = run.out_dir
    if run.adaptation is not None:  # the run keeps its own copy of the encoder it was trained with, and names
        keep_copy(run.adaptation, out)  # it relative to itself (a copy of the folder finds its own)
        config = replace(config, encoder=replace(config.encoder, adapted="adapted_encoder"))
    run.model.save_weights(str(out / "towers.weights.h5"))
    catalogue = run.data.catalogue
    catalogue.items.to_parquet(out / "catalogue.parquet", index=False)
    text_dim = 0 if run.text.table is None else int(run.text.table.shape[1])
    (out / "model_spec.json").write_text(json.dumps({"domains": catalogue.domains, "text_dim": text_dim}))
    save_config(config, out / "config.yaml")
    write_item_embeddings(out / EMBEDDINGS_FILE, catalogue.items, run.model.all_item_embeddings()[1:])
    run.metrics.to_csv(out / "test_metrics.csv", index=False)
    if run.data.dataset is not None:  # what `crossrec retrain` adds new data to
        run.data.dataset.save(out / "data", overwrite=True)
    summary = {
        "examples": len(run.data.examples), "items": len(catalogue), "domains": catalogue.domains[1:],
        "target_domain": run.data.target_domain,
        "data_fingerprint": data_fingerprint(run.data.interactions[[schema.USER_ID, schema.ITEM_ID, schema.DOMAIN]]),
        "text_encoder": {"fingerprint": run.text.fingerprint, "cache_hits": run.text.cache_hits,
                         "cache_misses": run.text.cache_misses, "seconds": round(run.text.seconds, 2)},
        "epochs_run": len(run.history.get("loss", [])), "fit_seconds": round(fit_seconds, 2),
        "examples_per_second": round(len(run.history.get("loss", [])) * len(run.data.examples) / max(fit_seconds, 1e-9)),
        "seconds": round(run.seconds, 2), **{k: round(v, 2) for k, v in run.timings.items()},
        "distribution": run.distribution, "history": run.history,
        "test_metrics": json.loads(run.metrics.to_json(orient="records")), "config": to_dict(config),
        **({"auto": run.auto} if run.auto else {}),
        **({"adaptation": run.adaptation.report} if run.adaptation else {}),
    }
    (out / "run_summary.json").write_text(json.dumps(summary, indent=2))


def load_trained(out_dir: str | Path) -> tuple[RetrievalModel, Catalogue, Config]:
    """Rebuilds the towers written by ``train_retrieval`` and loads their weights."""
    out = Path(out_dir)
    if not (out / "towers.weights.h5").exists():
        raise ConfigError(f"{out} holds no trained towers (towers.weights.h5); run `crossrec train retrieval` first")
    config = load_config(out / "config.yaml")
    spec = json.loads((out / "model_spec.json").read_text())
    catalogue = Catalogue(pd.read_parquet(out / "catalogue.parquet"), spec["domains"])
    size, dim = catalogue.size, spec["text_dim"]
    text = TextVectors(np.zeros((size, dim), np.float32) if config.towers.use_text else None)
    model = model_for_catalogue(config, catalogue, text)
    model.load_weights(str(out / "towers.weights.h5"))
    return model, catalogue, config


def model_for_catalogue(config: Config, catalogue: Catalogue, text: TextVectors) -> RetrievalModel:
    """Towers of ``config``'s shape for ``catalogue`` without training data (every item unseen,
    uniform item frequencies): what weights are loaded or copied into."""
    empty_train = pd.DataFrame({schema.DOMAIN: [], schema.ITEM_ID: []})
    return build_model(config, ExperimentData(pd.DataFrame(), catalogue, empty_train, _no_examples()), text)


def _no_examples() -> Examples:
    return Examples(np.zeros((0, 1), np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32),
                    np.zeros(0, object), np.zeros(0, np.float32))
