"""Which SavedModel versions are served, loaded and switched like TF Serving does it.

``ModelManager`` watches each model's base path (``<base>/<version>/``), loads the versions its
version policy aspires to (default: the latest one), and switches to a new version only once it
has loaded; the old one is unloaded after the switch. Only versions of complete model sets are
loaded (``serving.model_set``), and the models of one set switch together, in one step, once
every one of them has loaded: the server never serves two trainings' models side by side.
Requests already running keep the ``LoadedModel`` they started with, so a switch never fails one. A version that fails to load is
logged (with paths relative to the model's base, never the server's absolute ones), reported in
its status, and never replaces a good one (a version's warm-up requests, ``serving.warmup``, are
replayed as part of its load); it is retried as soon as any of its files changes (a
copy filled in place loads once complete), and otherwise every ``retry_seconds`` up to
``max_load_retries`` times (TF Serving's ``--load_retry_interval_micros`` and
``--max_num_load_retries``). Versions deleted from disk leave the status too.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.config import model_server_config_pb2

from crossrec.errors import ConfigError
from serving.layout import METADATA_FILE, versions
from serving.model_set import is_complete, set_in
from serving.warmup import replay_warmup

log = logging.getLogger("crossrec.serving")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass
class ModelSpec:
    name: str
    base_path: Path
    policy: str = "latest"  # latest | all | specific
    num_versions: int = 1
    specific: tuple[int, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)

    def aspired(self, present: list[int]) -> list[int]:
        if self.policy == "all":
            return present
        if self.policy == "specific":
            return [v for v in present if v in self.specific]
        return present[-self.num_versions:] if present else []


@dataclass
class LoadedModel:
    name: str
    version: int
    path: Path
    module: object  # what tf.saved_model.load returned (keeps its variables alive)
    signatures: dict  # name -> ConcreteFunction
    signature_defs: dict  # name -> tensorflow.core.protobuf.meta_graph_pb2.SignatureDef
    metadata: dict = field(default_factory=dict)  # crossrec's assets/crossrec_metadata.json ({} if none)
    warmup_requests: int = 0  # warm-up requests replayed before it served


@dataclass
class VersionStatus:
    state: str
    error: str = ""


def register_custom_ops() -> None:
    """Makes the ops of TF Text (the item encoder's tokenizer) and ScaNN (ScaNN indexes) known to
    TensorFlow before a SavedModel that uses them is loaded; stock TF Serving lacks both."""
    for module in ("tensorflow_text", "scann"):
        try:
            __import__(module)
        except ImportError:  # then only models without those ops load
            log.debug("%s is not installed", module)


def load_saved_model(name: str, version: int, path: Path) -> LoadedModel:
    register_custom_ops()
    module = tf.saved_model.load(str(path))
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    signature_defs = dict(proto.meta_graphs[0].signature_def)
    signature_defs.pop("__saved_model_init_op", None)
    metadata_file = path / "assets" / METADATA_FILE
    metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}
    loaded = LoadedModel(name, version, path, module, dict(module.signatures), signature_defs,
                         metadata if isinstance(metadata, dict) else {})
    # before the version serves, as TF Serving does: a failure here fails the load
    loaded.warmup_requests = replay_warmup(path, loaded.signatures)
    if loaded.warmup_requests:
        log.info("model %s version %s: replayed %d warm-up requests", name, version, loaded.warmup_requests)
    return loaded


def _same_files(a: Path, b: Path, skip: Path) -> bool:
    """Whether folders ``a`` and ``b`` hold the same files with the same bytes (``skip`` aside)."""
    def files(root):
        return sorted(f.relative_to(root) for f in root.rglob("*") if f.is_file() and f.relative_to(root) != skip)

    names = files(a)
    return names == files(b) and all(filecmp.cmp(a / f, b / f, shallow=False) for f in names)


def _files_stamp(path: Path) -> tuple:
    """(name, size, mtime) of every file in a version folder: changes whenever a file is written."""
    stamp = []
    for root, _, files in os.walk(path):
        for name in files:
            try:
                info = os.stat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            stamp.append((os.path.relpath(os.path.join(root, name), path), info.st_size, info.st_mtime_ns))
    return tuple(sorted(stamp))


def specs_from_config_file(path: str | Path) -> list[ModelSpec]:
    """A TF Serving ``--model_config_file`` (text-format ``ModelServerConfig``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--model_config_file {path}: file not found")
    try:
        config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"--model_config_file {path}: not a ModelServerConfig text proto: {exc}") from None
    specs = []
    for entry in config.model_config_list.config:
        policy = entry.model_version_policy
        which = policy.WhichOneof("policy_choice")
        spec = ModelSpec(entry.name, Path(entry.base_path))
        if which == "all":
            spec.policy = "all"
        elif which == "specific":
            spec.policy, spec.specific = "specific", tuple(policy.specific.versions)
        elif which == "latest":
            spec.num_versions = max(1, policy.latest.num_versions)
        spec.labels = dict(entry.version_labels)
        specs.append(spec)
    if not specs:
        raise ConfigError(f"--model_config_file {path}: no model in model_config_list")
    return specs


class ModelManager:
    """Loads, serves and unloads model versions; ``poll()`` once, or ``start()`` a watcher thread."""

    def __init__(self, specs: list[ModelSpec], *, loader=load_saved_model, retry_seconds: float = 60.0,
                 max_load_retries: int = 5):
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"model names must be unique, got {names}")
        self.specs = {s.name: s for s in specs}
        self.loader = loader
        self._lock = threading.Lock()
        self._served: dict[str, dict[int, LoadedModel]] = {s.name: {} for s in specs}
        # loaded, waiting for the other models of their set before they serve
        self._loaded: dict[str, dict[int, LoadedModel]] = {s.name: {} for s in specs}
        self._status: dict[str, dict[int, VersionStatus]] = {s.name: {} for s in specs}
        # (name, version) -> (the files' stamp when it failed, when, retries so far)
        self._failed: dict[tuple[str, int], tuple[tuple, float, int]] = {}
        self.load_failures: dict[str, int] = {}  # model -> failed loads so far (for monitoring)
        self.retry_seconds = retry_seconds
        self.max_load_retries = max_load_retries
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lookups (any thread) ------------------------------------------------------------------
    def get(self, name: str, version: int | None = None, label: str | None = None) -> LoadedModel:
        """The served version (latest by default). Raises KeyError with a TF Serving-like message."""
        with self._lock:
            served = self._served.get(name)
            if served is None:
                raise KeyError(f"Servable not found for request: Latest({name})")
            if label is not None:
                if label not in self.specs[name].labels:
                    raise KeyError(f"Unrecognized servable version label: {label}")
                version = self.specs[name].labels[label]
            if version is None:
                if not served:
                    raise KeyError(f"Servable not found for request: Latest({name})")
                return served[max(served)]
            if version not in served:
                raise KeyError(f"Servable not found for request: Specific({name}, {version})")
            return served[version]

    def status(self, name: str) -> dict[int, VersionStatus]:
        with self._lock:
            if name not in self._status:
                raise KeyError(f"Could not find any versions of model {name}")
            return dict(self._status[name])

    def label_version(self, name: str, label: str) -> int:
        """The version a label names (KeyError with TF Serving's message if none)."""
        spec = self.specs.get(name)
        if spec is None:
            raise KeyError(f"Could not find any versions of model {name}")
        if label not in spec.labels:
            raise KeyError(f"Unrecognized servable version label: {label}")
        return spec.labels[label]

    def served_versions(self) -> dict[str, list[int]]:
        """{model: the versions it serves now}, all read at one instant."""
        with self._lock:
            return {name: sorted(served) for name, served in self._served.items()}

    def ready(self) -> bool:
        with self._lock:
            return all(self._served[name] for name in self.specs)

    # -- loading (the watcher thread) -----------------------------------------------------------
    def poll(self) -> None:
        """Loads what each model aspires to, then switches every model set whose members have all
        loaded (in one step under the lock), then unloads what newer versions replaced."""
        present = {name: self._present(spec) for name, spec in self.specs.items()}
        for spec in self.specs.values():
            self._load_new(spec, present[spec.name])
        with self._lock:
            self._switch_sets()
            for spec in self.specs.values():
                self._unload_replaced(spec, present[spec.name])

    def _present(self, spec: ModelSpec) -> list[int]:
        """The versions on disk that may serve: those of complete model sets (``serving.model_set``)."""
        return [v for v in versions(spec.base_path) if is_complete(spec.base_path, v)]

    def _load_new(self, spec: ModelSpec, present: list[int]) -> None:
        for version in spec.aspired(present):
            if version in self._served[spec.name] or version in self._loaded[spec.name]:
                continue
            path = spec.base_path / str(version)
            stamp = _files_stamp(path)
            failed = self._failed.get((spec.name, version))
            retries = 0
            if failed is not None:
                same, since, retries = failed[0] == stamp, time.monotonic() - failed[1], failed[2]
                if same and (since < self.retry_seconds or retries >= self.max_load_retries):
                    continue
                retries = retries + 1 if same else 0
            self._set_status(spec.name, version, VersionStatus(LOADING))
            try:
                loaded = self._copy_of_loaded(spec.name, version, path) or self.loader(spec.name, version, path)
            except Exception as exc:  # a broken version never replaces a good one
                text = str(exc).strip().replace(str(spec.base_path.resolve()), spec.name)
                text = text.replace(str(spec.base_path), spec.name)
                message = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
                log.error("model %s version %s failed to load, keeping the versions already served: %s",
                          spec.name, version, message)
                self._failed[(spec.name, version)] = (stamp, time.monotonic(), retries)
                self.load_failures[spec.name] = self.load_failures.get(spec.name, 0) + 1
                self._set_status(spec.name, version, VersionStatus(END, message))
                continue
            self._failed.pop((spec.name, version), None)
            with self._lock:
                self._loaded[spec.name][version] = loaded

    def _copy_of_loaded(self, name: str, version: int, path: Path) -> LoadedModel | None:
        """The version this one's metadata says it was copied from (``copied_from``: a catalogue
        change leaves the ``item_encoder`` as it was), when that one is loaded here and every file
        but the metadata is byte-identical: served again under the new number, not loaded twice."""
        metadata_file = path / "assets" / METADATA_FILE
        metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}
        source = metadata.get("copied_from") if isinstance(metadata, dict) else None
        with self._lock:
            old = self._served[name].get(source) or self._loaded[name].get(source)
        if old is None or not _same_files(old.path, path, skip=Path("assets") / METADATA_FILE):
            return None
        log.info("model %s version %s: the files of version %s, served again", name, version, source)
        return replace(old, version=version, path=path, metadata=metadata)

    def _set_members(self, name: str, version: int) -> list[str]:
        """The models of this server in the set of ``name``'s ``version`` (just ``name`` without a set)."""
        info = set_in(getattr(self._loaded[name][version], "metadata", {}), version)
        if info is None:
            return [name]
        root = self.specs[name].base_path.parent.resolve()
        by_folder = {spec.base_path.resolve(): spec.name for spec in self.specs.values()}
        return [by_folder[root / m] for m in info["models"] if root / m in by_folder] or [name]

    def _switch_sets(self) -> None:
        """Serves each loaded version once every model of its set on this server has loaded it."""
        for name in self.specs:
            for version in list(self._loaded[name]):
                if version not in self._loaded[name]:
                    continue  # switched with an earlier member of its set
                members = self._set_members(name, version)
                if not all(version in self._loaded[m] or version in self._served[m] for m in members):
                    continue  # a member is still loading (or failed: the set waits, the old one serves)
                for member in members:
                    if version in self._loaded[member]:
                        self._served[member][version] = self._loaded[member].pop(version)
                        self._status[member][version] = VersionStatus(AVAILABLE)
                        log.info("model %s version %s is available", member, version)

    def _unload_replaced(self, spec: ModelSpec, present: list[int]) -> None:
        """Unloads what is no longer aspired, but only once something newer serves in its place."""
        aspired = spec.aspired(present)
        served = self._served[spec.name]
        for version in [v for v in self._loaded[spec.name] if v not in aspired]:
            del self._loaded[spec.name][version]  # loaded, never served, no longer wanted
            self._status[spec.name][version] = VersionStatus(END)
        for version in [v for v in self._status[spec.name] if v not in present and v not in served]:
            del self._status[spec.name][version]  # deleted from disk: no status left behind
            self._failed.pop((spec.name, version), None)
        keep = {v for v in aspired if v in served}
        if keep:
            for version in [v for v in served if v not in keep]:
                self._status[spec.name][version] = VersionStatus(END)
                del served[version]  # requests holding it finish with their own reference
                log.info("model %s version %s unloaded", spec.name, version)

    def _set_status(self, name, version, status):
        with self._lock:
            self._status[name][version] = status

    def start(self, poll_seconds: float = 1.0) -> None:
        self.poll()
        if poll_seconds <= 0:
            return

        def watch():
            while not self._stop.wait(poll_seconds):
                try:
                    self.poll()
                except Exception:  # keep watching whatever happens to one poll
                    log.exception("polling the model folders failed")

        self._thread = threading.Thread(target=watch, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def wait_until_ready(manager: ModelManager, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if manager.ready():
            return True
        time.sleep(0.05)
    return manager.ready()
