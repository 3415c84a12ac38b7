"""A data set's profile, and how far another one has drifted from it.

The export records the training data's profile in every version's metadata (no user id, no
history: counts and shares only), the server exposes it beside the live traffic's counts
(``serving.answer_metrics``), and ``crossrec monitor --data NEW`` compares a new interactions
table with it. Each part of a profile is a distribution over fixed bins, so two profiles compare
bin by bin:

- ``domain_shares``: the share of interactions in each domain;
- ``history_length``: the share of users by their number of interactions (bins of ``LENGTH_BINS``);
- ``item_popularity``: the share of interactions by their item's number of training interactions
  (bins of ``POPULARITY_BINS``; 0 = an item training never saw): traffic that moves to rarely
  trained or unknown items moves it;
- ``text_share``: the share of items with non-empty text (a number, not a distribution).

Drift per part is the population stability index, PSI = sum((p - q) ln(p / q)) over bins, with
each share floored at ``EPSILON`` (a bin empty on one side would be infinite). Rules of thumb:
under 0.1 no shift, 0.1-0.25 a moderate one, above 0.25 a large one (``DRIFT_THRESHOLD``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from crossrec import schema

LENGTH_BINS = (1, 2, 4, 8, 16, 32, 64, 128)  # upper bounds (inclusive); one more bin above the last
POPULARITY_BINS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
EPSILON = 1e-4
DRIFT_THRESHOLD = 0.25
PARTS = ("domain_shares", "history_length", "item_popularity")


def _binned(values: np.ndarray, bounds: tuple[int, ...]) -> dict[str, float]:
    """Shares of ``values`` in the bins ``<= bounds[0]``, ..., ``> bounds[-1]``, keyed by the bin's
    label (``"<=4"``, ``">128"``)."""
    labels = [f"<={b}" for b in bounds] + [f">{bounds[-1]}"]
    if len(values) == 0:
        return dict.fromkeys(labels, 0.0)
    counts = np.bincount(np.searchsorted(np.asarray(bounds), values, side="left"), minlength=len(labels))
    return {label: float(c) / len(values) for label, c in zip(labels, counts, strict=True)}


def _keys(frame: pd.DataFrame) -> pd.Series:
    return frame[schema.DOMAIN].astype(str) + "\x1f" + frame[schema.ITEM_ID].astype(str)


def profile(interactions: pd.DataFrame, items: pd.DataFrame | None = None, *,
            training: pd.DataFrame | None = None) -> dict:
    """The profile of an interactions table (and its items table, for ``text_share``). Given the
    ``training`` interactions, a new table is profiled as the served model meets it: each
    interaction's item popularity is its item's count in training, and each user's history length
    counts the user's training interactions too (a row in both tables once)."""
    n = len(interactions)
    domains = interactions[schema.DOMAIN].value_counts(sort=False)
    if training is None:
        training, histories = interactions, interactions
    else:
        columns = [schema.USER_ID, schema.ITEM_ID, schema.DOMAIN] + [
            c for c in ("timestamp", "seq_pos") if c in training and c in interactions]
        histories = pd.concat([training[columns], interactions[columns]], ignore_index=True).drop_duplicates()
        histories = histories[histories[schema.USER_ID].isin(set(interactions[schema.USER_ID]))]
    per_user = histories.groupby(schema.USER_ID, sort=False).size().to_numpy()
    counts = _keys(training).value_counts()
    popularity = _keys(interactions).map(counts).fillna(0).to_numpy()
    result = {"interactions": int(n), "users": int(len(per_user)),
              "domain_shares": {str(d): float(c) / max(n, 1) for d, c in sorted(domains.items())},
              "history_length": _binned(per_user, LENGTH_BINS),
              "item_popularity": _binned(popularity, POPULARITY_BINS)}
    if items is not None and schema.TEXT in items:
        text = items[schema.TEXT].fillna("").astype(str).str.strip()
        result["text_share"] = float((text != "").mean()) if len(text) else 0.0
    return result


def psi(reference: dict[str, float], current: dict[str, float]) -> float:
    """Population stability index between two distributions over the same (or overlapping) bins."""
    total = 0.0
    for key in set(reference) | set(current):
        p, q = max(current.get(key, 0.0), EPSILON), max(reference.get(key, 0.0), EPSILON)
        total += (p - q) * math.log(p / q)
    return total


def drift(reference: dict, current: dict) -> dict[str, float]:
    """PSI of each distribution of ``current`` against ``reference``, and the change of
    ``text_share`` where both have one."""
    report = {part: round(psi(reference[part], current[part]), 4) for part in PARTS
              if part in reference and part in current}
    if "text_share" in reference and "text_share" in current:
        report["text_share_change"] = round(current["text_share"] - reference["text_share"], 4)
    return report


def unknown_share(interactions: pd.DataFrame, known: pd.DataFrame) -> float:
    """The share of ``interactions`` whose (domain, item_id) is not among ``known``'s."""
    if not len(interactions):
        return 0.0
    return float((~_keys(interactions).isin(set(_keys(known)))).mean())
