"""The ranking fit script: retrieval towers -> candidate lists -> teacher ranker -> distilled student.

``train_ranking(config, retrieval, out_dir)`` writes to ``out_dir``:
  teacher.weights.h5, student.weights.h5   the rankers (each the best epoch by validation NDCG@10)
  ranking_spec.json     what ``load_ranking`` needs to rebuild them
  config.yaml           the full config of the run
  rerank_metrics.csv    retrieval order vs teacher vs student on the test candidate lists
  run_summary.json      sizes, timings, training histories, test metrics
  checkpoints/  backup/  tensorboard/    Keras ModelCheckpoint, BackupAndRestore, TensorBoard
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from crossrec import schema
from crossrec.config import Config, RankerConfig, load_config, save_config
from crossrec.data.dataset import Dataset
from crossrec.data.splits import NEW_ITEM
from crossrec.errors import ConfigError, raise_if_diverged
from crossrec.features import Catalogue
from crossrec.metrics import ranking_metrics
from crossrec.progress import fit_verbosity
from crossrec.typed import to_dict
from ranking.candidates import CandidateLists, mine_candidates
from ranking.evaluate import list_ranks, rerank_metrics
from ranking.model import ENGAGEMENT, RATING, RankingFeatures, RankingModel

MONITOR = "val_ndcg_at_10"
RETRIEVAL_ORDER, TEACHER, STUDENT = "retrieval", "ranker", "student"


@dataclass
class RankingData:
    train: CandidateLists
    validation: list[tuple[str, CandidateLists]]
    test: list[tuple[str, CandidateLists]]
    catalogue: Catalogue
    item_embeddings: np.ndarray  # (catalogue.size, e)
    popularity: np.ndarray  # (catalogue.size,) training interactions per item row
    rating_mean: float | None  # None: the data has no ratings
    rating_sum: np.ndarray | None = None  # (catalogue.size,) sum and count of training ratings per item row
    rating_count: np.ndarray | None = None


def mine_ranking_data(retrieval_model, data, config: Config, *, progress: bool = False) -> RankingData:
    """Candidate lists for the training examples (target always included) and for the
    validation and test queries (as retrieval returns them), from a trained ``RetrievalModel``."""
    from towers.queries import query_embeddings

    ranking = config.ranking
    catalogue = data.catalogue
    items = retrieval_model.all_item_embeddings()
    examples = data.examples
    if ranking.max_queries and len(examples) > ranking.max_queries:
        keep = np.sort(np.random.default_rng(ranking.seed).choice(len(examples), ranking.max_queries, replace=False))
        examples = examples.subset(keep)
    if progress:
        print(f"mining {ranking.candidates} candidates for {len(examples)} training queries", flush=True)
    train = mine_candidates(query_embeddings(retrieval_model, examples), items, examples, catalogue,
                            ranking.candidates, include_target=True, random_negatives=ranking.random_negatives,
                            seed=ranking.seed)

    def held_out(query_sets):
        return [(q.slice, mine_candidates(query_embeddings(retrieval_model, q.examples), items, q.examples,
                                          catalogue, ranking.candidates, seen=q.seen))
                for q in query_sets if len(q.examples)]

    rows = catalogue.rows(data.train[schema.DOMAIN], data.train[schema.ITEM_ID])
    counts = np.bincount(rows, minlength=catalogue.size)
    rating = examples.rating
    rating_mean = float(np.nanmean(rating)) if rating is not None and (~np.isnan(rating)).any() else None
    rating_sum = rating_count = None
    if rating_mean is not None and schema.RATING in data.train:
        values = pd.to_numeric(data.train[schema.RATING], errors="coerce").to_numpy(np.float64)
        known = ~np.isnan(values)
        rating_sum = np.bincount(rows[known], weights=values[known], minlength=catalogue.size).astype(np.float32)
        rating_count = np.bincount(rows[known], minlength=catalogue.size).astype(np.float32)
    return RankingData(train, held_out(data.validation), held_out(data.test), catalogue, items,
                       counts.astype(np.float32), rating_mean, rating_sum, rating_count)


def build_ranker(config: Config, which: RankerConfig, *, item_embeddings: np.ndarray, item_domain: np.ndarray,
                 popularity: np.ndarray, num_domains: int, rating_mean: float | None,
                 rating_sum: np.ndarray | None = None, rating_count: np.ndarray | None = None,
                 distillation_weight: float = 0.0, name: str = "ranker") -> RankingModel:
    """A ranker of shape ``which`` over the towers' tables (built, ready to fit or load weights)."""
    ranking = config.ranking
    weights = dict(ranking.task_weights)
    if rating_mean is None:
        weights[RATING] = 0.0
    features = RankingFeatures(item_embeddings, item_domain, popularity, num_domains,
                               which.features or ranking.features, rating_sum=rating_sum, rating_count=rating_count,
                               rating_mean=rating_mean or 0.0, name="features")
    model = RankingModel(features, config=which, task_weights=weights, listwise=ranking.loss == "listwise",
                         distillation_weight=distillation_weight, rating_mean=rating_mean or 0.0, name=name,
                         retrieval_scale=1.0 / config.train.temperature if ranking.residual_on_retrieval else None)
    h = config.towers.history_length
    model({"query": np.zeros((1, item_embeddings.shape[1]), np.float32), "history": np.zeros((1, h), np.int32),
           "candidates": np.ones((1, 2), np.int32)})
    return model


def _tables(data: RankingData) -> dict:
    return {"item_embeddings": data.item_embeddings, "item_domain": data.catalogue.item_domain,
            "popularity": data.popularity, "num_domains": len(data.catalogue.domains),
            "rating_mean": data.rating_mean, "rating_sum": data.rating_sum, "rating_count": data.rating_count}


def make_list_dataset(lists: CandidateLists, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                      teacher: np.ndarray | None = None) -> tf.data.Dataset:
    """Batches of labelled candidate lists, gathered whole from in-memory tensors."""
    rating, rating_weight = lists.ratings()
    columns = {**lists.features(), ENGAGEMENT: lists.labels, RATING: rating, "rating_weight": rating_weight,
               "popularity_offset": lists.labels}
    if teacher is not None:
        columns["teacher"] = teacher.astype(np.float32)
    tensors = {k: tf.constant(v) for k, v in columns.items()}
    index = tf.data.Dataset.range(len(lists))
    if shuffle:
        index = index.shuffle(len(lists), seed=seed, reshuffle_each_iteration=True)
    return (index.batch(batch_size).map(lambda i: {k: tf.gather(t, i) for k, t in tensors.items()},
                                        num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))


def score_lists(model: RankingModel, lists: CandidateLists, batch_size: int = 1024, head: str = ENGAGEMENT) -> np.ndarray:
    """(n, L) scores of one head for every candidate list."""
    if not hasattr(model, "_serve_lists"):
        model._serve_lists = tf.function(lambda f: model(f, training=False), reduce_retracing=True)
    out = []
    features = lists.features()
    for s in range(0, len(lists), batch_size):
        part = {k: tf.constant(v[s:s + batch_size]) for k, v in features.items()}
        out.append(model._serve_lists(part)[head].numpy())
    return np.concatenate(out) if out else np.zeros(lists.candidates.shape, np.float32)


def target_ratings(model: RankingModel, lists: CandidateLists) -> np.ndarray:
    """(n,) the rating head's prediction for each query's true target."""
    single = CandidateLists(lists.examples, lists.query, lists.examples.target[:, None].astype(np.int32),
                            np.zeros((len(lists), 1), np.float32))
    return score_lists(model, single, head=RATING)[:, 0]


class RerankEvaluation(tf.keras.callbacks.Callback):
    """NDCG@10 of the re-ranked validation lists after each epoch, into the logs
    (``val_ndcg_at_10``) where EarlyStopping and ModelCheckpoint read it."""

    def __init__(self, validation: list[tuple[str, CandidateLists]]):
        super().__init__()
        self.validation = validation

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.validation:
            return
        ranks = np.concatenate([list_ranks(lists, score_lists(self.model, lists)) for _, lists in self.validation])
        logs[MONITOR] = ranking_metrics(ranks, (10,))["ndcg@10"]


def fit_ranker(model: RankingModel, data: RankingData, config: Config, *, out: Path | None, name: str,
               teacher: np.ndarray | None = None, progress: bool = True) -> dict[str, list[float]]:
    ranking = config.ranking
    model.compile(optimizer=tf.keras.optimizers.Adam(ranking.learning_rate))
    callbacks: list[tf.keras.callbacks.Callback] = []
    monitor, mode = "loss", "min"
    # Model selection on warm and cold-start lists: in new-item lists the target is the one item
    # without training interactions, a tell that a ranker could exploit there and nowhere else.
    selection = [(name, lists) for name, lists in data.validation if name != NEW_ITEM]
    if selection:
        callbacks.append(RerankEvaluation(selection))
        monitor, mode = MONITOR, "max"
    callbacks.append(tf.keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, restore_best_weights=True,
                                                      patience=ranking.early_stopping_patience))
    callbacks.append(tf.keras.callbacks.TerminateOnNaN())
    if out is not None:
        callbacks += [
            tf.keras.callbacks.ModelCheckpoint(str(out / "checkpoints" / f"{name}.best.h5"), monitor=monitor,
                                               mode=mode, save_best_only=True, save_weights_only=True),
            tf.keras.callbacks.BackupAndRestore(str(out / "backup" / name)),
            tf.keras.callbacks.TensorBoard(str(out / "tensorboard" / name), write_graph=False, profile_batch=0),
        ]
    dataset = make_list_dataset(data.train, ranking.batch_size, seed=ranking.seed, teacher=teacher)
    history = model.fit(dataset, epochs=ranking.epochs, callbacks=callbacks, verbose=fit_verbosity(progress))
    raise_if_diverged(history.history, f"ranker {name!r}")
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


@dataclass
class RankingRun:
    teacher: RankingModel
    student: RankingModel | None
    data: RankingData
    metrics: pd.DataFrame
    histories: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    out_dir: Path | None = None


def train_ranking(config: Config, retrieval, out_dir: str | Path | None = None, *, dataset: Dataset | None = None,
                  progress: bool = True, initialize=None) -> RankingRun:
    """Trains the teacher ranker (and the distilled student) on lists mined by ``retrieval``:
    a ``towers.train.RetrievalRun`` or the folder ``crossrec train retrieval`` wrote.
    ``initialize(name, model)`` runs on each built ranker before training (retraining's warm start)."""
    from towers.inputs import prepare_data
    from towers.train import RetrievalRun, load_trained

    started = time.perf_counter()
    tf.keras.utils.set_random_seed(config.ranking.seed)
    if isinstance(retrieval, RetrievalRun):
        model, data = retrieval.model, retrieval.data
    else:
        model, catalogue, _ = load_trained(retrieval)
        data = prepare_data(config, dataset)
        _check_same_catalogue(catalogue, data.catalogue, retrieval)
    seconds = {}
    ranking_data = mine_ranking_data(model, data, config, progress=progress)
    seconds["mining"] = round(time.perf_counter() - started, 1)
    out = Path(out_dir) if out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    histories = {}
    clock = time.perf_counter()
    teacher = build_ranker(config, config.ranking.teacher, name=TEACHER, **_tables(ranking_data))
    if initialize is not None:
        initialize(TEACHER, teacher)
    histories[TEACHER] = fit_ranker(teacher, ranking_data, config, out=out, name=TEACHER, progress=progress)
    seconds[TEACHER] = round(time.perf_counter() - clock, 1)
    student = None
    if config.ranking.distill:
        clock = time.perf_counter()
        teacher_scores = score_lists(teacher, ranking_data.train)
        student = build_ranker(config, config.ranking.student, name=STUDENT,
                               distillation_weight=config.ranking.distillation_weight, **_tables(ranking_data))
        if initialize is not None:
            initialize(STUDENT, student)
        histories[STUDENT] = fit_ranker(student, ranking_data, config, out=out, name=STUDENT,
                                        teacher=teacher_scores, progress=progress)
        seconds[STUDENT] = round(time.perf_counter() - clock, 1)
    metrics = evaluate_rankers(teacher, student, ranking_data.test, ranking_data)
    run = RankingRun(teacher, student, ranking_data, metrics, histories, seconds, out)
    if out is not None:
        save_ranking(run, config)
    return run


def evaluate_rankers(teacher: RankingModel, student: RankingModel | None, slices, data: RankingData) -> pd.DataFrame:
    """Retrieval order, teacher and student on the same candidate lists (see ``ranking.evaluate``)."""
    orders = {RETRIEVAL_ORDER: lambda lists: lists.retrieval_scores, TEACHER: lambda lists: score_lists(teacher, lists)}
    ratings = {}
    if data.rating_mean is not None:
        ratings[TEACHER] = lambda lists: target_ratings(teacher, lists)
    if student is not None:
        orders[STUDENT] = lambda lists: score_lists(student, lists)
        if data.rating_mean is not None:
            ratings[STUDENT] = lambda lists: target_ratings(student, lists)
    return rerank_metrics(orders, slices, data.catalogue, ratings=ratings)


def _check_same_catalogue(trained: Catalogue, current: Catalogue, where) -> None:
    same = (trained.domains == current.domains and len(trained) == len(current)
            and (trained.items[[schema.DOMAIN, schema.ITEM_ID]].to_numpy()
                 == current.items[[schema.DOMAIN, schema.ITEM_ID]].to_numpy()).all())
    if not same:
        raise ConfigError(f"the retrieval towers in {where} were trained on other data ({len(trained)} items, domains "
                          f"{trained.domains[1:]}) than this run loads ({len(current)} items, domains "
                          f"{current.domains[1:]}); pass the same --config / --data as `crossrec train retrieval`")


def save_ranking(run: RankingRun, config: Config) -> None:
    out = run.out_dir
    data = run.data
    spec = {"num_items": int(data.catalogue.size), "embedding_dim": int(data.item_embeddings.shape[1]),
            "domains": data.catalogue.domains, "rating_mean": data.rating_mean,
            "history_length": config.towers.history_length}
    (out / "ranking_spec.json").write_text(json.dumps(spec, indent=2))
    save_config(config, out / "config.yaml")
    run.teacher.save_weights(str(out / "teacher.weights.h5"))
    if run.student is not None:
        run.student.save_weights(str(out / "student.weights.h5"))
    run.metrics.to_csv(out / "rerank_metrics.csv", index=False)
    summary = {"training_lists": len(data.train), "list_length": int(data.train.candidates.shape[1]),
               "validation_lists": sum(len(v) for _, v in data.validation),
               "test_lists": sum(len(v) for _, v in data.test), "seconds": run.seconds, "histories": run.histories,
               "test_metrics": json.loads(run.metrics.to_json(orient="records")),
               "ranking_config": to_dict(config.ranking)}
    (out / "run_summary.json").write_text(json.dumps(summary, indent=2))


def load_ranking(out_dir: str | Path) -> tuple[RankingModel, RankingModel | None, Config]:
    """Rebuilds the teacher (and student) written by ``train_ranking`` with their weights."""
    out = Path(out_dir)
    if not (out / "teacher.weights.h5").exists():
        raise ConfigError(f"{out} holds no trained ranker (teacher.weights.h5); run `crossrec train ranking` first")
    config = load_config(out / "config.yaml")
    spec = json.loads((out / "ranking_spec.json").read_text())
    n, e = spec["num_items"], spec["embedding_dim"]
    tables = {"item_embeddings": np.zeros((n, e), np.float32), "item_domain": np.zeros(n, np.int32),
              "popularity": np.zeros(n, np.float32), "num_domains": len(spec["domains"]),
              "rating_mean": spec["rating_mean"]}
    teacher = build_ranker(config, config.ranking.teacher, name=TEACHER, **tables)
    teacher.load_weights(str(out / "teacher.weights.h5"))
    student = None
    if (out / "student.weights.h5").exists():
        student = build_ranker(config, config.ranking.student, name=STUDENT,
                               distillation_weight=config.ranking.distillation_weight, **tables)
        student.load_weights(str(out / "student.weights.h5"))
    return teacher, student, config
