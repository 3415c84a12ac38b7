"""The ranking fit script: retrieval towers -> candidate lists -> teacher ranker -> distilled student.

``train_ranking(config, retrieval, out_dir)`` writes to ``out_dir``:
  teacher.weights.h5, student.weights.h5   the rankers (each the best epoch by validation NDCG@10)
  ranking_spec.json     what ``load_ranking`` needs to rebuild them
  config.yaml           the full config of the run
  rerank_metrics.csv    retrieval order vs teacher vs student vs the served order on the test candidate lists
  source_recall.csv     the share of test targets each candidate source's list holds, and the merged list's
  run_summary.json      sizes, timings, training histories, test metrics
  checkpoints/  backup/  tensorboard/    Keras ModelCheckpoint, BackupAndRestore, TensorBoard
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from crossrec import schema
from crossrec.config import Config, load_config, save_config
from crossrec.data.dataset import Dataset
from crossrec.data.splits import NEW_ITEM
from crossrec.errors import ConfigError, raise_if_diverged
from crossrec.evaluation import SERVED
from crossrec.experiment import prepare_data
from crossrec.features import Catalogue
from crossrec.metrics import ranking_metrics
from crossrec.progress import epoch_bar
from crossrec.typed import to_dict
from ranking.candidates import CandidateLists
from ranking.evaluate import list_ranks, rerank_metrics, source_recall
from ranking.mining import RankingData, mine_ranking_data
from ranking.model import ENGAGEMENT, RATING, RankingFeatures, RankingModel
from ranking.prior import choose_cold_start_popularity
from ranking.ranker_spec import STUDENT, TEACHER, RankerSpec
from ranking.scoring import score_lists, served_order, served_ranker, target_ratings
from ranking.served_list import ServedListSpec
from ranking.tables import FeatureTables

MONITOR = "val_ndcg_at_10"
RETRIEVAL_ORDER = "retrieval"


def build_ranker(spec: RankerSpec, tables: FeatureTables, name: str = TEACHER) -> RankingModel:
    """A ranker of shape ``spec`` over the item tables (built, ready to fit or load weights); no
    rating head where the tables know no rating."""
    weights = dict(spec.task_weights)
    if tables.rating_mean is None:
        weights[RATING] = 0.0
    features = RankingFeatures(tables, list(spec.features), name="features")
    model = RankingModel(features, network=spec, task_weights=weights, distillation_weight=spec.distillation_weight,
                         rating_mean=tables.rating_mean or 0.0, name=name, retrieval_scale=spec.retrieval_scale)
    model({"query": np.zeros((1, tables.item_embeddings.shape[1]), np.float32),
           "history": np.zeros((1, spec.history_length), np.int32), "candidates": np.ones((1, 2), np.int32)})
    for task in model.tasks.values():  # weightless loss wrappers: built, so a SavedModel of the ranker is whole
        task.build(None)
    return model


def fresh_parity_weights(lists: CandidateLists, tables: FeatureTables) -> np.ndarray:
    """(n,) per-list weights under which a new item (no count in ``tables``) is as likely to be the
    label as any candidate: lists whose target is new weigh (new share of the negatives) / (new
    share of the positives), the rest 1. A ranker then cannot learn "new, so worse" from the
    base rate, only from what tells a good new item from a bad one (its towers' score, its text
    similarity to the history); capped at 10."""
    new = (tables.popularity[lists.candidates] == 0) & (lists.candidates > 0)
    positive = lists.labels > 0
    negative = (lists.candidates > 0) & ~positive
    pos_share, neg_share = new[positive].mean() if positive.any() else 0.0, new[negative].mean() if negative.any() else 0.0
    weights = np.ones(len(lists), np.float32)
    if pos_share > 0 and neg_share > 0:
        weights[(new & positive).any(axis=1)] = min(neg_share / pos_share, 10.0)
    return weights


def make_list_dataset(lists: CandidateLists, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                      teacher: np.ndarray | None = None, own_counted: bool = True,
                      list_weight: np.ndarray | None = None) -> tf.data.Dataset:
    """Batches of labelled candidate lists, gathered whole from in-memory tensors."""
    rating, rating_weight = lists.ratings()
    columns = {**lists.features(), ENGAGEMENT: lists.labels, RATING: rating, "rating_weight": rating_weight}
    if own_counted:  # the tables count each training list's own label: leave it out of its features
        columns["popularity_offset"] = lists.labels
    if teacher is not None:
        columns["teacher"] = teacher.astype(np.float32)
    if list_weight is not None:
        columns["list_weight"] = list_weight.astype(np.float32)
    tensors = {k: tf.constant(v) for k, v in columns.items()}
    index = tf.data.Dataset.range(len(lists))
    if shuffle:
        index = index.shuffle(len(lists), seed=seed, reshuffle_each_iteration=True)
    return (index.batch(batch_size).map(lambda i: {k: tf.gather(t, i) for k, t in tensors.items()},
                                        num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))


def in_training_view(model: RankingModel, data: RankingData) -> RankingModel:
    """``model`` (the serving view) over the tables the training lists were mined in: itself
    when there is no label view, else a twin sharing its network (``RankingModel.in_view``)."""
    return model if data.label_tables is None else model.in_view(data.label_tables)


def training_scores(model: RankingModel, data: RankingData) -> np.ndarray:
    """``model``'s scores of the training lists, in the view they were mined in."""
    return score_lists(in_training_view(model, data), data.train)


class RerankEvaluation(tf.keras.callbacks.Callback):
    """NDCG@10 of the re-ranked validation lists after each epoch, into the logs
    (``val_ndcg_at_10``) where EarlyStopping and ModelCheckpoint read it. The validation lists
    are in the serving view: ``ranker`` is the trained network in that view (by default the
    model being fitted)."""

    def __init__(self, validation: list[tuple[str, CandidateLists]], ranker: RankingModel | None = None):
        super().__init__()
        self.validation = validation
        self.ranker = ranker

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.validation:
            return
        ranker = self.ranker or self.model
        ranks = np.concatenate([list_ranks(lists, score_lists(ranker, lists)) for _, lists in self.validation])
        logs[MONITOR] = ranking_metrics(ranks, (10,))["ndcg@10"]


def fit_ranker(model: RankingModel, data: RankingData, config: Config, *, out: Path | None, name: str,
               teacher: np.ndarray | None = None, progress: bool = True) -> dict[str, list[float]]:
    """Fits ``model`` (the serving view) on the training lists: the fit runs on its twin in the
    view the lists were mined in (the same network), validation scores ``model`` itself."""
    ranking = config.ranking
    trainer = in_training_view(model, data)
    trainer.compile(optimizer=tf.keras.optimizers.Adam(ranking.learning_rate))
    callbacks: list[tf.keras.callbacks.Callback] = []
    monitor, mode = "loss", "min"
    # Model selection on warm and cold-start lists: in new-item lists the target is the one item
    # without training interactions, a tell that a ranker could exploit there and nowhere else.
    selection = [(name, lists) for name, lists in data.validation if name != NEW_ITEM]
    if selection:
        callbacks.append(RerankEvaluation(selection, model))
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
    labelled = data.label_tables is not None
    parity = fresh_parity_weights(data.train, data.label_tables) if labelled and ranking.fresh_parity else None
    dataset = make_list_dataset(data.train, ranking.batch_size, seed=ranking.seed, teacher=teacher,
                                own_counted=not labelled, list_weight=parity)
    if progress:
        label = {TEACHER: "ranker (teacher)", STUDENT: "ranker (distilled student)"}.get(name, name)
        callbacks.append(epoch_bar(label, ranking.epochs, tf.keras.callbacks.Callback))
    history = trainer.fit(dataset, epochs=ranking.epochs, callbacks=callbacks, verbose=0)
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
    served_list: ServedListSpec = field(default_factory=ServedListSpec)  # what the served order is
    prior_choice: dict | None = None  # the validation evidence of its cold-start prior when chosen (auto)


def train_ranking(config: Config, retrieval, out_dir: str | Path | None = None, *, dataset: Dataset | None = None,
                  progress: bool = True, initialize=None) -> RankingRun:
    """Trains the teacher ranker (and the distilled student) on lists mined by ``retrieval``:
    a ``towers.train.RetrievalRun`` or the folder ``crossrec train retrieval`` wrote.
    ``initialize(name, model)`` runs on each built ranker before training (retraining's warm start)."""
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
    teacher = build_ranker(RankerSpec.of(config, TEACHER), ranking_data.tables, name=TEACHER)
    if initialize is not None:
        initialize(TEACHER, teacher)
    histories[TEACHER] = fit_ranker(teacher, ranking_data, config, out=out, name=TEACHER, progress=progress)
    seconds[TEACHER] = round(time.perf_counter() - clock, 1)
    student = None
    if config.ranking.distill:
        clock = time.perf_counter()
        teacher_scores = training_scores(teacher, ranking_data)
        student = build_ranker(RankerSpec.of(config, STUDENT), ranking_data.tables, name=STUDENT)
        if initialize is not None:
            initialize(STUDENT, student)
        histories[STUDENT] = fit_ranker(student, ranking_data, config, out=out, name=STUDENT,
                                        teacher=teacher_scores, progress=progress)
        seconds[STUDENT] = round(time.perf_counter() - clock, 1)
    served = served_ranker(teacher, student, config)
    weight, prior = choose_cold_start_popularity(served, ranking_data, config)
    config = replace(config, ranking=replace(config.ranking, cold_start_popularity=weight))
    served_list = ServedListSpec.from_config(config)
    metrics = evaluate_rankers(teacher, student, ranking_data.test, ranking_data, (served, served_list))
    run = RankingRun(teacher, student, ranking_data, metrics, histories, seconds, out, served_list, prior)
    if out is not None:
        save_ranking(run, config)
    return run


def evaluate_rankers(teacher: RankingModel, student: RankingModel | None, slices, data: RankingData,
                     served: tuple[RankingModel, ServedListSpec] | None = None) -> pd.DataFrame:
    """Retrieval order, teacher, student and, given ``served`` (the exported ranker and the
    served list's spec), the served order as the ``recommender`` SavedModel answers, on the same
    candidate lists (see ``ranking.evaluate``)."""
    orders = {RETRIEVAL_ORDER: lambda lists: lists.retrieval_scores, TEACHER: lambda lists: score_lists(teacher, lists)}
    ratings = {}
    if data.rating_mean is not None:
        ratings[TEACHER] = lambda lists: target_ratings(teacher, lists)
    if student is not None:
        orders[STUDENT] = lambda lists: score_lists(student, lists)
        if data.rating_mean is not None:
            ratings[STUDENT] = lambda lists: target_ratings(student, lists)
    if served is not None:
        ranker, spec = served
        orders[SERVED] = lambda lists: served_order(ranker, lists, data.tables, spec)
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
    spec = {"num_items": int(data.catalogue.size), "embedding_dim": int(data.tables.item_embeddings.shape[1]),
            "domains": data.catalogue.domains, "rating_mean": data.rating_mean,
            "history_length": config.towers.history_length, "served_list": run.served_list.to_dict(),
            "rankers": {role: RankerSpec.of(config, role).to_dict() for role in (TEACHER, STUDENT)},
            "sources": [{"name": t.name, "width": int(t.neighbours.shape[1]), "position_decay": t.position_decay}
                        for t in data.tables.sources]}
    (out / "ranking_spec.json").write_text(json.dumps(spec, indent=2))
    save_config(config, out / "config.yaml")
    run.teacher.save_weights(str(out / "teacher.weights.h5"))
    if run.student is not None:
        run.student.save_weights(str(out / "student.weights.h5"))
    run.metrics.to_csv(out / "rerank_metrics.csv", index=False)
    recall = source_recall(data.test, data.catalogue)
    recall.to_csv(out / "source_recall.csv", index=False)
    summary = {"training_lists": len(data.train), "list_length": int(data.train.candidates.shape[1]),
               "validation_lists": sum(len(v) for _, v in data.validation),
               "test_lists": sum(len(v) for _, v in data.test), "seconds": run.seconds, "histories": run.histories,
               "test_metrics": json.loads(run.metrics.to_json(orient="records")),
               "source_recall": json.loads(recall.to_json(orient="records")),
               "ranking_config": to_dict(config.ranking),
               **({"cold_start_popularity": run.prior_choice} if run.prior_choice else {})}
    (out / "run_summary.json").write_text(json.dumps(summary, indent=2))


def load_ranking(out_dir: str | Path) -> tuple[RankingModel, RankingModel | None, Config]:
    """Rebuilds the teacher (and student) written by ``train_ranking`` with their weights."""
    out = Path(out_dir)
    if not (out / "teacher.weights.h5").exists():
        raise ConfigError(f"{out} holds no trained ranker (teacher.weights.h5); run `crossrec train ranking` first")
    config = load_config(out / "config.yaml")
    spec = json.loads((out / "ranking_spec.json").read_text())
    n, e = spec["num_items"], spec["embedding_dim"]
    tables = FeatureTables.empty(n, e, len(spec["domains"]), spec["rating_mean"],
                                 [(s["name"], s["width"], s["position_decay"]) for s in spec.get("sources", [])])
    teacher = build_ranker(RankerSpec.stored(spec, config, TEACHER), tables, name=TEACHER)
    teacher.load_weights(str(out / "teacher.weights.h5"))
    teacher.features.sort_neighbours()
    student = None
    if (out / "student.weights.h5").exists():
        student = build_ranker(RankerSpec.stored(spec, config, STUDENT), tables, name=STUDENT)
        student.load_weights(str(out / "student.weights.h5"))
        student.features.sort_neighbours()
    return teacher, student, config
