"""Adapting the text encoder to the catalogue: collaborative contrastive fine-tuning.

LLM2Rec (KDD'25) and Recformer adapt a pretrained language model to the recommendation data
before item embeddings are learnt on top of it: the encoder is fine-tuned so that items the same
users connect land close together. crossrec does this once per training split, before the towers
train (``encoder.adapt``; ``crossrec adapt`` runs it alone):

- **pairs**: two items at most ``adapt.window`` steps apart in a user's *training* history,
  within a domain or across domains (what teaches the encoder which Arts items go with which
  Office items). Only the training split is read: no validation or test target leaks into it.
- **what trains**: the top ``adapt.layers`` transformer layers. The layers below stay frozen, and
  each item's output from them is computed once into a float16 memory-mapped file, so a step runs
  only the layers that train (``bench.adapt`` has the examples/s against LoRA over the backbone).
- **loss**: symmetric in-batch softmax (InfoNCE) over the mean-pooled, normalised vectors; the
  batch's other pairs are the negatives, an item never its own.
- **budget and resume**: the stage stops at ``adapt.budget_minutes`` (encoding included) and keeps
  what it learnt; it checkpoints to a work folder every minute and resumes there after a kill.
- **result**: a keras-hub preset folder, cached by base encoder, pairs and settings, which the
  towers, the export, ``crossrec catalogue add`` and zero-shot domains then read exactly as they
  read the pretrained one. Its ``adapt.json`` holds the evidence: held-out pairs' Recall@10 among
  each other before and after, pairs, steps, examples/s, seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from crossrec import schema
from crossrec.config import AdaptConfig, Config
from crossrec.errors import ConfigError
from crossrec.features import Catalogue
from towers.adapt_fit import REPORT, fit_adapter
from towers.cache import default_cache_dir
from towers.encoder import TextEncoder


@dataclass
class Adaptation:
    """The adapted encoder's preset folder and what its adaptation measured."""

    path: Path
    report: dict


def training_pairs(train: pd.DataFrame, catalogue: Catalogue, window: int = 1) -> np.ndarray:
    """(n, 2) catalogue rows of distinct item pairs at most ``window`` steps apart in a user's
    history (time order), each unordered pair once, in a stable order."""
    if window < 1:
        raise ConfigError(f"encoder.adapt.window must be at least 1, got {window}")
    order = [c for c in schema.ORDER_COLUMNS if c in train.columns]
    frame = train.sort_values([schema.USER_ID, *order], kind="stable")
    rows = catalogue.rows(frame[schema.DOMAIN], frame[schema.ITEM_ID])
    users = frame[schema.USER_ID].to_numpy()
    parts = [np.stack([rows[:-gap], rows[gap:]], axis=1)[users[gap:] == users[:-gap]]
             for gap in range(1, window + 1) if gap < len(rows)]
    pairs = np.concatenate(parts) if parts else np.zeros((0, 2), rows.dtype)
    pairs = np.sort(pairs[(pairs[:, 0] != pairs[:, 1]) & (pairs > 0).all(axis=1)], axis=1)
    return np.unique(pairs, axis=0).astype(np.int64)


def adaptation_key(encoder: TextEncoder, pairs: np.ndarray, settings: AdaptConfig) -> str:
    digest = hashlib.sha256(encoder.fingerprint.encode())
    digest.update(np.ascontiguousarray(pairs).tobytes())
    # the budget is not part of it: `crossrec adapt --budget 60` fills the cache a training then reads
    kept = {k: v for k, v in vars(settings).items() if k not in ("enabled", "budget_minutes")}
    digest.update(json.dumps(kept, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def adapted_root(config: Config) -> Path:
    return Path(config.encoder.cache_dir or default_cache_dir()) / "adapted"


def adapt_encoder(config: Config, train: pd.DataFrame, catalogue: Catalogue, *, progress: bool = True,
                  budget_minutes: float | None = None) -> tuple[Config, Adaptation | None]:
    """``config`` with ``encoder.adapted`` set to the encoder adapted on ``train`` (cached), or
    cleared when ``encoder.adapt.enabled`` is off; and the adaptation (None when off)."""
    settings = config.encoder.adapt
    if budget_minutes is not None:
        settings = replace(settings, budget_minutes=budget_minutes)
    if not settings.enabled or not config.towers.use_text:
        return replace(config, encoder=replace(config.encoder, adapted=None)), None
    if settings.budget_minutes <= 0:
        raise ConfigError(f"encoder.adapt.budget_minutes must be above 0, got {settings.budget_minutes}")
    base = TextEncoder(replace(config.encoder, adapted=None))
    pairs = training_pairs(train, catalogue, settings.window)
    if len(pairs) < 2 * settings.batch_size:
        raise ConfigError(f"encoder.adapt: the training split connects only {len(pairs)} item pairs (two items "
                          f"within {settings.window} steps of each other in a user's history); adapting needs at "
                          f"least {2 * settings.batch_size}. Turn encoder.adapt off for this data")
    path = adapted_root(config) / adaptation_key(base, pairs, settings)
    if not (path / REPORT).exists():
        fit_adapter(base, catalogue, pairs, settings, path, progress=progress)
    report = json.loads((path / REPORT).read_text())
    return replace(config, encoder=replace(config.encoder, adapted=str(path))), Adaptation(path, report)


def keep_copy(adaptation: Adaptation, out: Path) -> Path:
    """The adapted preset copied into a run folder (hard links where the file system allows), so a
    run stays whole when the cache is cleared; returns the copy's path."""
    target = out / "adapted_encoder"
    if target.exists():
        shutil.rmtree(target)

    def link(source, destination):
        try:
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)

    shutil.copytree(adaptation.path, target, copy_function=link)
    return target
