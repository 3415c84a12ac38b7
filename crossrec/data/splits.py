"""Deterministic train / validation / test splits without leakage.

Each splitter returns the interactions with a ``split`` column (``train`` / ``validation`` /
``test``); the same data and seed always give the same split.

- ``leave_last_out``: per user *and domain*, the last interaction is test and the one before it
  validation (by the order column; ties broken by input order). A (user, domain) history of
  fewer than 3 interactions stays in train whole: it would otherwise lose its only examples.
- ``cold_start``: cross-domain cold start. A share of the users who have interactions in the
  target domain *and* elsewhere lose all their target-domain interactions to validation / test;
  their other domains stay in train, so the model must transfer. Everyone else is train.
- ``new_item``: a share of each domain's items is new: every interaction with them goes to
  validation / test, so they never appear in training (they can only be found from their text).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from crossrec import schema
from crossrec.config import SplitConfig
from crossrec.errors import ConfigError


def split(interactions: pd.DataFrame, config: SplitConfig) -> pd.DataFrame:
    """Dispatches on ``config.kind``."""
    if config.kind == "leave_last_out":
        return leave_last_out(interactions)
    if config.kind == "cold_start":
        return cold_start(interactions, target_domain=config.target_domain,
                          fraction=config.holdout_fraction, validation_fraction=config.validation_fraction,
                          seed=config.seed)
    if config.kind == "new_item":
        return new_item(interactions, fraction=config.holdout_fraction,
                        validation_fraction=config.validation_fraction, seed=config.seed)
    raise ConfigError(f"split.kind: unknown kind {config.kind!r}")


def _check_fractions(fraction: float, validation_fraction: float) -> None:
    if not 0 < fraction < 1:
        raise ConfigError(f"split.holdout_fraction must be between 0 and 1 (exclusive), got {fraction}")
    if not 0 <= validation_fraction < 1:
        raise ConfigError(f"split.validation_fraction must be in [0, 1), got {validation_fraction}")


def _ordered(interactions: pd.DataFrame) -> pd.DataFrame:
    order = schema.order_column(interactions.columns)
    out = interactions.copy()
    out["_input_order"] = np.arange(len(out))
    return out.sort_values([schema.USER_ID, schema.DOMAIN, order, "_input_order"], kind="stable")


def leave_last_out(interactions: pd.DataFrame) -> pd.DataFrame:
    ordered = _ordered(interactions)
    group = ordered.groupby([schema.USER_ID, schema.DOMAIN], sort=False)
    from_end = group.cumcount(ascending=False)  # 0 = last
    size = group[schema.ITEM_ID].transform("size")
    labels = np.where((size >= 3) & (from_end == 0), schema.TEST,
                      np.where((size >= 3) & (from_end == 1), schema.VALIDATION, schema.TRAIN))
    ordered[schema.SPLIT] = labels
    return ordered.sort_values("_input_order").drop(columns="_input_order").reset_index(drop=True)


def _assign_holdout(keys: np.ndarray, validation_fraction: float, rng: np.random.Generator) -> dict:
    keys = rng.permutation(keys)
    n_valid = int(round(len(keys) * validation_fraction))
    return {k: (schema.VALIDATION if i < n_valid else schema.TEST) for i, k in enumerate(keys)}


def cold_start(interactions: pd.DataFrame, *, target_domain: str | None, fraction: float = 0.2,
               validation_fraction: float = 0.5, seed: int = 0) -> pd.DataFrame:
    _check_fractions(fraction, validation_fraction)
    domains = sorted(interactions[schema.DOMAIN].unique())
    if target_domain is None:
        raise ConfigError(f"split.target_domain is required for a cold_start split (domains: {', '.join(domains)})")
    if target_domain not in domains:
        raise ConfigError(f"split.target_domain: no interactions in domain {target_domain!r} "
                          f"(domains: {', '.join(domains)})")
    in_target = interactions[schema.DOMAIN] == target_domain
    users_target = set(interactions.loc[in_target, schema.USER_ID])
    users_other = set(interactions.loc[~in_target, schema.USER_ID])
    eligible = np.array(sorted(users_target & users_other))
    if len(eligible) == 0:
        raise ConfigError(f"split: no user has interactions both in {target_domain!r} and in another domain, "
                          "so there is nobody to hold out for a cross-domain cold-start split")
    rng = np.random.default_rng(seed)
    n_hold = max(1, int(round(len(eligible) * fraction)))
    held = _assign_holdout(rng.choice(eligible, size=n_hold, replace=False), validation_fraction, rng)
    out = interactions.copy()
    label = out[schema.USER_ID].map(held)
    out[schema.SPLIT] = np.where(in_target & label.notna(), label, schema.TRAIN)
    return out


def new_item(interactions: pd.DataFrame, *, fraction: float = 0.1, validation_fraction: float = 0.5,
             seed: int = 0) -> pd.DataFrame:
    _check_fractions(fraction, validation_fraction)
    rng = np.random.default_rng(seed)
    keys = interactions[[schema.DOMAIN, schema.ITEM_ID]].drop_duplicates().sort_values([schema.DOMAIN, schema.ITEM_ID])
    held: dict = {}
    for _, group in keys.groupby(schema.DOMAIN, sort=True):
        ids = group[schema.ITEM_ID].to_numpy()
        n_hold = int(round(len(ids) * fraction))
        if n_hold == 0 or n_hold == len(ids):
            continue
        chosen = rng.choice(ids, size=n_hold, replace=False)
        domain = group[schema.DOMAIN].iat[0]
        held.update({(domain, k): v for k, v in _assign_holdout(chosen, validation_fraction, rng).items()})
    out = interactions.copy()
    label = pd.Series([held.get(k) for k in zip(out[schema.DOMAIN], out[schema.ITEM_ID], strict=True)],
                      index=out.index, dtype=object)
    out[schema.SPLIT] = label.where(label.notna(), schema.TRAIN)
    return out


def split_counts(interactions: pd.DataFrame) -> pd.DataFrame:
    """Interactions per domain and split, for reports."""
    return (interactions.groupby([schema.DOMAIN, schema.SPLIT]).size()
            .unstack(fill_value=0).reindex(columns=list(schema.SPLITS), fill_value=0))


SLICE = "slice"  # which evaluation slice a held-out row belongs to
WARM, COLD_START, NEW_ITEM, ZERO_SHOT = "warm", "cold_start", "new_item", "zero_shot"


def evaluation_split(interactions: pd.DataFrame, *, target_domain: str, cold_start_fraction: float = 0.2,
                     new_item_fraction: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """One split that serves every slice, so one training run is evaluated on all of them:

    1. ``new_item``: a share of each domain's items never appears in training;
    2. ``cold_start``: a share of the users active in ``target_domain`` and elsewhere lose all their
       target-domain interactions (other than those with new items); skipped for one domain;
    3. ``warm``: leave-last-out per user and domain on what remains.

    Adds ``split`` and ``slice`` columns; train rows have an empty slice.
    """
    out = new_item(interactions, fraction=new_item_fraction, seed=seed)
    out[SLICE] = np.where(out[schema.SPLIT] == schema.TRAIN, "", NEW_ITEM)
    rest = out[schema.SPLIT] == schema.TRAIN
    if out.loc[rest, schema.DOMAIN].nunique() > 1:  # a single-domain dataset has no cross-domain cold start
        cold = cold_start(out[rest], target_domain=target_domain, fraction=cold_start_fraction, seed=seed + 1)
        out.loc[rest, schema.SPLIT] = cold[schema.SPLIT].to_numpy()
        out.loc[rest & (out[schema.SPLIT] != schema.TRAIN), SLICE] = COLD_START
    rest = out[schema.SPLIT] == schema.TRAIN
    warm = leave_last_out(out[rest].drop(columns=[schema.SPLIT, SLICE]))
    out.loc[rest, schema.SPLIT] = warm[schema.SPLIT].to_numpy()
    out.loc[rest & (out[schema.SPLIT] != schema.TRAIN), SLICE] = WARM
    return out


GIVEN_SPLIT_NAMES = {"train": schema.TRAIN, "valid": schema.VALIDATION, "validation": schema.VALIDATION,
                     "val": schema.VALIDATION, "dev": schema.VALIDATION, "test": schema.TEST}


def has_given_split(interactions: pd.DataFrame) -> bool:
    return schema.SPLIT in interactions.columns and set(interactions[schema.SPLIT].astype(str).str.lower()) <= set(
        GIVEN_SPLIT_NAMES)


def given_split(interactions: pd.DataFrame) -> pd.DataFrame:
    """A dataset's own split. With a ``role`` column (user-level splits such as URLLM's), only the
    rows whose role is a target are held out; a held-out user's history rows are known (train)."""
    out = interactions.copy()
    labels = out[schema.SPLIT].astype(str).str.lower().map(GIVEN_SPLIT_NAMES)
    if "role" in out.columns:
        labels = labels.where(out["role"].astype(str) != "history", schema.TRAIN)
    out[schema.SPLIT] = labels
    out[SLICE] = np.where(out[schema.SPLIT] == schema.TRAIN, "", WARM)
    return out
