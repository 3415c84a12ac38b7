"""The ``ranking`` section of the typed configuration: the ranker, its student, its candidate
sources and how its training lists are built (``crossrec.config`` holds the whole ``Config``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from crossrec.errors import ConfigError
from crossrec.ranking_features import (
    CANDIDATE_SOURCES,
    RANKING_FEATURES,
    check_features,
    default_features,
)

DEFAULT_STUDENT_FEATURES = tuple(default_features(CANDIDATE_SOURCES, student=True))
RANKING_TASKS = ("engagement", "rating")
__all__ = ["CANDIDATE_SOURCES", "DEFAULT_STUDENT_FEATURES", "RANKING_FEATURES", "RANKING_TASKS", "RankerConfig",
           "RankingConfig"]


@dataclass
class RankerConfig:
    """One ranking network (``ranking.model``): DCN-v2 cross layers, then a deep stack."""

    # DCN-v2 cross layers.
    cross_layers: int = 2
    # Rank of the low-rank cross layers (W = U V); null = full-rank cross layers.
    cross_projection_dim: int | None = None
    # Widths of the deep ReLU layers.
    deep_layers: list[int] = field(default_factory=lambda: [256, 128])
    # Dropout in the deep layers.
    dropout: float = 0.1
    # Its inputs (see ranking.features); null = ranking.features.
    features: list[str] | None = None

    def __post_init__(self):
        check_features(self.features or list(RANKING_FEATURES), "features")


@dataclass
class RankingConfig:
    """The ranking model that reorders retrieved candidates (``ranking``)."""

    # Candidates per query: the retrieval model's top-K in the target domain (training lists
    # also always hold the true next item).
    candidates: int = 50
    # Candidate sources merged with the towers' top-K (ranking.sources): co_visitation (items
    # that follow one another in users' sequences), propagation (a random walk item -> users
    # -> items: what users like this one have) and item_knn (items whose users overlap, cosine:
    # on Amazon Arts/Office served cold start +8%, warm +2%, both outside the noise; the built-in
    # data -1%, inside it). [] = the towers' list alone.
    sources: list[str] = field(default_factory=lambda: list(CANDIDATE_SOURCES))
    # Candidates each source adds (before duplicates of the towers' list are dropped).
    source_candidates: int = 25
    # Neighbours each item keeps per domain in a source's table.
    source_neighbours: int = 30
    # The ranker trains on each training user's last `label_tail` interactions, with every table
    # it reads (counts, sources, first-seen times) built from the interactions before them, so
    # no feature contains its own label and items seen only in the tail look new (ranking.tables).
    # 0 = random training examples with only the label's own count left out.
    label_tail: int = 5
    # Share of the items made new in that view (every interaction of theirs left out of the
    # tables, their towers' vector from text alone), so the ranker learns what a fresh item that
    # wins looks like instead of burying every item without a count.
    fresh_item_share: float = 0.1
    # Weigh the training lists so that a new item is as likely to be the label as any other
    # candidate (ranking.fit.fresh_parity_weights): "new" then carries no penalty of its own.
    fresh_parity: bool = True
    # The served order (ranking.policy): retrieval_rank = a new item (no training interaction)
    # keeps the place the towers' score gives it in the list and the ranker orders the rest;
    # ranker = the ranker orders everything.
    new_items: Literal["retrieval_rank", "ranker"] = "retrieval_rank"
    # Weight of log(1 + training interactions) added to the ranker's score of each candidate in the
    # served order of a cross-domain cold-start query (no history in the target domain), where the
    # ranker, trained mostly on users it knows in the domain, under-weights what is popular in it
    # (ranking.policy); auto = chosen on the validation cold-start lists (ranking.prior; 0 unless
    # a weight wins there: Amazon Arts/Office served cold start +14%, built-in 4x unchanged); 0 = off.
    cold_start_popularity: float | Literal["auto"] = "auto"
    # Extra random items of the target domain per training list (0 = only retrieval's hard negatives).
    random_negatives: int = 0
    # Share of the training queries asked a second time as a cross-domain cold start (their
    # history's items of the target's domain removed, where other domains remain), so the ranker
    # sees lists of users new to a domain (ranking.mining.cold_start_copies). Measured on Amazon
    # Arts/Office, all users: served NDCG@10 cold start +8%, warm +3% (both paired intervals
    # above 0); the built-in data: unchanged. 0 = off (the ranker then trains 1/3 faster).
    cold_start_lists: float = 0.5
    # Training queries to mine lists for (a seeded random sample; null = every training example).
    max_queries: int | None = 50000
    # Inputs of the ranker: names from the feature registry (crossrec.ranking_features; the
    # docs' ranking features reference). null = the registry's defaults of the sources that are on.
    features: list[str] | None = None
    # Loss weight per task: engagement (was this the next item) always; rating when the data has
    # ratings (trained on the true items' ratings).
    task_weights: dict[str, float] = field(default_factory=lambda: {"engagement": 1.0, "rating": 0.1})
    # The engagement logit = retrieval score / train.temperature + the network's correction, which
    # starts at zero: training begins from the retrieval order (false = the network alone).
    residual_on_retrieval: bool = True
    teacher: RankerConfig = field(default_factory=RankerConfig)
    # The distilled student: trained on the labels and on the teacher's scores, for cheaper serving.
    # By default it reads only the per-candidate scalars (no embedding vectors), which makes it
    # several times cheaper to score.
    student: RankerConfig = field(default_factory=lambda: RankerConfig(
        cross_layers=1, cross_projection_dim=4, deep_layers=[32], dropout=0.0,
        features=list(DEFAULT_STUDENT_FEATURES)))
    # Train the student distilled from the teacher.
    distill: bool = True
    # Student loss = (1 - w) * label loss + w * listwise loss against the teacher's scores.
    distillation_weight: float = 0.9
    # Maximum epochs of each ranker.
    epochs: int = 8
    # Candidate lists per batch.
    batch_size: int = 128
    # Adam's learning rate.
    learning_rate: float = 0.001
    # Epochs without a better validation NDCG@10 before training stops.
    early_stopping_patience: int = 2
    # Random seed of the rankers' training.
    seed: int = 0

    def __post_init__(self):
        if self.features is None:
            self.features = default_features(self.sources)
        if self.student.features == list(DEFAULT_STUDENT_FEATURES):
            self.student = replace(self.student, features=default_features(self.sources, student=True))
        check_features(self.features, "ranking.features")
        tasks = [t for t in self.task_weights if t not in RANKING_TASKS]
        if tasks:
            raise ConfigError(f"ranking.task_weights: unknown task {', '.join(map(repr, tasks))}; "
                              f"tasks are {', '.join(RANKING_TASKS)}")
        if self.candidates < 1:
            raise ConfigError(f"ranking.candidates: expected at least 1, got {self.candidates}")
        unknown = [s for s in self.sources if s not in CANDIDATE_SOURCES]
        if unknown:
            raise ConfigError(f"ranking.sources: unknown {', '.join(map(repr, unknown))}; choose from "
                              f"{', '.join(CANDIDATE_SOURCES)}")
        if not 0.0 <= self.fresh_item_share < 1.0:
            raise ConfigError(f"ranking.fresh_item_share: expected a share in [0, 1), got {self.fresh_item_share}")
        if not 0.0 <= self.cold_start_lists <= 1.0:
            raise ConfigError(f"ranking.cold_start_lists: expected a share in [0, 1], got {self.cold_start_lists}")
        for name in ("source_candidates", "source_neighbours", "label_tail"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ranking.{name}: expected 0 or more, got {getattr(self, name)}")
        check_features(self.features, "ranking.features", self.sources)
        if self.student.features:
            check_features(self.student.features, "ranking.student.features", self.sources)
