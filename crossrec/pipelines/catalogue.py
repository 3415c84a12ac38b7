"""``crossrec catalogue add`` / ``retire``: the served catalogue changed in minutes, no retraining.

A shop's new products are placed by the served towers from their text alone (what crossrec's
item towers are trained for: a new item with text and no clicks), and products taken off sale
stop being recommended. Either is a publish like any other (``serving.model_set``): the next
version of every served model, written aside and renamed into place together, picked up by
``crossrec serve`` and stock TF Serving without a restart; a crash leaves the previous version
serving. The weights are the served ones (``crossrec.pipelines.catalogue_state``), so every
answer that involves no changed item stays what it was; the weekly ``crossrec retrain`` starts
from the changed version and trains the added items' ID embeddings from their first clicks.

One run folder per (served version, command, input), ``<work-dir>/from-v<V>-<key>``: a run
killed mid-way is finished by the same command (a half-published set is completed, not
repeated), and the same command after its publish reports that version instead of adding twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from crossrec import schema
from crossrec.config import Config, load_config
from crossrec.data import io
from crossrec.data.loaders import text_template
from crossrec.data.problems import ProblemLog
from crossrec.data.validate import validate_items
from crossrec.errors import DataError, Problem
from crossrec.experiment import data_fingerprint
from crossrec.features import Catalogue
from crossrec.pipelines.catalogue_state import (
    CatalogueEdit,
    changed_catalogue,
    changed_towers,
    check_servable,
    encode_texts,
    write_rankers,
    write_towers,
)
from crossrec.pipelines.served_data import ServedState, served_state
from serving.export import export_models, write_model_config
from serving.parts import assemble_parts, stored_embeddings
from towers.train import load_trained

DEFAULT_WORK_DIR = ".runs/catalogue"


@dataclass
class CatalogueResult:
    published: dict[str, int] | None  # model -> version; None: nothing to publish
    added: int
    retired: int
    reason: str
    work_dir: Path | None = None
    seconds: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"published": self.published, "added": self.added, "retired": self.retired, "reason": self.reason,
                "run_folder": None if self.work_dir is None else str(self.work_dir), "seconds": self.seconds}


def add_items(items: str | Path, base: str | Path = "saved_models", *, work_dir: str | Path | None = None,
              progress: bool = True) -> CatalogueResult:
    """Adds the items of ``items`` (the items schema of the training data: ``item_id``, ``domain``
    and the text template's columns) to every served model under ``base``."""
    started = time.perf_counter()
    served = served_state(base)
    config = load_config(served.towers_dir / "config.yaml")
    new = _read_new_items(items, config)
    key = _key("add", new[[schema.DOMAIN, schema.ITEM_ID, schema.TEXT]].astype(str))
    done = _published_before(served, key, progress)
    if done is not None:
        return done
    summary = json.loads((served.towers_dir / "run_summary.json").read_text())
    check_servable(config, summary)
    catalogue = Catalogue(pd.read_parquet(served.towers_dir / "catalogue.parquet"), _domains(served))
    _check_new_against(new, catalogue)
    return _publish(served, config, catalogue, CatalogueEdit(add=new), key, work_dir, progress, started,
                    summary["text_encoder"]["fingerprint"])


def retire_items(items: str | Path, base: str | Path = "saved_models", *, work_dir: str | Path | None = None,
                 progress: bool = True) -> CatalogueResult:
    """Retires the items ``items`` lists (``domain`` and ``item_id`` columns): no served model
    returns them again; a request's history may still hold them, and they still count there."""
    started = time.perf_counter()
    served = served_state(base)
    config = load_config(served.towers_dir / "config.yaml")
    keys = _read_keys(items, config)
    key = _key("retire", keys[list(schema.ITEM_KEY)])
    done = _published_before(served, key, progress)
    if done is not None:
        return done
    catalogue = Catalogue(pd.read_parquet(served.towers_dir / "catalogue.parquet"), _domains(served))
    wanted = _known_keys(keys, catalogue)
    retired = catalogue.retired[catalogue.rows(keys[schema.DOMAIN], keys[schema.ITEM_ID])]
    fresh = [k for k, r in zip(wanted, retired, strict=True) if not r]
    if not fresh:
        reason = f"nothing to publish: every listed item is retired already ({served.base} keeps version {served.version})"
        _say(progress, reason)
        return CatalogueResult(None, 0, 0, reason)
    return _publish(served, config, catalogue, CatalogueEdit(retire=fresh), key, work_dir, progress, started, None)


def _publish(served: ServedState, config: Config, catalogue: Catalogue, edit: CatalogueEdit, key: str,
             work_dir, progress: bool, started: float, encoder_fingerprint: str | None) -> CatalogueResult:
    work = Path(work_dir or DEFAULT_WORK_DIR) / f"from-v{served.version}-{key}"
    added = 0 if edit.add is None else len(edit.add)
    retired = len(edit.retire or [])
    change = {"key": key, "from_version": served.version, "added": added, "retired": retired}
    seconds, parts = {}, None
    if not _state_complete(work, served):
        _say(progress, f"changing the catalogue of {served.base}/retrieval/{served.version}: +{added} items, "
                       f"{retired} retired; run folder {work}")
        parts = _write_state(work, served, config, catalogue, edit, change, encoder_fingerprint, progress, seconds)
    publish_started = time.perf_counter()
    models = [m for m in served.models if served.ranking_dir is not None or m not in ("ranking", "recommender")]
    # the item encoder reads no per-item table: the served one is the next version's, copied
    encoder = served.base / "item_encoder" / str(served.version)
    reuse = {"item_encoder": encoder} if "item_encoder" in models and (encoder / "saved_model.pb").is_file() else {}
    result = export_models(work / "towers", served.base, ranking_dir=work / "ranking" if served.ranking_dir else None,
                           models=models, progress=progress, extra_metadata={"catalogue_change": change}, reuse=reuse,
                           link_state=True, parts=parts)  # the run folder is written once (``_state_complete``)
    write_model_config(served.base)
    seconds["publish"] = round(time.perf_counter() - publish_started, 2)
    seconds["total"] = round(time.perf_counter() - started, 2)
    version = next(iter(result.versions.values()))
    reason = f"published version {version} of {', '.join(result.versions)}: +{added} items, {retired} retired"
    _say(progress, reason)
    out = CatalogueResult(dict(result.versions), added, retired, reason, work, seconds)
    (work / "result.json").write_text(json.dumps(out.as_dict(), indent=2))
    return out


def _write_state(work: Path, served: ServedState, config: Config, catalogue: Catalogue, edit: CatalogueEdit,
                 change: dict, encoder_fingerprint: str | None, progress: bool, seconds: dict):
    """The changed training state in ``work`` (towers, then rankers, each renamed into place when
    whole), the seconds of each stage in ``seconds``; returns its export parts (the models built
    here: the publish need not load them again)."""
    begun = time.perf_counter()
    model, _, _ = load_trained(served.towers_dir)
    texts = [] if edit.add is None else edit.add[schema.TEXT].tolist()
    vectors = encode_texts(config, texts, encoder_fingerprint, progress) if texts else np.zeros((0, 1), np.float32)
    seconds["encode"] = round(time.perf_counter() - begun, 2)
    begun = time.perf_counter()
    new_catalogue = changed_catalogue(catalogue, edit)
    towers = changed_towers(config, model, catalogue, new_catalogue, vectors)
    old = stored_embeddings(served.towers_dir, catalogue)
    old = model.all_item_embeddings()[1:] if old is None else old
    added_rows = np.arange(catalogue.size, new_catalogue.size, dtype=np.int32)
    added = np.asarray(towers.item_embeddings(added_rows, use_ids=False), np.float32).reshape(len(added_rows),
                                                                                             old.shape[1])
    with io.atomic_directory(work / "towers", overwrite=True) as folder:
        write_towers(folder, served.towers_dir, towers, new_catalogue, np.concatenate([old, added]), edit, change)
    rankers = None
    if served.ranking_dir is not None:
        with io.atomic_directory(work / "ranking", overwrite=True) as folder:
            rankers = write_rankers(folder, served.ranking_dir, new_catalogue, added)
    seconds["state"] = round(time.perf_counter() - begun, 2)
    return assemble_parts(towers, new_catalogue, config, work / "towers", rankers,
                          work / "ranking" if rankers is not None else None)


def _state_complete(work: Path, served: ServedState) -> bool:
    """Whether a killed run of this command already wrote the whole state (then it is reused, so
    the publish it had begun is finished with the very same files)."""
    towers = (work / "towers" / "run_summary.json").exists()
    return towers and (served.ranking_dir is None or (work / "ranking" / "teacher.weights.h5").exists())


def _published_before(served: ServedState, key: str, progress: bool) -> CatalogueResult | None:
    """The result of this same command when it already published the set served now (a run
    killed after the set was in place gets the rest of its publish: the model config)."""
    change = served.metadata.get("catalogue_change") or {}
    if change.get("key") != key:
        return None
    write_model_config(served.base)
    models = (served.metadata.get("set") or {}).get("models", served.models)
    reason = (f"already published as version {served.version} of {', '.join(models)} by an earlier run of this "
              "command; nothing to do")
    _say(progress, reason)
    return CatalogueResult({m: served.version for m in models}, change.get("added", 0), change.get("retired", 0),
                           reason)


def _domains(served: ServedState) -> list[str]:
    return json.loads((served.towers_dir / "model_spec.json").read_text())["domains"]


def _key(command: str, frame: pd.DataFrame) -> str:
    digest = hashlib.sha256(command.encode())
    digest.update(data_fingerprint(frame.sort_values(list(frame.columns)).reset_index(drop=True)).encode())
    return digest.hexdigest()[:12]


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)


# --- reading and checking the input -----------------------------------------------------------
def _read(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(Problem("file not found", file=str(path),
                                fix="pass --items a Parquet, CSV(.gz) or JSON Lines file of items"))
    frame = io.read_table(path, what="items")
    if frame.empty:
        raise DataError(Problem("the file lists no items", file=str(path), fix="list at least one item"))
    return frame


def _read_new_items(path, config: Config) -> pd.DataFrame:
    """The new items, validated like the training data's (``validate_items``); an item listed
    twice is an error (which of its rows is meant cannot be guessed)."""
    frame = _read(path)
    new = validate_items(frame, columns=config.data.columns, text_template=text_template(config.data))
    if len(new) < len(frame):
        mapped = frame.rename(columns={source: canonical for canonical, source in config.data.columns.items()})
        log = ProblemLog()
        log.rows(mapped, mapped.duplicated(list(schema.ITEM_KEY), keep="first"), what="items", column=schema.ITEM_ID,
                 message=lambda r: f"item {r[schema.ITEM_ID]!r} ({r[schema.DOMAIN]}) is listed more than once",
                 fix="list each new item once")
        log.raise_if_any()
    return new


def _read_keys(path, config: Config) -> pd.DataFrame:
    frame = _read(path).rename(columns={s: c for c, s in config.data.columns.items()})
    missing = [c for c in schema.ITEM_REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(Problem(f"missing column(s) {', '.join(missing)} (columns present: "
                                f"{', '.join(c for c in frame.columns if not c.startswith('_'))})",
                                file=str(path), fix="list each item to retire by its domain and item_id"))
    return frame[[schema.DOMAIN, schema.ITEM_ID, *schema.BOOKKEEPING]].astype(
        {schema.DOMAIN: str, schema.ITEM_ID: str}).drop_duplicates(list(schema.ITEM_KEY))


def _check_new_against(new: pd.DataFrame, catalogue: Catalogue) -> None:
    """New items must be new, and of a served domain (a new domain needs its towers trained)."""
    log = ProblemLog()
    served = catalogue.domain_names
    log.rows(new, ~new[schema.DOMAIN].isin(served), what="items", column=schema.DOMAIN,
             message=lambda r: f"item {r[schema.ITEM_ID]!r}: domain {r[schema.DOMAIN]!r} is not served "
                               f"(served domains: {', '.join(served)})",
             fix="fix the domain's spelling; a new domain joins with `crossrec retrain` (its items in the new data)")
    rows = catalogue.rows(new[schema.DOMAIN].astype(str), new[schema.ITEM_ID].astype(str))
    log.rows(new, rows > 0, what="items", column=schema.ITEM_ID,
             message=lambda r: f"item {r[schema.ITEM_ID]!r} ({r[schema.DOMAIN]}) is in the served catalogue already",
             fix="leave it out; an item's new text reaches the towers with `crossrec retrain` (its row in the new "
                 "items file)")
    log.raise_if_any()


def _known_keys(keys: pd.DataFrame, catalogue: Catalogue) -> list[tuple[str, str]]:
    rows = catalogue.rows(keys[schema.DOMAIN], keys[schema.ITEM_ID])
    log = ProblemLog()
    log.rows(keys, rows == 0, what="items", column=schema.ITEM_ID,
             message=lambda r: f"item {r[schema.ITEM_ID]!r} ({r[schema.DOMAIN]}) is not in the served catalogue",
             fix="check the item's id and domain (the pair names an item); nothing was retired")
    log.raise_if_any()
    return list(zip(keys[schema.DOMAIN], keys[schema.ITEM_ID], strict=True))

