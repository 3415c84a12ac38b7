"""The per-item tables the ranker reads, and the views it trains and serves on.

``FeatureTables`` holds everything ``RankingFeatures`` looks up per item row: the towers' item
embeddings and text-alone vectors, domain, interaction count, ratings, when the item was first
seen, and the candidate sources' neighbour tables. They live in the ranker as non-trainable
weights, so a saved ranker (and the ``recommender`` SavedModel) carries them.

Two views of the same catalogue:
- ``serving``: built from every training interaction; what evaluation and serving use.
- ``label``: built from the training interactions *before* the ranker's label interactions
  (each training user's last ``ranking.label_tail`` interactions). The ranker's training lists
  ask for those held-out interactions, so no count, co-visitation or propagation weight it reads
  contains the very interaction it is the label of; and an item whose training interactions are
  all held out is *new* in this view (count 0, never seen, reached by no source, and embedded by
  its text alone, as the towers embed a new item). So are a seeded share of all items
  (``ranking.fresh_item_share``), every interaction of theirs held out: on data where items
  have many interactions hardly any item is new by the tail alone, and a ranker that never saw
  a new item win learns to bury them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from crossrec import schema
from crossrec.features import Catalogue, in_user_order
from ranking.sources import NeighbourTable, build_sources


@dataclass
class FeatureTables:
    item_embeddings: np.ndarray  # (size, e) the towers' item vectors
    item_domain: np.ndarray  # (size,) int32 model domain index
    num_domains: int
    popularity: np.ndarray  # (size,) training interactions per item row
    text_vectors: np.ndarray | None = None  # (size, e) the towers' text-alone item vectors (None: no text)
    first_seen: np.ndarray | None = None  # (size,) share of training time before the item's first interaction
    rating_mean: float | None = None  # None: the data has no ratings
    rating_sum: np.ndarray | None = None  # (size,) sum and count of training ratings per item row
    rating_count: np.ndarray | None = None
    sources: list[NeighbourTable] = field(default_factory=list)
    placeholder: bool = False  # ``empty``: shapes only, the values are loaded after

    @property
    def size(self) -> int:
        return len(self.item_embeddings)

    def weights(self) -> dict[str, np.ndarray]:
        """The arrays ``RankingFeatures`` stores, by weight name (shapes fixed by the catalogue)."""
        zeros = np.zeros(self.size, np.float32)
        if self.text_vectors is not None:
            text = self.text_vectors
        elif self.placeholder:  # zeros of the same shape
            text = self.item_embeddings
        else:
            text = _unit(self.item_embeddings)
        first_seen = self.first_seen if self.first_seen is not None else np.where(self.popularity > 0, 0.0, 1.0)
        def f32(x):
            return x.astype(np.float32, copy=False)

        out = {"item_embeddings": f32(self.item_embeddings), "item_domain": self.item_domain,
               "popularity": f32(self.popularity), "text_vectors": f32(text), "first_seen": f32(first_seen),
               "rating_sum": zeros if self.rating_sum is None else f32(self.rating_sum),
               "rating_count": zeros if self.rating_count is None else f32(self.rating_count)}
        for table in self.sources:
            out[f"{table.name}_neighbours"] = table.neighbours
            out[f"{table.name}_weights"] = table.weights
        return out

    @classmethod
    def empty(cls, size: int, dim: int, num_domains: int, rating_mean: float | None,
              sources: list[tuple[str, int, float]]) -> FeatureTables:
        """Zero tables of the right shapes (``load_ranking`` then restores the saved values);
        ``sources``: (name, width, position decay) of each neighbour table."""
        return cls(np.zeros((size, dim), np.float32), np.zeros(size, np.int32), num_domains,
                   np.zeros(size, np.float32), rating_mean=rating_mean,
                   sources=[NeighbourTable(n, np.zeros((size, w), np.int32), np.zeros((size, w), np.float32), d)
                            for n, w, d in sources], placeholder=True)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def first_seen(interactions: pd.DataFrame, catalogue: Catalogue) -> np.ndarray | None:
    """(size,) the share of training interactions (in time) before each item's first one; 1.0 for
    an item never seen. None without timestamps (a per-user position orders nothing across users)."""
    if schema.TIMESTAMP not in interactions.columns or interactions.empty:
        return None
    time = pd.to_numeric(interactions[schema.TIMESTAMP], errors="coerce").to_numpy(np.float64)
    rows = catalogue.rows(interactions[schema.DOMAIN], interactions[schema.ITEM_ID])
    rank = pd.Series(time).rank(method="min").to_numpy() - 1.0
    share = np.ones(catalogue.size, np.float64)
    np.minimum.at(share, rows, rank / max(len(time), 1))
    share[0] = 1.0
    return share.astype(np.float32)


def label_tail(train: pd.DataFrame, tail: int) -> np.ndarray:
    """Boolean mask over ``train``: each user's last ``tail`` interactions (users with more than
    ``tail`` of them only: a label needs a history)."""
    frame = in_user_order(train)
    from_end = frame.groupby(schema.USER_ID, sort=False).cumcount(ascending=False).to_numpy()
    size = frame.groupby(schema.USER_ID, sort=False)[schema.USER_ID].transform("size").to_numpy()
    mask = pd.Series((from_end < tail) & (size > tail), index=frame.index)
    return mask.reindex(train.index).to_numpy()


def build_tables(interactions: pd.DataFrame, catalogue: Catalogue, item_embeddings: np.ndarray,
                 text_vectors: np.ndarray | None, *, sources=(), per_domain: int = 30,
                 rating_mean: float | None = None) -> FeatureTables:
    """The tables of one view: counts, ratings, first-seen times and sources from ``interactions``."""
    rows = catalogue.rows(interactions[schema.DOMAIN], interactions[schema.ITEM_ID])
    counts = np.bincount(rows, minlength=catalogue.size).astype(np.float32)
    counts[0] = 0.0
    rating_sum = rating_count = None
    if rating_mean is not None and schema.RATING in interactions:
        values = pd.to_numeric(interactions[schema.RATING], errors="coerce").to_numpy(np.float64)
        known = ~np.isnan(values)
        rating_sum = np.bincount(rows[known], weights=values[known], minlength=catalogue.size).astype(np.float32)
        rating_count = np.bincount(rows[known], minlength=catalogue.size).astype(np.float32)
    return FeatureTables(item_embeddings, catalogue.item_domain, len(catalogue.domains), counts,
                         text_vectors, first_seen(interactions, catalogue),
                         rating_mean, rating_sum, rating_count,
                         build_sources(interactions, catalogue, sources, per_domain=per_domain) if sources else [])


def fresh_items(interactions: pd.DataFrame, catalogue: Catalogue, share: float, seed: int = 0) -> np.ndarray:
    """(size,) bool: a seeded ``share`` of the items with interactions, to be made new in the label view."""
    rows = np.unique(catalogue.rows(interactions[schema.DOMAIN], interactions[schema.ITEM_ID]))
    rows = rows[rows > 0]
    chosen = np.random.default_rng(seed).choice(rows, int(round(share * len(rows))), replace=False)
    mask = np.zeros(catalogue.size, bool)
    mask[chosen] = True
    return mask


def label_view(serving: FeatureTables, before: pd.DataFrame, catalogue: Catalogue,
               fresh: np.ndarray | None = None) -> FeatureTables:
    """The ``label`` view: the serving view's tables rebuilt from ``before`` (the training
    interactions without the label tail), less every interaction of the ``fresh`` item rows;
    items absent from what is left take their text-alone vector as their item embedding, as a
    new item does."""
    if fresh is not None and fresh.any():
        rows = catalogue.rows(before[schema.DOMAIN], before[schema.ITEM_ID])
        before = before[~fresh[rows]]
    names = [t.name for t in serving.sources]
    per_domain = serving.sources[0].neighbours.shape[1] // max(len(catalogue.domain_names), 1) if names else 30
    view = build_tables(before, catalogue, serving.item_embeddings, serving.text_vectors, sources=names,
                        per_domain=per_domain, rating_mean=serving.rating_mean)
    fresh = (view.popularity == 0) & (serving.popularity > 0)
    embeddings = serving.item_embeddings
    if serving.text_vectors is not None:
        embeddings = np.where(fresh[:, None], serving.text_vectors, embeddings).astype(np.float32)
    return replace(view, item_embeddings=embeddings)
