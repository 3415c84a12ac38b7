"""Model sets: the models of one training, published together under one version number.

A publish (``crossrec export``, ``crossrec retrain``) writes every model of a set (retrieval,
ranking, recommender, item_encoder) as the *same* version ``V``: each one is first written aside
under a hidden name (``<base>/<model>/.tmp-V-<pid>-*``, which TF Serving and crossrec ignore),
and only when all of them are written are they renamed into place, one after another. Each
version's metadata (``assets/crossrec_metadata.json``) names its set::

    "set": {"version": V, "id": "<what was trained and how it is exported>", "models": [...]}

A version is **complete** when every model of its set that exists under the base has that
version. ``crossrec serve`` loads only complete versions and switches all models of a set at
once (``serving.models``), so it never serves a mix of two trainings. A publish that was killed
between two renames leaves an incomplete set; the next publish into the same base finishes it
when it is the same set (same trained models, same export config: nothing is trained or written
twice) and otherwise rolls it back (removes its versions). Publishes into one base hold a lock
(``.crossrec-publish.lock``), so an incomplete set found under the lock belongs to a dead process.
Versions without a set (written by hand or by an older crossrec) are each a set of their own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from serving.layout import METADATA_FILE, TMP_PREFIX, next_version, remove_abandoned, versions

LOCK_FILE = ".crossrec-publish.lock"


def set_in(metadata: dict, version: int) -> dict | None:
    """The set a version's metadata names, or None: none recorded, or recorded for another version
    number (the folder was copied or renamed by hand, e.g. to roll back: then it is a set of its own)."""
    value = metadata.get("set") if isinstance(metadata, dict) else None
    if not isinstance(value, dict) or not isinstance(value.get("models"), list) or value.get("version") != version:
        return None
    return value


def set_of(version_dir: Path) -> dict | None:
    """The set the version in ``version_dir`` belongs to (see ``set_in``)."""
    path = Path(version_dir) / "assets" / METADATA_FILE
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return set_in(metadata, int(Path(version_dir).name)) if Path(version_dir).name.isdigit() else None


def missing_members(base: Path, info: dict) -> list[str]:
    """The models of set ``info`` whose folder exists under ``base`` but lacks the set's version."""
    version = str(info["version"])
    return [m for m in info["models"]
            if (base / m).is_dir() and not (base / m / version / "saved_model.pb").exists()]


def is_complete(model_dir: Path, version: int) -> bool:
    """Whether ``<model_dir>/<version>`` may serve: its set (if any) is whole on disk."""
    info = set_of(Path(model_dir) / str(version))
    return info is None or not missing_members(Path(model_dir).parent, info)


def complete_versions(model_dir: Path) -> list[int]:
    return [v for v in versions(model_dir) if is_complete(model_dir, v)]


def latest_complete(model_dir: Path) -> int | None:
    found = complete_versions(model_dir)
    return found[-1] if found else None


def incomplete_sets(base: Path) -> list[dict]:
    """Every set under ``base`` that some model has but not all: {version, id, models, present}."""
    found: dict[tuple[int, str], dict] = {}
    for model_dir in sorted(p for p in Path(base).iterdir() if p.is_dir() and not p.name.startswith(".")):
        for version in versions(model_dir):
            info = set_of(model_dir / str(version))
            if info is None or not missing_members(Path(base), info):
                continue
            entry = found.setdefault((version, str(info.get("id"))), {**info, "present": []})
            entry["present"].append(model_dir.name)
    return [found[key] for key in sorted(found)]


@dataclass
class SetPublish:
    """One set being published: ``folder(model)`` is where to write each model still ``missing``."""

    base: Path
    version: int
    id: str
    models: list[str]
    missing: list[str]
    resumed: list[str] = field(default_factory=list)  # already in place from an interrupted publish
    staged: dict[str, Path] = field(default_factory=dict)

    @property
    def info(self) -> dict:
        return {"version": self.version, "id": self.id, "models": list(self.models)}

    def folder(self, model: str) -> Path:
        model_dir = self.base / model
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{self.version}-{os.getpid()}-", dir=model_dir))
        self.staged[model] = tmp
        return tmp

    def commit(self) -> None:
        """Renames every staged model into place: the set becomes complete with the last one."""
        unwritten = [m for m in self.missing if m not in self.staged]
        if unwritten:
            raise RuntimeError(f"model set {self.version}: {', '.join(unwritten)} not written")
        for model in self.missing:
            final = self.base / model / str(self.version)
            if final.exists():
                raise FileExistsError(f"{final} already exists; versions are immutable")
            os.rename(self.staged[model], final)  # atomic on one file system
        self.staged.clear()


@contextlib.contextmanager
def publish_lock(base: Path) -> Iterator[None]:
    """Held for a whole publish into ``base``; released by the OS if the process dies."""
    base.mkdir(parents=True, exist_ok=True)
    with open(base / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another publish into {base} to finish", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def roll_back(base: Path, info: dict) -> list[Path]:
    """Removes the versions of an incomplete set (each renamed aside first, so it leaves in one step)."""
    removed = []
    for model in info["present"]:
        folder = base / model / str(info["version"])
        if (set_of(folder) or {}).get("id") != info.get("id"):
            continue
        aside = folder.with_name(f"{TMP_PREFIX}rollback-{info['version']}-{os.getpid()}")
        os.rename(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)
        removed.append(folder)
    return removed


def _open(base: Path, models: list[str], set_id: str, version: int | None, say) -> SetPublish:
    """The set to write: an interrupted publish of the same set resumed, any other one rolled back.
    Only sets newer than every complete one count as interrupted (an older set missing a model was
    pruned by hand: left as it is)."""
    newest = max([latest_complete(p) or 0 for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")],
                 default=0)
    for info in (i for i in incomplete_sets(base) if i["version"] > newest):
        same = info.get("id") == set_id and sorted(info["models"]) == sorted(models) and \
            version in (None, info["version"])
        if same:
            say(f"resuming the interrupted publish of version {info['version']} ({', '.join(info['present'])} "
                "already in place)")
            present = set(info["present"])
            return SetPublish(base, info["version"], set_id, list(models),
                              [m for m in models if m not in present], [m for m in models if m in present])
        removed = roll_back(base, info)
        say(f"rolled back the interrupted publish of version {info['version']} (another training's): removed "
            + ", ".join(str(p.relative_to(base)) for p in removed))
    if version is None:
        existing = [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]
        version = max([next_version(p) for p in existing] + [next_version(base / m) for m in models] + [1])
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    taken = [m for m in models if (base / m / str(version)).exists()]
    if taken:
        raise FileExistsError(f"{base}/{taken[0]}/{version} already exists; versions are immutable (leave "
                              "--version out to take the next free one)")
    return SetPublish(base, version, set_id, list(models), list(models))


@contextlib.contextmanager
def publish_set(base: str | Path, models: list[str], set_id: str, version: int | None = None,
                say=lambda message: None) -> Iterator[SetPublish]:
    """Yields the set to write (its ``version``, the ``missing`` models and a ``folder`` for each);
    on success renames them all into place. On an error the staged folders are removed and
    nothing new becomes visible. Publishes into one base wait for each other."""
    base = Path(base)
    with publish_lock(base):
        for model_dir in [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]:
            remove_abandoned(model_dir)  # what killed publishes left aside
        publish = _open(base, models, set_id, version, say)
        try:
            yield publish
            publish.commit()
        finally:
            for tmp in publish.staged.values():
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def new_version(model_dir: str | Path, version: int | None = None) -> Iterator[tuple[Path, int]]:
    """One model's next version (or ``version``) published on its own: yields (folder to write,
    version) and renames the folder into place on success; on an error nothing is published."""
    model_dir = Path(model_dir)
    version = next_version(model_dir) if version is None else version  # this model's own next
    with publish_set(model_dir.parent, [model_dir.name], set_id="", version=version) as publish:
        yield publish.folder(model_dir.name), publish.version
