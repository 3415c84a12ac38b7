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
    if config.kind == "evaluation":
        return evaluation_split(interactions, target_domain=config.target_domain or _first_domain(interactions),
                                cold_start_fraction=config.holdout_fraction,
                                new_item_fraction=config.holdout_fraction / 2, seed=config.seed)
    if config.kind == "given":
        if not has_given_split(interactions):
            raise ConfigError("split.kind given: the data has no split column of train/valid/test labels")
        return given_split(interactions, seed=config.seed)
    raise ConfigError(f"split.kind: unknown kind {config.kind!r}")


def _first_domain(interactions: pd.DataFrame) -> str:
    return sorted(interactions[schema.DOMAIN].unique())[0]


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


def given_split(interactions: pd.DataFrame, *, cold_start_fraction: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """A dataset's own split, with a cross-domain cold-start slice that is really cold.

    With a ``role`` column (user-level splits such as URLLM's), only the rows whose role is a
    target are held out; a held-out user's history rows are known (train). Held-out targets are
    the ``warm`` slice, except for a seeded share (``cold_start_fraction``) of each held-out
    split's users who have history in more than one domain: each of them is given one *cold
    domain* among their targets' domains, every one of their interactions in that domain leaves
    the data (so no model trains on them and no query knows them), their targets in it form the
    ``cold_start`` slice, and their targets in other domains are dropped (those users are not warm
    users any more). Warm and cold-start users are disjoint.
    """
    out = interactions.copy()
    labels = out[schema.SPLIT].astype(str).str.lower().map(GIVEN_SPLIT_NAMES)
    has_roles = "role" in out.columns
    if has_roles:
        labels = labels.where(out["role"].astype(str) != "history", schema.TRAIN)
    out[schema.SPLIT] = labels
    out[SLICE] = np.where(out[schema.SPLIT] == schema.TRAIN, "", WARM)
    if not has_roles or cold_start_fraction <= 0:
        return out
    cold = _cold_domains(out, cold_start_fraction, seed)
    if not cold:
        return out
    user_cold = out[schema.USER_ID].map(cold)
    in_cold = (user_cold == out[schema.DOMAIN]).to_numpy()
    held = (out[schema.SPLIT] != schema.TRAIN).to_numpy()
    of_cold_user = user_cold.notna().to_numpy()
    out.loc[held & in_cold, SLICE] = COLD_START
    drop = (of_cold_user & in_cold & ~held) | (of_cold_user & held & ~in_cold)
    return out[~drop].reset_index(drop=True)


def _cold_domains(frame: pd.DataFrame, fraction: float, seed: int) -> dict:
    """user -> cold domain for a seeded ``fraction`` of each held-out split's eligible users: those
    with a target in a domain and history in another one."""
    rng = np.random.default_rng(seed)
    history = frame[frame[schema.SPLIT] == schema.TRAIN]
    history_domains = history.groupby(schema.USER_ID)[schema.DOMAIN].agg(set)
    cold: dict = {}
    for split_name in (schema.VALIDATION, schema.TEST):
        targets = frame[frame[schema.SPLIT] == split_name]
        options = {}
        for user, domains in targets.groupby(schema.USER_ID, sort=True)[schema.DOMAIN]:
            seen = history_domains.get(user, set())
            usable = sorted(d for d in set(domains) if seen - {d})
            if usable:
                options[user] = usable
        users = np.array(sorted(options), dtype=object)
        if len(users) == 0:
            continue
        chosen = rng.permutation(users)[:int(round(len(users) * fraction))]
        for user in sorted(chosen, key=str):
            cold[user] = options[user][rng.integers(len(options[user]))]
    return cold
