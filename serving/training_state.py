"""The training state behind served versions, kept *beside* the serving folder, never in it.

``crossrec retrain`` warm-starts from exactly what is served: the towers' and rankers' weights,
the catalogue, the config and the validated training data. That data holds every user's id and
history, so it must not travel with ``saved_models/`` to serving hosts, container images or
buckets. It lives in a sibling folder, content-addressed:

    saved_models/                      what is served (no user ids)
      retrieval/3/assets/crossrec_metadata.json   "training_state": {"path", "fingerprint"}
    saved_models.training_state/       what retraining needs (user histories)
      <fingerprint>/towers/  <fingerprint>/ranking/

Each retrieval version's metadata names its state (path relative to the serving folder) and the
state's fingerprint, which retraining checks before it trusts the folder. Versions exported from
the same runs share one state; states no retrieval version names any more are removed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd

from crossrec import schema
from crossrec.data.io import atomic_directory, link_or_copy
from crossrec.errors import ConfigError
from serving.layout import METADATA_FILE, TRAINING_STATE, versions

# What each state holds for `crossrec retrain`.
# ``added_items.parquet``: the items ``crossrec catalogue add`` placed since the towers were trained
# (domain, item_id, title, after_version); a retrain trains them and starts the list afresh.
ADDED_ITEMS = "added_items.parquet"
TOWER_STATE = ("towers.weights.h5", "catalogue.parquet", "item_embeddings.parquet", "model_spec.json", "config.yaml",
               "run_summary.json", "data", ADDED_ITEMS, "adapted_encoder")
RANKING_STATE = ("teacher.weights.h5", "student.weights.h5", "ranking_spec.json", "config.yaml", "run_summary.json")
SUFFIX = ".training_state"


def state_root(base: str | Path) -> Path:
    """The store beside ``base``: ``<parent>/<base name>.training_state``."""
    base = Path(base).resolve()
    return base.parent / (base.name + SUFFIX)


def _files(retrieval_dir: Path, ranking_dir: Path | None):
    """(path inside the state, source file) of everything a state holds, sorted."""
    out = []
    for source, names, sub in ((retrieval_dir, TOWER_STATE, "towers"), (ranking_dir, RANKING_STATE, "ranking")):
        if source is None:
            continue
        for name in names:
            path = Path(source) / name
            if path.is_dir():
                out += [(f"{sub}/{f.relative_to(source).as_posix()}", f) for f in sorted(path.rglob("*")) if f.is_file()]
            elif path.exists():
                out.append((f"{sub}/{name}", path))
    return out


def fingerprint_of(files) -> str:
    digest = hashlib.sha256()
    for inside, path in sorted(files):
        digest.update(inside.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:24]


def fingerprint(retrieval_dir: str | Path, ranking_dir: str | Path | None) -> str:
    """The fingerprint of what a state of these runs would hold (without copying anything)."""
    return fingerprint_of(_files(Path(retrieval_dir), Path(ranking_dir) if ranking_dir is not None else None))


def store(base: str | Path, retrieval_dir: str | Path, ranking_dir: str | Path | None,
          fingerprint: str | None = None, link: bool = False) -> dict:
    """Copies the runs' state into the store (once per content) and returns what a version's
    metadata records: ``{"path": relative to base, "fingerprint": ...}``; ``fingerprint``: the
    runs' ``fingerprint()`` when the caller has it already (hashing the state twice is wasted);
    ``link``: hard links instead of copies, for run folders crossrec writes once and never
    rewrites in place (``crossrec catalogue``'s; a user's run folder may be trained again)."""
    files = _files(Path(retrieval_dir), Path(ranking_dir) if ranking_dir is not None else None)
    fingerprint = fingerprint or fingerprint_of(files)
    target = state_root(base) / fingerprint
    for leftover in state_root(base).glob(".*.tmp-*"):  # a killed copy's (publishes into base hold a lock)
        shutil.rmtree(leftover, ignore_errors=True)
    if not (target / "towers").is_dir():
        with atomic_directory(target, overwrite=True) as tmp:
            for inside, path in files:
                (tmp / inside).parent.mkdir(parents=True, exist_ok=True)
                (link_or_copy if link else shutil.copy2)(path, tmp / inside)
    return {"path": f"../{state_root(base).name}/{fingerprint}", "fingerprint": fingerprint}


def _recorded(version_dir: Path) -> dict | None:
    path = version_dir / "assets" / METADATA_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("training_state")


def locate(base: str | Path, version: int) -> Path:
    """The state behind ``<base>/retrieval/<version>``, checked against its fingerprint. Versions
    exported by crossrec before the store carry it inside (``assets.extra/crossrec``)."""
    base = Path(base)
    version_dir = base / "retrieval" / str(version)
    recorded = _recorded(version_dir)
    if recorded is None:
        return version_dir / TRAINING_STATE
    # the store beside the folder as it is named now (it may have been renamed), else the recorded path
    folder = state_root(base) / recorded["fingerprint"]
    if not (folder / "towers").is_dir():
        folder = (base / recorded["path"]).resolve()
    if not (folder / "towers").is_dir():
        raise ConfigError(f"{base}/retrieval/{version}: its training state {folder} is missing; retraining needs "
                          f"the store beside the serving folder ({state_root(base).name}/) that `crossrec export` "
                          "wrote. Copy it back, or export the training runs again")
    found = fingerprint_of([(f.relative_to(folder).as_posix(), f) for f in sorted(folder.rglob("*")) if f.is_file()])
    if found != recorded["fingerprint"]:
        raise ConfigError(f"{folder}: its files do not match the fingerprint version {version} recorded "
                          f"({found} != {recorded['fingerprint']}); it was changed after the export")
    return folder


def prune(base: str | Path) -> list[Path]:
    """Removes the states no retrieval version under ``base`` names any more."""
    base = Path(base)
    root = state_root(base)
    if not root.is_dir():
        return []
    named = {(_recorded(base / "retrieval" / str(v)) or {}).get("fingerprint") for v in versions(base / "retrieval")}
    removed = []
    for folder in root.iterdir():
        if folder.is_dir() and not folder.name.startswith(".") and folder.name not in named:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class AddedItems:
    """The items added by ``crossrec catalogue add`` since the served towers were trained: read
    from the training state of the version served now (once per version)."""

    def __init__(self, manager):
        self.manager = manager
        self._cache: dict[tuple[Path, int], dict] = {}

    def served(self) -> tuple[int | None, dict]:
        """(the served version, {(domain, item_id): {"title", "after_version"}})."""
        for name in ("recommender", "retrieval"):
            spec = self.manager.specs.get(name)
            try:
                version = self.manager.get(name).version if spec else None
            except KeyError:
                continue
            if version is None:
                continue
            base = Path(spec.base_path).parent
            if (base, version) not in self._cache:
                try:
                    path = locate(base, version) / "towers" / ADDED_ITEMS
                except ConfigError:  # no training state beside the folder: nothing to mark
                    path = None
                frame = pd.read_parquet(path) if path is not None and path.is_file() else None
                self._cache[(base, version)] = {} if frame is None else {
                    (d, i): {"title": t, "after_version": int(v)} for d, i, t, v in
                    zip(frame[schema.DOMAIN], frame[schema.ITEM_ID], frame["title"], frame["after_version"],
                        strict=True)}
            return version, self._cache[(base, version)]
        return None, {}
