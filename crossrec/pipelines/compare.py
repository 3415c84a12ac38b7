"""Runs crossrec and its baselines through the same evaluator, on the same split.

Models:
- ``crossrec``: the configured cross-domain text model (every domain's history, transfer).
- ``popularity``: items by training count, per domain.
- ``id_two_tower``: the same towers without text (item-ID embeddings only), a TFRS two-tower.
- ``target_only``: the text model trained on one domain alone, queried with that domain's
  history alone (no transfer); one model per domain.
- ``item_knn`` (on request): item-to-item cosine similarity of co-occurrence, a reference.
- ``ranking``: the ranker (and its distilled student) trained on crossrec's candidate lists; it
  is compared with the retrieval order on the same top-K lists (``Comparison.reranking``).
Slices: the split's own (``warm``, ``cold_start``, ``new_item``), plus ``zero_shot`` when a
zero-shot domain is named: crossrec retrained with every interaction of that domain removed, and
asked for that domain from the users' other domains.
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
from crossrec.data.splits import SLICE, ZERO_SHOT, leave_last_out
from crossrec.errors import ConfigError
from crossrec.evaluation import ItemKNNScorer, PopularityScorer, QuerySet, evaluate, seen_rows
from crossrec.features import Catalogue, Examples, query_examples, training_examples
from towers.inputs import RetrievalData, prepare_data
from towers.queries import query_embeddings, scorer_for
from towers.train import train_retrieval

MODELS = ("crossrec", "popularity", "id_two_tower", "target_only", "item_knn", "ranking")
DEFAULT_MODELS = ("crossrec", "popularity", "id_two_tower", "target_only", "ranking")


@dataclass
class Comparison:
    metrics: pd.DataFrame
    histories: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    target_domain: str | None = None
    reranking: pd.DataFrame | None = None  # retrieval order vs ranker vs student, same lists


class _PerDomainScorer:
    """One model per target domain, each queried with its own domain's history only."""

    name = "target_only"

    def __init__(self, runs: dict[int, tuple], catalogue: Catalogue):
        self.runs, self.catalogue = runs, catalogue

    def score(self, queries: Examples, candidate_rows: np.ndarray) -> np.ndarray:
        domain = int(self.catalogue.item_domain[candidate_rows[0]])
        model, items = self.runs[domain]
        history = np.where(self.catalogue.item_domain[queries.history] == domain, queries.history, 0)
        own = Examples(_right_align(history), queries.target, queries.target_domain, queries.user_id, queries.weight)
        return query_embeddings(model, own) @ items[candidate_rows].T


def _right_align(history: np.ndarray) -> np.ndarray:
    out = np.zeros_like(history)
    for i, row in enumerate(history):
        kept = row[row > 0]
        if len(kept):
            out[i, -len(kept):] = kept
    return out


def _subset_data(data: RetrievalData, keep: pd.Series, config: Config) -> RetrievalData:
    train = data.train[keep.to_numpy()].reset_index(drop=True)
    examples = training_examples(train, data.catalogue, config.towers.history_length, config.train.domain_weights)
    return RetrievalData(data.interactions, data.catalogue, train, examples, data.validation, data.test,
                         data.target_domain)


def compare_models(config: Config, *, models=DEFAULT_MODELS, zero_shot_domain: str | None = None,
                   dataset: Dataset | None = None, progress: bool = True,
                   model_out: str | None = None, ranking_out: str | None = None) -> Comparison:
    """Trains and evaluates ``models`` on one split; ``model_out`` keeps crossrec's trained run
    (weights, item embeddings, summary) as ``crossrec train retrieval`` writes it, and
    ``ranking_out`` the rankers as ``crossrec train ranking`` does."""
    unknown = set(models) - set(MODELS)
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODELS)}")
    dataset = (dataset or load_dataset(config.data)).clean()
    data = prepare_data(config, dataset)
    result = Comparison(pd.DataFrame(), target_domain=data.target_domain)
    scorers = []

    def timed(name, fn):
        start = time.perf_counter()
        value = fn()
        result.seconds[name] = round(time.perf_counter() - start, 1)
        return value

    if "ranking" in models and "crossrec" not in models:
        raise ConfigError("the ranking model re-ranks crossrec's candidates: add crossrec to the models")
    if "crossrec" in models:
        run = timed("crossrec", lambda: train_retrieval(config, model_out, data=data, progress=progress))
        scorers.append(_named(run, "crossrec"))
        result.histories["crossrec"] = run.history
        if "ranking" in models:
            from ranking.train import train_ranking

            ranked = timed("ranking", lambda: train_ranking(config, run, ranking_out, progress=progress))
            result.reranking = ranked.metrics
    if "popularity" in models:
        scorers.append(PopularityScorer(data.train, data.catalogue))
    if "item_knn" in models:
        scorers.append(ItemKNNScorer(data.train, data.catalogue))
    if "id_two_tower" in models:
        id_config = replace(config, towers=replace(config.towers, use_text=False, use_item_ids=True))
        run = timed("id_two_tower", lambda: train_retrieval(id_config, data=data, progress=progress))
        scorers.append(_named(run, "id_two_tower"))
        result.histories["id_two_tower"] = run.history
    if "target_only" in models:
        runs = {}
        for index, domain in enumerate(data.catalogue.domains):
            if index == 0:
                continue
            sub = _subset_data(data, data.train[schema.DOMAIN] == domain, config)
            if len(sub.examples) == 0:
                continue
            run = timed(f"target_only:{domain}", lambda sub=sub: train_retrieval(config, data=sub, progress=progress))
            runs[index] = (run.model, run.model.all_item_embeddings())
            result.histories[f"target_only:{domain}"] = run.history
        scorers.append(_PerDomainScorer(runs, data.catalogue))
    ks = tuple(config.eval.ks)
    frames = [evaluate(scorers, data.test, data.catalogue, ks=ks, exclude_seen=config.eval.exclude_seen)]
    if zero_shot_domain:
        frames.append(timed("zero_shot", lambda: _zero_shot(config, dataset, zero_shot_domain, progress)))
    result.metrics = pd.concat(frames, ignore_index=True)
    return result


def _named(run, name):
    return scorer_for(run.model, name)


def _zero_shot(config: Config, dataset: Dataset, domain: str, progress: bool) -> pd.DataFrame:
    """crossrec trained without any interaction of ``domain``, asked for ``domain``."""
    inter = dataset.interactions
    if domain not in set(inter[schema.DOMAIN]):
        raise ConfigError(f"zero-shot domain {domain!r} has no interactions to evaluate on "
                          f"(domains: {', '.join(sorted(inter[schema.DOMAIN].unique()))})")
    split = leave_last_out(inter)
    in_domain = split[schema.DOMAIN] == domain
    targets = split[in_domain & (split[schema.SPLIT] == schema.TEST)]
    train = split[~in_domain & (split[schema.SPLIT] == schema.TRAIN)].reset_index(drop=True)
    catalogue = Catalogue.build(dataset.items, train[schema.DOMAIN].unique())
    h = config.towers.history_length
    examples = training_examples(train, catalogue, h, config.train.domain_weights)
    validation_rows = split[~in_domain & (split[schema.SPLIT] == schema.VALIDATION)]
    validation = [QuerySet("warm", query_examples(train, validation_rows, catalogue, h),
                           seen_rows(train, validation_rows[schema.USER_ID].to_numpy(), catalogue))]
    queries = query_examples(train, targets, catalogue, h)
    test = [QuerySet(ZERO_SHOT, queries, seen_rows(train, queries.user_id, catalogue))]
    frame = split.assign(**{SLICE: ""})
    data = RetrievalData(frame, catalogue, train, examples, validation, test, domain)
    run = train_retrieval(config, data=data, progress=progress)
    scorers = [_named(run, "crossrec"), PopularityScorer(train, catalogue)]
    return evaluate(scorers, test, catalogue, ks=tuple(config.eval.ks), exclude_seen=config.eval.exclude_seen)
