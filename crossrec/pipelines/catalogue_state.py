"""A served version's training state with its catalogue changed and every trained weight kept:
items added (placed by the served towers from their text alone, as a new item is at training
time) or retired (kept for histories, searched by no index). ``crossrec catalogue`` publishes
from it like from any training run (``crossrec.pipelines.catalogue``), and the next retrain
warm-starts from it.

What changes, and what does not:
- towers: the same weights; the catalogue grows by the added rows (after every existing row, so
  no served row moves), the frozen text table by their encoded texts; an added item has no ID
  embedding (``id_known`` false), so its vector is the text path's, exactly what the served
  ``item_encoder`` would give it. Every existing item's embedding is the stored one, unchanged.
- rankers: the same weights; their per-item tables grow by the added rows: the towers' vector,
  no interactions, never seen (item age "new"), no neighbours in any candidate source.
- data: the items table of the training data gains the added items and marks retired ones, so a
  retrain trains with them (an added item's ID embedding then starts from nothing).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from crossrec import schema
from crossrec.config import Config
from crossrec.data import io
from crossrec.errors import ConfigError
from crossrec.features import Catalogue
from ranking.fit import build_ranker
from ranking.ranker_spec import STUDENT, TEACHER
from ranking.run_folder import load_ranking
from ranking.sources import NeighbourTable
from ranking.tables import FeatureTables
from serving.training_state import ADDED_ITEMS
from towers.cache import EmbeddingCache
from towers.embedding_table import FILE as EMBEDDINGS_FILE
from towers.embedding_table import write_item_embeddings
from towers.encoder import TextEncoder
from towers.text import TextVectors
from towers.train import model_for_catalogue
from towers.warm_start import warm_start_towers


@dataclass
class CatalogueEdit:
    """What to change: items to add (validated, canonical columns with ``text``) and the item
    keys (domain, item_id) to retire."""

    add: pd.DataFrame | None = None
    retire: list[tuple[str, str]] | None = None


def check_servable(config: Config, summary: dict) -> None:
    """Refuses towers whose new items cannot be placed from their text (the encoder the
    version was trained with, known by its fingerprint)."""
    if not config.towers.use_text:
        raise ConfigError("the served towers are ID-only (towers.use_text: false): an item without interactions "
                          "has no vector until it is trained; add it with the next `crossrec retrain`")
    if not summary.get("text_encoder", {}).get("fingerprint"):
        raise ConfigError("the served version's training state does not record its text encoder's fingerprint "
                          "(run_summary.json); retrain it once with this crossrec, then change its catalogue")


def encode_texts(config: Config, texts: list[str], trained_fingerprint: str, progress: bool) -> np.ndarray:
    """The frozen encoder's vectors of ``texts`` (through the on-disk cache), from the very encoder
    the towers were trained with (refused otherwise: vectors of another encoder would land
    anywhere)."""
    encoder = TextEncoder(config.encoder)
    if encoder.fingerprint != trained_fingerprint:
        raise ConfigError(f"the text encoder here ({config.encoder.preset or 'the built-in all-MiniLM-L6-v2'}, "
                          f"fingerprint {encoder.fingerprint}) is not the one the served towers were trained with "
                          f"({trained_fingerprint}); install the same encoder weights, or retrain")
    cache = EmbeddingCache(config.encoder.cache_dir, encoder.fingerprint)
    return cache.get(texts, lambda t: encoder.encode(t, progress=progress)).astype(np.float32)


def changed_catalogue(catalogue: Catalogue, edit: CatalogueEdit) -> Catalogue:
    """``catalogue`` with the added items after its last row and the retired ones flagged."""
    items = catalogue.items.copy()
    items[schema.RETIRED] = items[schema.RETIRED].fillna(False).astype(bool) if schema.RETIRED in items else False
    if edit.add is not None and len(edit.add):
        added = pd.DataFrame({schema.ITEM_ID: edit.add[schema.ITEM_ID].astype(str).to_numpy(),
                              schema.DOMAIN: edit.add[schema.DOMAIN].astype(str).to_numpy(),
                              schema.TEXT: edit.add[schema.TEXT].to_numpy()})
        added["row"] = np.arange(catalogue.size, catalogue.size + len(added), dtype=np.int32)
        added["domain_index"] = np.array([catalogue.domain_index(d) for d in added[schema.DOMAIN]], np.int32)
        added[schema.RETIRED] = False
        items = pd.concat([items, added], ignore_index=True)
    if edit.retire:
        keys = pd.MultiIndex.from_frame(items[list(schema.ITEM_KEY)].astype(str))
        items.loc[keys.isin(pd.MultiIndex.from_tuples(edit.retire)), schema.RETIRED] = True
    return Catalogue(items, catalogue.domains)


def changed_towers(config: Config, model, catalogue: Catalogue, new: Catalogue, vectors: np.ndarray):
    """Towers for ``new`` with ``model``'s weights: the text table grows by ``vectors`` (the added
    rows'), every other per-item value of an existing row is copied, the added rows are unseen."""
    added = new.size - catalogue.size
    old_table = np.asarray(model.text_table)
    table = np.concatenate([old_table, np.asarray(vectors, np.float32).reshape(added, old_table.shape[1])])
    changed = model_for_catalogue(config, new, TextVectors(table))
    warm_start_towers(changed, model, catalogue, new)  # tower weights, item rows and each domain's text centre
    changed.id_known.assign(np.concatenate([np.asarray(model.id_known), np.zeros(added, bool)]))
    probability = np.asarray(model.item_probability)
    floor = probability[1:].min() if len(probability) > 1 else 0.0  # logQ only: an unseen item's share
    changed.item_probability.assign(np.concatenate([probability, np.full(added, floor, np.float32)]))
    return changed


def write_towers(out: Path, served_towers: Path, model, catalogue: Catalogue, embeddings: np.ndarray,
                 edit: CatalogueEdit, change: dict) -> None:
    """The towers' state folder for the changed catalogue (the layout ``towers.train`` writes)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(out / "towers.weights.h5"))
    catalogue.items.to_parquet(out / "catalogue.parquet", index=False)
    write_item_embeddings(out / EMBEDDINGS_FILE, catalogue.items, embeddings)
    for name in ("model_spec.json", "config.yaml"):
        shutil.copy2(served_towers / name, out / name)
    summary = json.loads((served_towers / "run_summary.json").read_text())
    summary["catalogue_changes"] = [*summary.get("catalogue_changes", []), change]
    summary["items"] = len(catalogue)
    (out / "run_summary.json").write_text(json.dumps(summary, indent=2))
    _write_data(out / "data", served_towers / "data", edit)
    _write_added(out, served_towers, edit, change)


def _write_added(out: Path, served_towers: Path, edit: CatalogueEdit, change: dict) -> None:
    """The items added since the towers were trained (the served list and this edit's), which the
    explorer marks: placed from their text, not trained yet."""
    frames = [pd.read_parquet(served_towers / ADDED_ITEMS)] if (served_towers / ADDED_ITEMS).exists() else []
    if edit.add is not None and len(edit.add):
        title = edit.add[schema.TITLE] if schema.TITLE in edit.add else edit.add[schema.TEXT]
        frames.append(pd.DataFrame({schema.DOMAIN: edit.add[schema.DOMAIN].astype(str).to_numpy(),
                                    schema.ITEM_ID: edit.add[schema.ITEM_ID].astype(str).to_numpy(),
                                    "title": title.astype(str).str.slice(0, 300).to_numpy(),
                                    "after_version": np.int64(change["from_version"])}))
    if frames:
        pd.concat(frames, ignore_index=True).to_parquet(out / ADDED_ITEMS, index=False)


def _write_data(out: Path, served: Path, edit: CatalogueEdit) -> None:
    """The training data with the items table changed (interactions and users as they are: linked
    to the served state's files, which the store never rewrites)."""
    out.mkdir(parents=True, exist_ok=True)
    items_file = next(served.glob("items.*"))
    for path in served.iterdir():
        if path != items_file:
            io.link_or_copy(path, out / path.name)
    items = io.without_bookkeeping(io.read_table(items_file, what="items"))
    if edit.add is not None and len(edit.add):
        added = io.without_bookkeeping(edit.add).astype({schema.ITEM_ID: str, schema.DOMAIN: str})
        items = pd.concat([items, added], ignore_index=True)
    retired = items[schema.RETIRED].astype(str).str.lower().isin(["true", "1"]) if schema.RETIRED in items \
        else pd.Series(False, index=items.index)
    if edit.retire:
        keys = pd.MultiIndex.from_frame(items[list(schema.ITEM_KEY)].astype(str))
        retired |= keys.isin(pd.MultiIndex.from_tuples(edit.retire))
    items[schema.RETIRED] = retired.to_numpy()
    items.to_parquet(out / "items.parquet", index=False)


def write_rankers(out: Path, served_ranking: Path, catalogue: Catalogue, added_embeddings: np.ndarray):
    """The rankers' state folder for the changed catalogue: their weights, and per-item tables
    grown by the added rows (the towers' vector, no interactions, never seen, no neighbours);
    returns the rankers written (teacher, student or None)."""
    teacher, student, _ = load_ranking(served_ranking)
    spec = json.loads((served_ranking / "ranking_spec.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for file, name, old in (("teacher", TEACHER, teacher), ("student", STUDENT, student)):
        if old is None:
            written[file] = None
            continue
        tables = _grown_tables(old.features.tables, spec, catalogue, added_embeddings)
        new = build_ranker(old.ranker_spec, tables, name=name)  # the spec it was loaded with
        _copy_ranker_weights(new, old)
        new.save_weights(str(out / f"{file}.weights.h5"))  # the names load_ranking reads
        written[file] = new
    spec["num_items"] = int(catalogue.size)
    (out / "ranking_spec.json").write_text(json.dumps(spec, indent=2))
    for name in ("config.yaml", "run_summary.json"):
        shutil.copy2(served_ranking / name, out / name)
    return written["teacher"], written["student"]


def _grown_tables(tables: dict, spec: dict, catalogue: Catalogue, added_embeddings: np.ndarray):
    old = {k: np.asarray(v) for k, v in tables.items()}
    added = catalogue.size - len(old["popularity"])

    def grown(name, rows):
        return np.concatenate([old[name], np.asarray(rows, old[name].dtype).reshape((added, *old[name].shape[1:]))])

    embeddings = added_embeddings.astype(np.float32)
    zeros = np.zeros(added, np.float32)
    sources = [NeighbourTable(s["name"], grown(f"{s['name']}_neighbours", np.zeros((added, s["width"]))),
                              grown(f"{s['name']}_weights", np.zeros((added, s["width"]))), s["position_decay"])
               for s in spec.get("sources", [])]
    return FeatureTables(grown("item_embeddings", embeddings), grown("item_domain", catalogue.item_domain[catalogue.size - added:]),
                         len(spec["domains"]), grown("popularity", zeros), text_vectors=grown("text_vectors", embeddings),
                         first_seen=grown("first_seen", np.ones(added)), rating_mean=spec["rating_mean"],
                         rating_sum=grown("rating_sum", zeros), rating_count=grown("rating_count", zeros),
                         sources=sources)


def _copy_ranker_weights(new, old) -> None:
    """Every weight of ``old`` but its per-item tables into ``new`` (built alike over larger tables)."""
    def own(model):
        tables = {id(w) for w in model.features.weights}
        return [w for w in model.weights if id(w) not in tables]

    pairs = list(zip(own(new), own(old), strict=True))
    for target, source in pairs:
        if tuple(target.shape) != tuple(source.shape):
            raise ConfigError(f"ranker weight {target.name}: shape {tuple(source.shape)} in the served ranker, "
                              f"{tuple(target.shape)} here; the served ranking state is damaged")
        target.assign(source)
