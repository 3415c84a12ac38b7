"""What a retrain starts from and adds: the served version's training state (``ServedState``),
the new data, and the two merged into one validated dataset (``merge_data``, ``DataChange``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from crossrec import schema
from crossrec.config import Config
from crossrec.data import io
from crossrec.data.dataset import Dataset
from crossrec.data.loaders import read_table_dataset, text_template
from crossrec.data.validate import validate
from crossrec.errors import ConfigError, DataError, Problem
from serving.export import MODELS
from serving.layout import METADATA_FILE, latest_version
from serving.model_set import latest_complete
from serving.training_state import locate


# --- the served state -------------------------------------------------------------------------
@dataclass
class ServedState:
    base: Path
    version: int  # of the retrieval model
    towers_dir: Path
    ranking_dir: Path | None
    models: list[str]  # models with at least one version under base
    metadata: dict = field(default_factory=dict)  # the retrieval version's crossrec_metadata.json


def served_state(base: str | Path) -> ServedState:
    """What ``base`` serves: the newest *complete* model set (``serving.model_set``), never the
    half of one a killed publish left."""
    base = Path(base)
    version = latest_complete(base / "retrieval")
    if version is None:
        raise ConfigError(f"{base}/retrieval has no version to retrain from; train and export one first "
                          f"(`crossrec train retrieval`, `crossrec export --out {base}`)")
    state = locate(base, version)
    towers = state / "towers"
    if not (towers / "towers.weights.h5").exists() or not (towers / "data").is_dir():
        raise ConfigError(f"{base}/retrieval/{version} carries no training state (towers with weights and data, "
                          "beside the serving folder); it was exported by an older crossrec. Export the training "
                          "run again with this version of `crossrec export`, then retrain")
    ranking = state / "ranking" if (state / "ranking" / "teacher.weights.h5").exists() else None
    models = [m for m in MODELS if latest_version(base / m) is not None]
    metadata_file = base / "retrieval" / str(version) / "assets" / METADATA_FILE
    metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}
    return ServedState(base, version, towers, ranking, models, metadata)


# --- merging old and new data -----------------------------------------------------------------
@dataclass
class DataChange:
    new_interactions: int = 0
    new_users: int = 0
    new_items: int = 0
    changed_items: int = 0
    removed_items: int = 0
    dropped_interactions: int = 0  # old interactions with removed items, or outside the window
    new_domains: list[str] = field(default_factory=list)  # trained for the first time
    zero_shot_domains: list[str] = field(default_factory=list)  # items only: served zero-shot

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def read_new_data(path: str | Path, items: str | Path | None = None) -> Dataset:
    """The new data: a folder with ``interactions.*`` (and optional ``items.*``) in the canonical
    table layout, or an interactions file (with ``items``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(Problem("new data not found", file=str(path),
                                fix="pass --data a folder with interactions.parquet/.csv (and items.*)"))
    return read_table_dataset(str(path), str(items) if items else None, items_required=False)


def _keys(frame: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_frame(frame[list(schema.ITEM_KEY)].astype(str))


def _truthy(series: pd.Series) -> pd.Series:
    return series.astype(str).str.strip().str.lower().isin(["true", "1", "yes"])


def merge_data(old: Dataset, new: Dataset, config: Config) -> tuple[Dataset, DataChange]:
    """Old + new data, validated together (errors name the new files' rows)."""
    change = DataChange()
    mapping = {source: canonical for canonical, source in config.data.columns.items()}
    new_inter = new.interactions.rename(columns=mapping)
    new_items = new.items.rename(columns=mapping)
    old_items = old.items.drop(columns=[schema.TEXT], errors="ignore")
    removed_flag = _truthy(new_items["removed"]) if "removed" in new_items.columns else pd.Series(False, new_items.index)
    if config.retrain.catalogue == "replace":
        items = new_items[~removed_flag]
    else:
        gone = _keys(new_items)
        items = pd.concat([old_items[~_keys(old_items).isin(gone)], new_items[~removed_flag]], ignore_index=True)
    items = items.drop(columns=["removed"], errors="ignore")
    kept = _keys(old.items).isin(_keys(items))
    change.removed_items = int((~kept).sum())
    old_inter = old.interactions[_keys(old.interactions).isin(_keys(items))]
    change.dropped_interactions = len(old.interactions) - len(old_inter)
    interactions = pd.concat([old_inter, new_inter], ignore_index=True)
    order = [c for c in schema.ORDER_COLUMNS if c in interactions.columns]
    interactions = interactions.drop_duplicates(subset=list(schema.INTERACTION_REQUIRED) + order)
    interactions, items, users, report = validate(
        interactions, items, old.users, text_template=text_template(config.data),
        unknown_items=config.data.unknown_items)
    interactions = io.without_bookkeeping(interactions)
    items = io.without_bookkeeping(items)
    if config.retrain.window is not None:
        before = len(interactions)
        interactions = _last_per_user(interactions, config.retrain.window)
        change.dropped_interactions += before - len(interactions)
    old_keys, new_keys = _keys(old.items), _keys(items)
    change.new_items = int((~new_keys.isin(old_keys)).sum())
    old_text = pd.Series(old.items[schema.TEXT].to_numpy(), index=old_keys)
    common = items[new_keys.isin(old_keys)]
    change.changed_items = int((common[schema.TEXT].to_numpy() != old_text.reindex(_keys(common)).to_numpy()).sum())
    key_columns = list(schema.INTERACTION_REQUIRED) + order
    seen = interactions[key_columns].astype(str).merge(old_inter[key_columns].astype(str).drop_duplicates(),
                                                        how="left", indicator=True)
    change.new_interactions = int((seen["_merge"] == "left_only").sum())
    new_users = ~interactions[schema.USER_ID].isin(old.interactions[schema.USER_ID])
    change.new_users = int(interactions.loc[new_users, schema.USER_ID].nunique())
    trained_before = set(old.interactions[schema.DOMAIN])
    change.new_domains = sorted(set(interactions[schema.DOMAIN]) - trained_before)
    return Dataset(interactions, items, users, report), change


def _last_per_user(interactions: pd.DataFrame, window: int) -> pd.DataFrame:
    order = schema.order_column(interactions.columns)
    ranked = interactions.assign(_pos=np.arange(len(interactions)))
    ranked = ranked.sort_values([schema.USER_ID, order, "_pos"], kind="stable")
    from_end = ranked.groupby(schema.USER_ID, sort=False).cumcount(ascending=False)
    return ranked[from_end < window].sort_values("_pos").drop(columns="_pos").reset_index(drop=True)


def read_training_data(towers_dir: Path) -> Dataset:
    """The validated data a served version was trained on (``<state>/towers/data``)."""
    data = Path(towers_dir) / "data"
    found = {name: next((p for p in data.glob(f"{name}.*")), None) for name in ("interactions", "items", "users")}
    return Dataset(io.read_table(found["interactions"], what="interactions"),
                   io.read_table(found["items"], what="items"),
                   io.read_table(found["users"], what="users") if found["users"] else None).clean()
