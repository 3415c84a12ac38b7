"""Training windows stored compactly: one example per target interaction, its history built when read.

A window example's history is the up to H item rows before its target in the user's sequence
(over all domains, right-aligned, 0 = padding). Stored as an (examples, H) array that costs
interactions x H integers (3.8M interactions x 32 = 490 MB, and as much again in the tensors
``tf.data`` gathers from); stored as the flat sequence of every training interaction's row
plus each example's target position it costs a few numbers per interaction, and the input
pipeline builds each batch's histories with one gather (``towers.inputs.make_dataset``).
``Windows.history`` still materialises them for small readers (tests, subsets).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from crossrec import schema
from crossrec.features import Catalogue, Examples, in_user_order, ratings_column


def window_histories(rows, position, user_start, history_length: int):
    """(n, H) histories: the rows before ``position`` that are at or after ``user_start``.
    NumPy arrays in, NumPy out; the same formula runs on tensors in the input pipeline."""
    offsets = position[:, None] - history_length + np.arange(history_length)
    return np.where(offsets >= user_start[:, None], rows[np.maximum(offsets, 0)], 0).astype(np.int32)


@dataclass
class Windows:
    """Every training interaction but each user's first, as an example: read like ``Examples``."""

    rows: np.ndarray  # (N,) int32 item row of every training interaction, users contiguous, in order
    position: np.ndarray  # (n,) int32 index into ``rows`` of each example's target
    user_start: np.ndarray  # (n,) int32 index into ``rows`` of its user's first interaction
    target_domain: np.ndarray  # (n,) int32 domain index (0 = unseen domain)
    user_id: np.ndarray  # (n,) object
    weight: np.ndarray  # (n,) float32
    history_length: int
    rating: np.ndarray | None = None  # (n,) float32 (NaN = none)

    def __len__(self) -> int:
        return len(self.position)

    @property
    def target(self) -> np.ndarray:
        return self.rows[self.position]

    @property
    def history(self) -> np.ndarray:
        """(n, H): materialised on each read; training never reads it."""
        return window_histories(self.rows, self.position, self.user_start, self.history_length)

    def subset(self, mask: np.ndarray) -> Examples:
        position, start = self.position[mask], self.user_start[mask]
        return Examples(window_histories(self.rows, position, start, self.history_length), self.rows[position],
                        self.target_domain[mask], self.user_id[mask], self.weight[mask],
                        None if self.rating is None else self.rating[mask])

    def features(self) -> dict[str, np.ndarray]:
        return {"history": self.history, "target_domain": self.target_domain, "user_id": self.user_id.astype(str)}


def training_examples(interactions: pd.DataFrame, catalogue: Catalogue, history_length: int,
                      domain_weights: dict[str, float] | None = None) -> Windows:
    """Every interaction with at least one earlier interaction of its user becomes a target."""
    frame = in_user_order(interactions)
    rows = catalogue.rows(frame[schema.DOMAIN], frame[schema.ITEM_ID])
    users = frame[schema.USER_ID].to_numpy()
    first = np.r_[True, users[1:] != users[:-1]] if len(users) else np.zeros(0, bool)
    start = np.maximum.accumulate(np.where(first, np.arange(len(users)), 0)) if len(users) else np.zeros(0, int)
    take = np.flatnonzero(~first)
    domains = frame[schema.DOMAIN]
    weights = frame[schema.WEIGHT].to_numpy(np.float32) if schema.WEIGHT in frame else np.ones(len(frame), np.float32)
    if domain_weights:
        weights = weights * domains.map(domain_weights).fillna(1.0).to_numpy(np.float32)
    domain_index = domains.map({d: i for i, d in enumerate(catalogue.domains)}).fillna(0).to_numpy(np.int32)
    ratings = ratings_column(frame)
    return Windows(rows.astype(np.int32), take.astype(np.int32), start[take].astype(np.int32), domain_index[take],
                   users[take], weights[take], history_length, None if ratings is None else ratings[take])
