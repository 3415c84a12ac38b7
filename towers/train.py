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

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from crossrec import schema
from crossrec.config import Config, load_config, save_config, to_dict
from crossrec.data.dataset import Dataset
from crossrec.data.loaders import load_dataset
from crossrec.data.splits import (
    COLD_START,
    SLICE,
    WARM,
    evaluation_split,
    given_split,
    has_given_split,
)
from crossrec.distribute import set_precision, strategy_from_config
from crossrec.errors import ConfigError
from crossrec.evaluation import (
    EmbeddingScorer,
    PopularityScorer,
    QuerySet,
    evaluate,
    seen_rows,
    target_ranks,
)
from crossrec.features import (
    Catalogue,
    Examples,
    concat_examples,
    query_examples,
    training_examples,
)
from crossrec.metrics import ranking_metrics
from crossrec.progress import fit_verbosity
from towers.cache import EmbeddingCache
from towers.encoder import TextEncoder
from towers.model import RetrievalModel

MONITOR = "val_recall_at_50"


@dataclass
class RetrievalData:
    interactions: pd.DataFrame  # with split and slice columns
    catalogue: Catalogue
    train: pd.DataFrame
    examples: Examples
    validation: list[QuerySet] = field(default_factory=list)
    test: list[QuerySet] = field(default_factory=list)
    target_domain: str | None = None
    dataset: Dataset | None = None  # the clean data this was prepared from


def default_target_domain(interactions: pd.DataFrame) -> str:
    """The domain with the most users who are also active elsewhere."""
    per_user = interactions.groupby(schema.USER_ID)[schema.DOMAIN].nunique()
    multi = interactions[interactions[schema.USER_ID].isin(per_user[per_user > 1].index)]
    counts = multi.groupby(schema.DOMAIN)[schema.USER_ID].nunique()
    if counts.empty:
        return sorted(interactions[schema.DOMAIN].unique())[0]
    return str(counts.sort_values(ascending=False, kind="stable").index[0])


def split_for_evaluation(interactions: pd.DataFrame, config: Config) -> tuple[pd.DataFrame, str]:
    target = config.split.target_domain or default_target_domain(interactions)
    if config.eval.use_given_split and has_given_split(interactions):
        return given_split(interactions), target
    return evaluation_split(interactions, target_domain=target, cold_start_fraction=config.split.holdout_fraction,
                            new_item_fraction=config.split.holdout_fraction / 2, seed=config.split.seed), target


def _query_sets(split_name: str, frame: pd.DataFrame, train: pd.DataFrame, catalogue: Catalogue,
                history_length: int, given: bool) -> list[QuerySet]:
    held = frame[frame[schema.SPLIT] == split_name]
    sets = []
    for slice_name in sorted(held[SLICE].unique()):
        targets = held[held[SLICE] == slice_name]
        examples = query_examples(train, targets, catalogue, history_length)
        sets.append(QuerySet(slice_name, examples, seen_rows(train, examples.user_id, catalogue)))
        if given and slice_name == WARM:
            # Cross-domain cold-start queries on a given split: the same targets, asked from a
            # history with every item of the target's domain removed.
            other = train.merge(targets[[schema.USER_ID]].drop_duplicates(), on=schema.USER_ID)
            rows = []
            for domain in sorted(targets[schema.DOMAIN].unique()):
                t = targets[targets[schema.DOMAIN] == domain]
                rows.append(query_examples(other[other[schema.DOMAIN] != domain], t, catalogue, history_length))
            cold = concat_examples(rows)
            sets.append(QuerySet(COLD_START, cold, seen_rows(train, cold.user_id, catalogue)))
    return sets


def prepare_data(config: Config, dataset: Dataset | None = None) -> RetrievalData:
    dataset = (dataset or load_dataset(config.data)).clean()
    frame, target = split_for_evaluation(dataset.interactions, config)
    given = config.eval.use_given_split and has_given_split(dataset.interactions)
    train = frame[frame[schema.SPLIT] == schema.TRAIN].reset_index(drop=True)
    if train.empty:
        raise ConfigError("the split left no training interactions")
    catalogue = Catalogue.build(dataset.items, train[schema.DOMAIN].unique())
    h = config.towers.history_length
    examples = training_examples(train, catalogue, h, config.train.domain_weights)
    return RetrievalData(frame, catalogue, train, examples,
                         _query_sets(schema.VALIDATION, frame, train, catalogue, h, given),
                         _query_sets(schema.TEST, frame, train, catalogue, h, given), target, dataset)


@dataclass
class TextVectors:
    table: np.ndarray | None  # (catalogue.size, dim), row 0 zeros
    tokens: np.ndarray | None = None  # (catalogue.size, length) when fine-tuning
    encoder: TextEncoder | None = None  # the (first) trainable encoder when fine-tuning
    fingerprint: str | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    seconds: float = 0.0
    # Fine-tuning with shared_backbone false: one encoder per catalogue.domain_names entry.
    per_domain: list[TextEncoder] = field(default_factory=list)

    @property
    def encoders(self) -> list[TextEncoder]:
        return self.per_domain or ([self.encoder] if self.encoder is not None else [])


def text_vectors(config: Config, catalogue: Catalogue, *, progress: bool = False) -> TextVectors:
    if not config.towers.use_text:
        return TextVectors(None)
    start = time.perf_counter()
    per_domain = _per_domain_encoders(config, catalogue)
    encoder = per_domain[0] if per_domain else TextEncoder(config.encoder)
    texts = catalogue.items[schema.TEXT].tolist()
    if config.encoder.freeze == "frozen" and config.encoder.cache:
        cache = EmbeddingCache(config.encoder.cache_dir, encoder.fingerprint)
        vectors = cache.get(texts, lambda t: encoder.encode(t, progress=progress))
        table = np.concatenate([np.zeros((1, encoder.dim), np.float32), vectors])
        return TextVectors(table, fingerprint=encoder.fingerprint, cache_hits=cache.stats.hits,
                           cache_misses=cache.stats.misses, seconds=time.perf_counter() - start)
    tokens = np.concatenate([np.zeros((1, config.encoder.sequence_length), np.int32), encoder.tokenize(texts)])
    tokens[0, 0] = encoder.pad_id
    text = TextVectors(None, tokens, encoder, cache_misses=len(texts), per_domain=per_domain)
    text.table = encode_table(text, catalogue, progress=progress)
    text.seconds = time.perf_counter() - start
    return text


def _per_domain_encoders(config: Config, catalogue: Catalogue) -> list[TextEncoder]:
    """One backbone copy per catalogue domain when ``encoder.shared_backbone`` is false."""
    if config.encoder.shared_backbone:
        return []
    return [TextEncoder(config.encoder, name=f"text_encoder_{i}") for i in range(len(catalogue.domain_names))]


def encode_table(text: TextVectors, catalogue: Catalogue, *, progress: bool = False) -> np.ndarray:
    """Every row's text vector through its encoder (one shared, or its domain's own copy)."""
    encoders = text.encoders
    if len(encoders) == 1:
        table = encoders[0].encode_tokens(text.tokens, progress=progress)
    else:
        table = np.zeros((len(text.tokens), encoders[0].dim), np.float32)
        domain = catalogue.text_domain
        for index, encoder in enumerate(encoders):
            rows = np.flatnonzero(domain == index)
            table[rows] = encoder.encode_tokens(text.tokens[rows], progress=progress)
    table[0] = 0
    return table


def build_model(config: Config, data: RetrievalData, text: TextVectors) -> RetrievalModel:
    catalogue = data.catalogue
    id_known = np.zeros(catalogue.size, bool)
    id_known[np.unique(catalogue.rows(data.train[schema.DOMAIN], data.train[schema.ITEM_ID]))] = True
    id_known[0] = False
    model = RetrievalModel(
        text_table=text.table, item_domain=catalogue.item_domain, id_known=id_known,
        text_domain=catalogue.text_domain,
        text_means=None if text.table is None else catalogue.text_means(text.table),
        item_probability=catalogue.frequencies(data.train), num_domains=len(catalogue.domains),
        towers=config.towers, train=config.train,
        text_encoders=[e.layer for e in text.encoders], token_table=text.tokens)
    h = config.towers.history_length
    model({"history": np.zeros((1, h), np.int32), "target_domain": np.zeros(1, np.int32),
           "user_id": np.array(["u"])})
    return model


def make_dataset(examples: Examples, batch_size: int, *, seed: int = 0, balance_domains: bool = False,
                 shuffle: bool = True, with_user_ids: bool = False) -> tf.data.Dataset:
    """Batches of training features. Whole batches are gathered from in-memory tensors by a
    shuffled index (one shuffle per epoch), which is several times faster than slicing examples
    one by one; ``balance_domains`` draws every domain's examples equally often instead."""
    columns = {"history": examples.history, "target": examples.target, "target_domain": examples.target_domain,
               "weight": examples.weight}
    if with_user_ids:
        columns["user_id"] = examples.user_id.astype(str)
    tensors = {k: tf.constant(v) for k, v in columns.items()}
    n = len(examples)
    if balance_domains:
        domains = examples.target_domain
        parts = [tf.data.Dataset.from_tensor_slices(np.flatnonzero(domains == d).astype(np.int64))
                 .shuffle(int((domains == d).sum()), seed=seed).repeat() for d in np.unique(domains)]
        index = tf.data.Dataset.sample_from_datasets(parts, seed=seed).take(n)
    else:
        index = tf.data.Dataset.range(n)
        if shuffle:
            index = index.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    drop = n >= batch_size
    batches = index.batch(batch_size, drop_remainder=drop)
    return batches.map(lambda i: {k: tf.gather(t, i) for k, t in tensors.items()},
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def query_embeddings(model: RetrievalModel, examples: Examples, batch_size: int = 4096) -> np.ndarray:
    if not hasattr(model, "_serve_queries"):
        model._serve_queries = tf.function(lambda f: model(f, training=False), reduce_retracing=True)
    out = []
    for s in range(0, len(examples), batch_size):
        part = examples.subset(np.arange(s, min(len(examples), s + batch_size)))
        out.append(np.asarray(model._serve_queries({k: tf.constant(v) for k, v in part.features().items()})))
    return np.concatenate(out) if out else np.zeros((0, model.towers_config.embedding_dim), np.float32)


def sample_query_embeddings(model: RetrievalModel, examples: Examples, n: int, seed: int = 0) -> np.ndarray:
    """Query embeddings of ``n`` of ``examples`` drawn at random (all of them if fewer): real
    queries for measuring an index's recall against exact search."""
    if len(examples) > n:
        examples = examples.subset(np.sort(np.random.default_rng(seed).choice(len(examples), n, replace=False)))
    return query_embeddings(model, examples)


def scorer_for(model: RetrievalModel, name: str) -> EmbeddingScorer:
    return EmbeddingScorer(name, lambda ex: query_embeddings(model, ex), model.all_item_embeddings())


class RetrievalEvaluation(keras.callbacks.Callback):
    """Full-corpus Recall@k / NDCG@10 on the validation queries after each epoch, into the logs
    (``val_recall_at_50``...), where EarlyStopping and ModelCheckpoint read them."""

    def __init__(self, queries: list[QuerySet], catalogue: Catalogue, ks=(10, 50), exclude_seen=True):
        super().__init__()
        self.queries, self.catalogue, self.ks, self.exclude_seen = queries, catalogue, ks, exclude_seen

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.queries:
            return
        logs.update(validation_metrics(self.model, self.queries, self.catalogue, self.ks, self.exclude_seen))


def validation_metrics(model: RetrievalModel, queries: list[QuerySet], catalogue: Catalogue, ks=(10, 50),
                       exclude_seen: bool = True) -> dict[str, float]:
    """``val_recall_at_<k>`` and ``val_ndcg_at_10`` of ``model`` over all ``queries`` (full corpus)."""
    scorer = scorer_for(model, "model")
    ranks = np.concatenate([target_ranks(scorer, q, catalogue, exclude_seen=exclude_seen) for q in queries])
    metrics = ranking_metrics(ranks, ks)
    out = {f"val_recall_at_{k}": float(metrics[f"recall@{k}"]) for k in ks}
    out["val_ndcg_at_10"] = float(metrics["ndcg@10"])
    return out


class RefreshTextTable(keras.callbacks.Callback):
    """Fine-tuning: re-encodes every item's text after each epoch, so history items (which read
    the table) follow the backbone as it trains. Costs one encoding pass over the catalogue."""

    def __init__(self, text: TextVectors, catalogue: Catalogue, center: bool):
        super().__init__()
        self.text, self.catalogue, self.center = text, catalogue, center

    def on_epoch_end(self, epoch, logs=None):
        table = encode_table(self.text, self.catalogue)
        self.model.text_table.assign(table)
        if self.center:
            self.model.text_means.assign(self.catalogue.text_means(table))


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that survives being killed while writing its backup: it keeps the
    previous backup too (``double_checkpoint``) and falls back to it; when no backup can be read
    at all (killed during the very first write) training starts over instead of failing."""

    def __init__(self, backup_dir: str):
        super().__init__(backup_dir, double_checkpoint=True)

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError) as exc:
            print(f"note: the training backup in {self.backup_dir} is unreadable ({exc}); starting this fit again")
            shutil.rmtree(self.backup_dir, ignore_errors=True)


def data_fingerprint(frame: pd.DataFrame) -> str:
    hashed = pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


@dataclass
class RetrievalRun:
    model: RetrievalModel
    data: RetrievalData
    text: TextVectors
    history: dict
    metrics: pd.DataFrame
    out_dir: Path | None
    seconds: float


def train_retrieval(config: Config, out_dir: str | Path | None = None, *, dataset: Dataset | None = None,
                    data: RetrievalData | None = None, progress: bool = True, baselines: bool = False,
                    initialize=None, callbacks=()) -> RetrievalRun:
    """Trains the towers on ``config`` and evaluates them on the test queries (all slices).

    ``initialize(model)`` runs on the built model before training (retraining's warm start; a
    BackupAndRestore backup in ``out_dir`` still wins, so an interrupted run resumes);
    ``callbacks`` are added to ``fit``'s."""
    started = time.perf_counter()
    keras.utils.set_random_seed(config.train.seed)
    data = data or prepare_data(config, dataset)
    if len(data.examples) == 0:
        raise ConfigError("no training examples: every user needs at least two training interactions")
    text = text_vectors(config, data.catalogue, progress=progress)
    set_precision(config.train)
    strategy = strategy_from_config(config.train)
    with strategy.scope():
        model = build_model(config, data, text)
        if initialize is not None:
            initialize(model)
        model.compile(optimizer=keras.optimizers.AdamW(config.train.learning_rate,
                                                       weight_decay=config.train.weight_decay),
                      steps_per_execution=config.train.steps_per_execution)
    out = Path(out_dir) if out_dir else None
    callbacks: list[keras.callbacks.Callback] = list(callbacks)
    if text.encoder is not None and config.encoder.freeze != "frozen":
        callbacks.append(RefreshTextTable(text, data.catalogue, config.towers.center_text_by_domain))
    monitor, mode = "loss", "min"
    validation = [q for q in data.validation if len(q.examples)]
    if validation:
        callbacks.append(RetrievalEvaluation(validation, data.catalogue, exclude_seen=config.eval.exclude_seen))
        monitor, mode = MONITOR, "max"
    callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, restore_best_weights=True,
                                                   patience=config.train.early_stopping_patience))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        callbacks += [
            keras.callbacks.ModelCheckpoint(str(out / "checkpoints" / "best.weights.h5"), monitor=monitor, mode=mode,
                                            save_best_only=True, save_weights_only=True),
            ResumableBackup(str(out / "backup")),
            keras.callbacks.TensorBoard(str(out / "tensorboard"), write_graph=False, profile_batch=0),
        ]
    dataset_ = make_dataset(data.examples, config.train.batch_size, seed=config.train.seed,
                            balance_domains=config.train.balance_domains,
                            with_user_ids=config.towers.user_id_buckets > 0)
    fit_started = time.perf_counter()
    history = model.fit(dataset_, epochs=config.train.epochs, callbacks=callbacks,
                        shuffle=False, verbose=fit_verbosity(progress))  # tf.data already shuffles
    fit_seconds = time.perf_counter() - fit_started
    scorers = [scorer_for(model, "crossrec")]
    if baselines:
        scorers.append(PopularityScorer(data.train, data.catalogue))
    metrics = evaluate(scorers, data.test, data.catalogue, ks=tuple(config.eval.ks),
                       exclude_seen=config.eval.exclude_seen)
    run = RetrievalRun(model, data, text, {k: [float(v) for v in vs] for k, vs in history.history.items()}, metrics,
                       out, time.perf_counter() - started)
    if out is not None:
        save_run(run, config, fit_seconds)
    return run


def save_run(run: RetrievalRun, config: Config, fit_seconds: float) -> None:
    out = run.out_dir
    run.model.save_weights(str(out / "towers.weights.h5"))
    catalogue = run.data.catalogue
    catalogue.items.to_parquet(out / "catalogue.parquet", index=False)
    text_dim = 0 if run.text.table is None else int(run.text.table.shape[1])
    (out / "model_spec.json").write_text(json.dumps({"domains": catalogue.domains, "text_dim": text_dim}))
    save_config(config, out / "config.yaml")
    embeddings = run.model.all_item_embeddings()[1:]
    table = catalogue.items[[schema.DOMAIN, schema.ITEM_ID]].copy()
    table["embedding"] = list(embeddings)
    table.to_parquet(out / "item_embeddings.parquet", index=False)
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
        "seconds": round(run.seconds, 2), "history": run.history,
        "test_metrics": json.loads(run.metrics.to_json(orient="records")), "config": to_dict(config),
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
    text = TextVectors(None)
    if config.towers.use_text:
        if config.encoder.freeze == "frozen" and config.encoder.cache:
            text = TextVectors(np.zeros((size, dim), np.float32))
        else:
            per_domain = _per_domain_encoders(config, catalogue)
            encoder = per_domain[0] if per_domain else TextEncoder(config.encoder)
            text = TextVectors(np.zeros((size, dim), np.float32),
                               np.zeros((size, config.encoder.sequence_length), np.int32), encoder,
                               per_domain=per_domain)
    empty_train = pd.DataFrame({schema.DOMAIN: [], schema.ITEM_ID: []})
    model = build_model(config, RetrievalData(pd.DataFrame(), catalogue, empty_train, _no_examples()), text)
    model.load_weights(str(out / "towers.weights.h5"))
    return model, catalogue, config


def _no_examples() -> Examples:
    return Examples(np.zeros((0, 1), np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32),
                    np.zeros(0, object), np.zeros(0, np.float32))
