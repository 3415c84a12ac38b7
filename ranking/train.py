"""The ranking fit script: retrieval towers -> candidate lists -> teacher ranker -> distilled student.

``train_ranking(config, retrieval, out_dir)`` writes to ``out_dir``:
  teacher.weights.h5, student.weights.h5   the rankers (each the best epoch by validation NDCG@10)
  ranking_spec.json     what ``load_ranking`` needs to rebuild them
  config.yaml           the full config of the run
  rerank_metrics.csv    retrieval order vs teacher vs student vs the served order on the test candidate lists
  source_recall.csv     the share of test targets each candidate source's list holds, and the merged list's
  run_summary.json      sizes, timings, training histories, test metrics
  checkpoints/  backup/  tensorboard/    Keras ModelCheckpoint, BackupAndRestore, TensorBoard

The jobs it strings together live beside it: mining (``ranking.mining``), fitting one ranker
(``ranking.fit``), the run's folder (``ranking.run_folder``: ``save_ranking``, ``load_ranking``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import tensorflow as tf

from crossrec import schema
from crossrec.config import Config
from crossrec.data.dataset import Dataset
from crossrec.errors import ConfigError
from crossrec.evaluation import SERVED
from crossrec.experiment import prepare_data
from crossrec.features import Catalogue
from ranking.evaluate import rerank_metrics
from ranking.fit import build_ranker, fit_ranker, training_scores
from ranking.mining import RankingData, mine_ranking_data
from ranking.model import RankingModel
from ranking.prior import choose_cold_start_popularity
from ranking.ranker_spec import STUDENT, TEACHER, RankerSpec
from ranking.run_folder import save_ranking
from ranking.scoring import score_lists, served_order, served_ranker, target_ratings
from ranking.served_list import ServedListSpec

RETRIEVAL_ORDER = "retrieval"


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


