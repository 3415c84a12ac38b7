"""Fitting one ranker: built from its spec, trained on mined candidate lists with Keras ``fit``
(the best epoch by validation NDCG@10), the teacher's list scores for the student's distillation.
``ranking.train`` runs it for the teacher and the student.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from crossrec.config import Config
from crossrec.data.splits import NEW_ITEM
from crossrec.errors import raise_if_diverged
from crossrec.metrics import ranking_metrics
from crossrec.progress import epoch_bar
from ranking.candidates import CandidateLists
from ranking.evaluate import list_ranks
from ranking.mining import RankingData
from ranking.model import ENGAGEMENT, RATING, RankingFeatures, RankingModel
from ranking.ranker_spec import STUDENT, TEACHER, RankerSpec
from ranking.scoring import score_lists
from ranking.tables import FeatureTables

MONITOR = "val_ndcg_at_10"


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
