"""Runs crossrec and its baselines through the same evaluator, on the same split.

Models:
- ``crossrec``: the configured cross-domain text model (every domain's history, transfer).
- ``popularity``: items by training count, per domain.
- ``id_two_tower``: the same towers without text (item-ID embeddings only), a TFRS two-tower.
- ``target_only``: the text model trained on one domain alone, queried with that domain's
  history alone (no transfer); one model per domain.
- ``item_knn`` (on request): item-to-item cosine similarity of co-occurrence, a reference.
- ``sasrec`` (on request): SASRec over item IDs, causal self-attention trained at every position
  (``towers.sasrec``), the field's reference sequential model.
- ``ranking``: the ranker (and its distilled student) trained on crossrec's candidate lists; it
  is compared with the retrieval order on the same top-K lists (``Comparison.reranking``), and
  adds the ``served`` row: what the ``recommender`` SavedModel answers (the towers' candidates
  merged with the candidate sources, ranked by the exported ranker in the served order) asked the
  same test queries as every other model; a target the merged list misses is a miss. ``crossrec``
  is then the towers alone (retrieval without the sources and the ranker).
Slices: the split's own (``warm``, ``cold_start``, ``new_item``), plus ``zero_shot`` when a
zero-shot domain is named: crossrec retrained with every interaction of that domain removed, and
asked the ``cold_start`` slice's queries of that domain (same users, targets and histories), so
the zero-shot number compares with the cold-start one. Without ``split.target_domain``, the
zero-shot domain is the cold-start target domain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from crossrec import schema
from crossrec.config import Config
from crossrec.data.dataset import Dataset
from crossrec.data.loaders import load_dataset
from crossrec.data.splits import COLD_START, SLICE, ZERO_SHOT
from crossrec.errors import ConfigError
from crossrec.evaluation import (
    SERVED,
    TOWERS,
    ItemKNNScorer,
    PopularityScorer,
    evaluate,
    paired_comparisons,
    pooled_metrics,
    rank_frame,
)
from crossrec.experiment import ExperimentData, prepare_data, query_sets
from crossrec.features import Catalogue, Examples, keep_right_aligned
from crossrec.windows import training_examples
from ranking.evaluate import list_ranks
from ranking.scoring import served_order, served_ranker
from ranking.train import train_ranking
from towers.queries import query_embeddings, scorer_for
from towers.sasrec import train_sasrec
from towers.train import train_retrieval

MODELS = (TOWERS, "popularity", "id_two_tower", "target_only", "item_knn", "sasrec", "ranking")
DEFAULT_MODELS = (TOWERS, "popularity", "id_two_tower", "target_only", "ranking")


@dataclass
class Comparison:
    metrics: pd.DataFrame
    histories: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    target_domain: str | None = None
    reranking: pd.DataFrame | None = None  # retrieval order vs ranker vs student, same lists
    ranks: pd.DataFrame | None = None  # every query's rank per model (model, slice, domain, query, rank)
    paired: pd.DataFrame | None = None  # crossrec minus each baseline on the same queries, with intervals
    # settings `auto` chose on validation, per training seed: [{"towers.item_id_dropout": 0.1, ...}]
    chosen: list[dict] = field(default_factory=list)


class _PerDomainScorer:
    """One model per target domain, each queried with its own domain's history only."""

    name = "target_only"

    def __init__(self, runs: dict[int, tuple], catalogue: Catalogue):
        self.runs, self.catalogue = runs, catalogue

    def score(self, queries: Examples, candidate_rows: np.ndarray) -> np.ndarray:
        domain = int(self.catalogue.item_domain[candidate_rows[0]])
        model, items = self.runs[domain]
        history = np.where(self.catalogue.item_domain[queries.history] == domain, queries.history, 0)
        own = Examples(keep_right_aligned(history, history > 0), queries.target, queries.target_domain, queries.user_id, queries.weight)
        return query_embeddings(model, own) @ items[candidate_rows].T


def _subset_data(data: ExperimentData, keep: pd.Series, config: Config) -> ExperimentData:
    train = data.train[keep.to_numpy()].reset_index(drop=True)
    examples = training_examples(train, data.catalogue, config.towers.history_length, config.train.domain_weights)
    return ExperimentData(data.interactions, data.catalogue, train, examples, data.validation, data.test,
                         data.target_domain)


def compare_models(config: Config, *, models=DEFAULT_MODELS, zero_shot_domain: str | None = None,
                   dataset: Dataset | None = None, progress: bool = True,
                   model_out: str | None = None, ranking_out: str | None = None) -> Comparison:
    """Trains and evaluates ``models`` on one split; ``model_out`` keeps crossrec's trained run
    (weights, item embeddings, summary) as ``crossrec train retrieval`` writes it, and
    ``ranking_out`` the rankers as ``crossrec train ranking`` does."""
    _check_models(models)
    dataset = (dataset or load_dataset(config.data)).clean()
    if zero_shot_domain and not config.split.target_domain:  # zero-shot asks the cold-start queries
        config = replace(config, split=replace(config.split, target_domain=zero_shot_domain))
    data = prepare_data(config, dataset)
    if not any(len(q.examples) for q in data.test):
        raise ConfigError("nothing to evaluate: the split held out no test interaction (with split.kind "
                          "leave_last_out a user needs at least three interactions: one each for training, "
                          "validation and test)")
    result = Comparison(pd.DataFrame(), target_domain=data.target_domain)
    scorers = []

    def timed(name, fn):
        start = time.perf_counter()
        value = fn()
        result.seconds[name] = round(time.perf_counter() - start, 1)
        return value

    if TOWERS in models:
        run = timed(TOWERS, lambda: train_retrieval(config, model_out, data=data, progress=progress,
                                                        name="crossrec towers"))
        scorers.append(_named(run, TOWERS))
        result.histories[TOWERS] = run.history
        result.chosen = [{f"towers.{k}": v for k, v in (run.auto or {}).get("settings", {}).items()}]
        if "ranking" in models:
            ranked = timed("ranking", lambda: train_ranking(config, run, ranking_out, progress=progress))
            result.reranking = ranked.metrics
            if ranked.prior_choice:
                result.chosen[0]["ranking.cold_start_popularity"] = ranked.served_list.cold_start_popularity
            served_ranks = timed("served evaluation", lambda: _served_ranks(ranked, config))
    scorers += _reference_scorers(models, config, data, progress, timed)
    if "id_two_tower" in models:
        id_config = replace(config, towers=replace(config.towers, use_text=False, use_item_ids=True))
        run = timed("id_two_tower", lambda: train_retrieval(id_config, data=data, progress=progress,
                                                            name="id_two_tower (baseline)"))
        scorers.append(_named(run, "id_two_tower"))
        result.histories["id_two_tower"] = run.history
    if "target_only" in models:
        scorer, histories = _target_only(config, data, progress, timed)
        scorers.append(scorer)
        result.histories.update(histories)
    ks = tuple(config.eval.ks)
    ranks: list[pd.DataFrame] = []
    frames = [timed("evaluation", lambda: evaluate(scorers, data.test, data.catalogue, ks=ks,
                                                    exclude_seen=config.eval.exclude_seen, ranks_out=ranks))]
    if "ranking" in models:
        ranks.extend(served_ranks)
        frames.append(pooled_metrics(pd.concat(served_ranks, ignore_index=True), ks).drop(columns="seeds"))
    if zero_shot_domain:
        frames.append(timed("zero_shot", lambda: _zero_shot(config, data, zero_shot_domain, progress, ranks)))
    result.metrics = pd.concat(frames, ignore_index=True)
    result.ranks = pd.concat(ranks, ignore_index=True) if ranks else pd.DataFrame()
    result.paired = paired_against_baselines(result.ranks)
    return result


def _served_ranks(ranked, config: Config) -> list[pd.DataFrame]:
    """Each test query's rank in the served list (``ranking.scoring.served_order`` over the merged
    candidate lists, which are mined for the evaluator's test queries in their order); a target
    outside the list ranks last (``ranking.evaluate.MISS``)."""
    ranker = served_ranker(ranked.teacher, ranked.student, config)
    frames = []
    for slice_name, lists in ranked.data.test:
        ranks = list_ranks(lists, served_order(ranker, lists, ranked.data.tables, ranked.served_list))
        frames.append(rank_frame(SERVED, slice_name, ranked.data.catalogue.item_domain_name[lists.examples.target],
                                 ranks))
    return frames


def paired_against_baselines(ranks: pd.DataFrame) -> pd.DataFrame:
    """On the same queries (``crossrec.evaluation.paired_comparisons``): the served list (when
    measured) against every other model, the towers among them, and the towers (``crossrec``)
    against every baseline."""
    if ranks.empty:
        return pd.DataFrame()
    frames = [paired_comparisons(ranks, reference=SERVED),
              paired_comparisons(ranks[ranks["model"] != SERVED], reference=TOWERS)]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _reference_scorers(models, config: Config, data: ExperimentData, progress: bool, timed) -> list:
    """The baselines that are not crossrec's towers: popularity, item-kNN, SASRec."""
    scorers = []
    if "popularity" in models:
        scorers.append(PopularityScorer(data.train, data.catalogue))
    if "item_knn" in models:
        scorers.append(ItemKNNScorer(data.train, data.catalogue))
    if "sasrec" in models:
        scorers.append(timed("sasrec", lambda: train_sasrec(config, data, progress=progress)))
    return scorers


def _check_models(models) -> None:
    unknown = set(models) - set(MODELS)
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODELS)}")
    if "ranking" in models and TOWERS not in models:
        raise ConfigError("the ranking model re-ranks crossrec's candidates: add crossrec to the models")


def _target_only(config: Config, data: ExperimentData, progress: bool, timed) -> tuple[_PerDomainScorer, dict]:
    """The towers trained on each domain's interactions alone, each scoring its own domain, and
    their training histories."""
    runs, histories = {}, {}
    for index, domain in enumerate(data.catalogue.domains):
        if index == 0:
            continue
        sub = _subset_data(data, data.train[schema.DOMAIN] == domain, config)
        if len(sub.examples) == 0:
            continue
        run = timed(f"target_only:{domain}", lambda sub=sub, domain=domain: train_retrieval(
            config, data=sub, progress=progress, name=f"target_only:{domain} (baseline)"))
        runs[index] = (run.model, run.model.all_item_embeddings())
        histories[f"target_only:{domain}"] = run.history
    return _PerDomainScorer(runs, data.catalogue), histories


def compare_over_seeds(config: Config, seeds: int = 1, **kwargs) -> Comparison:
    """``compare_models`` once per training seed (``train.seed``, ``+1``, ...; the split and so the
    queries stay the same), pooled: each query's metric averaged over the seeds, intervals over
    queries, paired comparisons on the averages. Kept models, the re-ranking table and training
    histories are the first seed's."""
    if seeds < 1:
        raise ConfigError(f"seeds: expected at least 1, got {seeds}")
    runs = []
    for i in range(seeds):
        seeded = replace(config, train=replace(config.train, seed=config.train.seed + i))
        extra = kwargs if i == 0 else {**kwargs, "model_out": None, "ranking_out": None}
        runs.append(compare_models(seeded, **extra))
    if seeds == 1:
        return runs[0]
    result = runs[0]
    result.ranks = pd.concat([r.ranks.assign(seed=i) for i, r in enumerate(runs)], ignore_index=True)
    result.metrics = pooled_metrics(result.ranks, tuple(config.eval.ks))
    result.paired = paired_against_baselines(result.ranks)
    result.seconds = {name: round(sum(r.seconds.get(name, 0.0) for r in runs), 1) for name in result.seconds}
    result.chosen = [choice for r in runs for choice in r.chosen]
    return result


def _named(run, name):
    return scorer_for(run.model, name)


def _zero_shot(config: Config, data: ExperimentData, domain: str, progress: bool,
               ranks_out: list | None = None) -> pd.DataFrame:
    """crossrec trained without a single interaction of ``domain``, asked the cold-start queries of
    ``domain``: the same users, targets and histories (other domains only) as the ``cold_start``
    slice, so warm, cold-start and zero-shot numbers compare."""
    frame = data.interactions
    if domain not in set(frame[schema.DOMAIN]):
        raise ConfigError(f"zero-shot domain {domain!r} has no interactions to evaluate on "
                          f"(domains: {', '.join(sorted(frame[schema.DOMAIN].unique()))})")
    in_domain = frame[schema.DOMAIN] == domain
    cold = frame[SLICE] == COLD_START
    if not (in_domain & cold & (frame[schema.SPLIT] == schema.TEST)).any():
        raise ConfigError(f"zero-shot domain {domain!r}: the split has no cross-domain cold-start queries in it "
                          f"to ask (cold-start target domain: {data.target_domain}); set split.target_domain: "
                          f"{domain} or pick a --zero-shot-domain that has them")
    kept = frame[~in_domain]
    train = kept[kept[schema.SPLIT] == schema.TRAIN].reset_index(drop=True)
    catalogue = Catalogue.build(data.dataset.items if data.dataset is not None else data.catalogue.items,
                                train[schema.DOMAIN].unique())
    h = config.towers.history_length
    examples = training_examples(train, catalogue, h, config.train.domain_weights)
    validation = query_sets(schema.VALIDATION, kept, train, catalogue, h)
    asked = frame[in_domain & cold & (frame[schema.SPLIT] == schema.TEST)].assign(**{SLICE: ZERO_SHOT})
    test = query_sets(schema.TEST, asked, train, catalogue, h)
    zero = ExperimentData(frame, catalogue, train, examples, validation, test, domain, data.dataset, data.split_kind)
    run = train_retrieval(config, data=zero, progress=progress, name=f"crossrec towers without {domain} (zero-shot)")
    scorers = [_named(run, TOWERS), PopularityScorer(train, catalogue)]
    return evaluate(scorers, test, catalogue, ks=tuple(config.eval.ks), exclude_seen=config.eval.exclude_seen,
                    ranks_out=ranks_out)
