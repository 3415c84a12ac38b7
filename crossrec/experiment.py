"""The experiment's data, shared by every stage: the split (the dataset's own, or crossrec's
evaluation split), the catalogue, one training example per target, the validation and test query
sets of every slice (``ExperimentData``), and the data fingerprint. The towers train on it,
the ranker mines its lists from it, export measures its index on it, and evaluation scores every
model on the same queries."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pandas as pd

from crossrec import schema
from crossrec.config import Config
from crossrec.data.dataset import Dataset
from crossrec.data.loaders import load_dataset
from crossrec.data.splits import (
    SLICE,
    evaluation_split,
    given_split,
    has_given_split,
)
from crossrec.errors import ConfigError
from crossrec.evaluation import QuerySet, seen_rows
from crossrec.features import Catalogue, Examples, query_examples
from crossrec.windows import Windows, training_examples


@dataclass
class ExperimentData:
    interactions: pd.DataFrame  # with split and slice columns
    catalogue: Catalogue
    train: pd.DataFrame
    examples: Windows | Examples  # the training examples (Windows: histories built per batch)
    validation: list[QuerySet] = field(default_factory=list)
    test: list[QuerySet] = field(default_factory=list)
    target_domain: str | None = None
    dataset: Dataset | None = None  # the clean data this was prepared from
    split_kind: str = "evaluation"  # how ``interactions`` was split: "given" or "evaluation"


def default_target_domain(interactions: pd.DataFrame) -> str:
    """The domain with the most users who are also active elsewhere."""
    per_user = interactions.groupby(schema.USER_ID)[schema.DOMAIN].nunique()
    multi = interactions[interactions[schema.USER_ID].isin(per_user[per_user > 1].index)]
    counts = multi.groupby(schema.DOMAIN)[schema.USER_ID].nunique()
    if counts.empty:
        return sorted(interactions[schema.DOMAIN].unique())[0]
    return str(counts.sort_values(ascending=False, kind="stable").index[0])


def split_for_evaluation(interactions: pd.DataFrame, config: Config) -> tuple[pd.DataFrame, str, str]:
    """(split frame with ``split`` and ``slice`` columns, cold-start target domain, split kind):
    the dataset's own split (``given``) where it has one and ``eval.use_given_split`` is on, else
    crossrec's ``evaluation`` split."""
    target = config.split.target_domain or default_target_domain(interactions)
    if config.eval.use_given_split and has_given_split(interactions):
        frame = given_split(interactions, cold_start_fraction=config.eval.given_cold_start_fraction,
                            seed=config.split.seed)
        return frame, target, "given"
    return evaluation_split(interactions, target_domain=target, cold_start_fraction=config.split.holdout_fraction,
                            new_item_fraction=config.split.holdout_fraction / 2, seed=config.split.seed), \
        target, "evaluation"


def query_sets(split_name: str, frame: pd.DataFrame, train: pd.DataFrame, catalogue: Catalogue,
               history_length: int) -> list[QuerySet]:
    """One query set per slice of the ``split_name`` rows. A query's history is what training
    knows of its user before the target; what the evaluator excludes is exactly that history."""
    held = frame[frame[schema.SPLIT] == split_name]
    sets = []
    for slice_name in sorted(held[SLICE].unique()):
        targets = held[held[SLICE] == slice_name]
        examples = query_examples(train, targets, catalogue, history_length)
        sets.append(QuerySet(slice_name, examples, seen_rows(train, examples.user_id, catalogue)))
    return sets


def prepare_data(config: Config, dataset: Dataset | None = None) -> ExperimentData:
    dataset = (dataset or load_dataset(config.data)).clean()
    frame, target, kind = split_for_evaluation(dataset.interactions, config)
    train = frame[frame[schema.SPLIT] == schema.TRAIN].reset_index(drop=True)
    if train.empty:
        raise ConfigError("the split left no training interactions")
    catalogue = Catalogue.build(dataset.items, train[schema.DOMAIN].unique())
    h = config.towers.history_length
    examples = training_examples(train, catalogue, h, config.train.domain_weights)
    return ExperimentData(frame, catalogue, train, examples,
                         query_sets(schema.VALIDATION, frame, train, catalogue, h),
                         query_sets(schema.TEST, frame, train, catalogue, h), target, dataset, kind)



def data_fingerprint(frame: pd.DataFrame) -> str:
    hashed = pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]
