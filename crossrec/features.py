"""From canonical tables to the arrays the towers read.

- ``Catalogue``: every item gets a row index (0 is padding) and a domain index. Domain index 0 is
  "unseen": a domain with no training interactions goes through the domain-agnostic path.
- ``Examples``: one per target interaction. ``history`` holds the item rows of the user's
  interactions before it, over all domains, right-aligned (the most recent in the last column,
  0 = padding); ``target_domain`` says which domain the query asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from crossrec import schema

UNSEEN_DOMAIN = "<unseen>"


@dataclass
class Catalogue:
    """Items with their row indices (1..n) and the model's domain vocabulary."""

    items: pd.DataFrame  # item_id, domain, text, row, domain_index (and retired); sorted by row
    domains: list[str]  # index 0 = UNSEEN_DOMAIN, then the domains the model was trained on

    @classmethod
    def build(cls, items: pd.DataFrame, trained_domains) -> Catalogue:
        columns = [schema.ITEM_ID, schema.DOMAIN, schema.TEXT] + ([schema.RETIRED] if schema.RETIRED in items else [])
        items = items[columns].sort_values(list(schema.ITEM_KEY)).reset_index(drop=True)
        domains = [UNSEEN_DOMAIN] + sorted(set(trained_domains))
        index = {d: i for i, d in enumerate(domains)}
        items["row"] = np.arange(1, len(items) + 1, dtype=np.int32)
        items["domain_index"] = items[schema.DOMAIN].map(index).fillna(0).astype(np.int32)
        return cls(items, domains)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def size(self) -> int:
        """Rows including padding row 0."""
        return len(self.items) + 1

    def rows(self, domains, item_ids) -> np.ndarray:
        """(domain, item_id) pairs -> item rows; unknown items -> 0."""
        key = pd.MultiIndex.from_arrays([np.asarray(domains, dtype=object), np.asarray(item_ids, dtype=object)])
        lookup = pd.Series(self.items["row"].to_numpy(),
                           index=pd.MultiIndex.from_frame(self.items[list(schema.ITEM_KEY)]))
        return lookup.reindex(key).fillna(0).to_numpy(dtype=np.int32)

    def domain_index(self, domain: str) -> int:
        return self.domains.index(domain) if domain in self.domains else 0

    @property
    def item_domain(self) -> np.ndarray:
        """(size,) domain index per row; row 0 -> 0."""
        return np.concatenate([[0], self.items["domain_index"].to_numpy()]).astype(np.int32)

    @property
    def item_domain_name(self) -> np.ndarray:
        return np.concatenate([[UNSEEN_DOMAIN], self.items[schema.DOMAIN].to_numpy()]).astype(object)

    @property
    def domain_names(self) -> list[str]:
        """Every domain of the catalogue (trained or not), sorted."""
        return sorted(self.items[schema.DOMAIN].unique())

    @property
    def text_domain(self) -> np.ndarray:
        """(size,) index into ``domain_names`` per row (row 0 -> 0); used for text centring."""
        index = {d: i for i, d in enumerate(self.domain_names)}
        return np.concatenate([[0], self.items[schema.DOMAIN].map(index).to_numpy()]).astype(np.int32)

    @property
    def retired(self) -> np.ndarray:
        """(size,) bool: the row's item was retired (``crossrec catalogue retire``); row 0 -> False."""
        flags = (self.items[schema.RETIRED].fillna(False).astype(bool).to_numpy() if schema.RETIRED in self.items
                 else np.zeros(len(self.items), bool))
        return np.concatenate([[False], flags])

    @property
    def served_domain(self) -> np.ndarray:
        """(size,) 1-based index into ``domain_names`` per row (row 0 and retired items -> 0): how
        an export partitions its index, so a domain without training data is still searchable by
        name, and a retired item is in no partition (never recommended, still known in histories)."""
        served = np.concatenate([[0], self.text_domain[1:] + 1]).astype(np.int32)
        return np.where(self.retired, 0, served).astype(np.int32)

    @property
    def zero_shot_domains(self) -> list[str]:
        """Catalogue domains the towers were not trained on: served through the agnostic path."""
        return [d for d in self.domain_names if d not in self.domains]

    def text_means(self, table: np.ndarray) -> np.ndarray:
        """(len(domain_names), dim) mean text vector of each domain's items (row 0 of ``table`` is padding)."""
        domain = self.text_domain[1:]
        means = np.zeros((len(self.domain_names), table.shape[1]), np.float32)
        for i in range(len(means)):
            means[i] = table[1:][domain == i].mean(axis=0)
        return means

    def frequencies(self, interactions: pd.DataFrame) -> np.ndarray:
        """(size,) share of ``interactions`` per item row (for logQ correction)."""
        counts = np.bincount(self.rows(interactions[schema.DOMAIN], interactions[schema.ITEM_ID]),
                             minlength=self.size).astype(np.float64)
        counts = counts + 1.0  # unseen items still have a small sampling probability
        counts[0] = 0.0  # padding
        return (counts / counts.sum()).astype(np.float32)


@dataclass
class Examples:
    history: np.ndarray  # (n, H) int32 item rows, right-aligned, 0 = padding
    target: np.ndarray  # (n,) int32 item row (0 = unknown item)
    target_domain: np.ndarray  # (n,) int32 domain index (0 = unseen domain)
    user_id: np.ndarray  # (n,) object
    weight: np.ndarray  # (n,) float32
    rating: np.ndarray | None = None  # (n,) float32 rating of the target interaction (NaN = none)

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, mask: np.ndarray) -> Examples:
        return Examples(self.history[mask], self.target[mask], self.target_domain[mask], self.user_id[mask],
                        self.weight[mask], None if self.rating is None else self.rating[mask])

    def features(self) -> dict[str, np.ndarray]:
        return {"history": self.history, "target_domain": self.target_domain,
                "user_id": self.user_id.astype(str)}


def in_user_order(interactions: pd.DataFrame) -> pd.DataFrame:
    """Interactions sorted by user, then by the order column, then by input order (stable)."""
    order = schema.order_column(interactions.columns)
    frame = interactions.copy()
    frame["_input_order"] = np.arange(len(frame))
    return frame.sort_values([schema.USER_ID, order, "_input_order"], kind="stable")


def ratings_column(frame: pd.DataFrame) -> np.ndarray | None:
    if schema.RATING not in frame.columns:
        return None
    return pd.to_numeric(frame[schema.RATING], errors="coerce").to_numpy(np.float32)


def keep_right_aligned(history: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Each history row reduced to its ``keep`` entries, in their order, right-aligned (padding 0 on
    the left), the layout every model reads."""
    order = np.argsort(keep, axis=1, kind="stable")  # dropped slots first, kept ones after, in order
    return np.take_along_axis(np.where(keep, history, 0), order, axis=1).astype(history.dtype)


def _right_aligned(rows: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros(length, np.int32)
    tail = rows[-length:]
    if len(tail):
        out[length - len(tail):] = tail
    return out


def query_examples(known: pd.DataFrame, targets: pd.DataFrame, catalogue: Catalogue,
                   history_length: int) -> Examples:
    """Evaluation queries: one per target row; its history is the user's ``known`` interactions
    strictly before the target (by the order column), over all domains."""
    order = schema.order_column(targets.columns)
    known = in_user_order(known)
    known_rows = catalogue.rows(known[schema.DOMAIN], known[schema.ITEM_ID])
    by_user: dict = {}
    for user, group_index in known.groupby(schema.USER_ID, sort=False).indices.items():
        by_user[user] = (known[order].to_numpy()[group_index], known_rows[group_index])
    target_rows = catalogue.rows(targets[schema.DOMAIN], targets[schema.ITEM_ID])
    history = np.zeros((len(targets), history_length), np.int32)
    for i, (user, when) in enumerate(zip(targets[schema.USER_ID], targets[order], strict=True)):
        if user in by_user:
            times, rows = by_user[user]
            history[i] = _right_aligned(rows[times < when], history_length)
    domain_index = {d: i for i, d in enumerate(catalogue.domains)}
    return Examples(history, target_rows,
                    np.array([domain_index.get(d, 0) for d in targets[schema.DOMAIN]], np.int32),
                    targets[schema.USER_ID].to_numpy(), np.ones(len(targets), np.float32), ratings_column(targets))


def concat_examples(parts: list[Examples]) -> Examples:
    ratings = [p.rating for p in parts]
    return Examples(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                      ("history", "target", "target_domain", "user_id", "weight")),
                    None if any(r is None for r in ratings) else np.concatenate(ratings))
