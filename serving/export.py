"""``crossrec export``: the trained towers and rankers as versioned SavedModels for TF Serving.

Four models, each a SavedModel with one named signature (``serving_default``) and explicit
input/output names, written to ``<base>/<model>/<version>/`` (see ``serving.layout``):

``retrieval``     (signatures ``serving_default``, and ``candidates``: the same without because_*)
                  history_item_ids [b, h] string, history_domains [b, h] string (oldest first,
                  "" = padding), target_domain [b] string, k [b] int32 (<= max_k),
                  exclude_history [b] bool  ->  item_ids [b, k] string, scores [b, k] float32,
                  history_known [b], history_in_domain [b] int32 (history items the model used),
                  because_item_ids, because_domains [b, k] string, because_weights [b, k] float32
                  (the history item that most drove each answer, and its share)
``ranking``       history_item_ids, history_domains, target_domain, candidate_item_ids [b, c]
                  string  ->  engagement [b, c] (logit; unknown candidates get -1e9), rating [b, c]
``recommender``   the retrieval inputs -> retrieve ``ranking.candidates`` -> rank -> top k:
                  item_ids [b, k], scores [b, k] (ranker), retrieval_scores [b, k], history counts, because_*;
                  and ``feed`` (``serving.feed``): one list across every domain, with diversity and
                  calibration set per request
``item_encoder``  text [b] string, domain [b] string -> embedding [b, e]: index a new item from
                  its text without retraining (the only model with TF Text ops: its tokenizer)

The pieces live beside this module: ``serving.parts`` (what an export is built from),
``serving.lookups`` (item keys and domains as in-graph tables), ``serving.index`` (the per-domain
top-k index: brute force, which stock ``tensorflow/serving`` loads, or ScaNN) and
``serving.signatures`` (one ``tf.Module`` per model). This module owns the procedure: build each
model, write it aside, rename it into place as the next version.
Each version carries ``assets/crossrec_metadata.json``: config, data fingerprint, evaluation
metrics and the index's parameters and measured recall.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

import crossrec
from crossrec.config import Config
from crossrec.errors import ConfigError
from crossrec.typed import to_dict
from serving import training_state
from serving.feed import FeedRecommenderModule
from serving.index import DomainIndex
from serving.layout import METADATA_FILE, write_file_atomically
from serving.model_set import publish_set
from serving.parts import ExportParts, index_recall, load_parts
from serving.signatures import ItemEncoderModule, RankingModule, RetrievalModule
from serving.warmup import BATCH_SIZES, history_requests, write_warmup

MODELS = ("retrieval", "ranking", "recommender", "item_encoder")


@dataclass
class ExportResult:
    versions: dict[str, int]
    paths: dict[str, Path]
    metadata: dict
    seconds: float



def export_models(retrieval_dir: str | Path, out: str | Path = "saved_models", *, ranking_dir: str | Path | None = None,
                  config: Config | None = None, models=None, version: int | None = None,
                  recall_queries: np.ndarray | None = None, progress: bool = True,
                  extra_metadata: dict | None = None, reuse: dict[str, Path] | None = None,
                  link_state: bool = False, parts: ExportParts | None = None) -> ExportResult:
    """Publishes ``models`` under ``out`` as one model set (``serving.model_set``): the next
    version (or ``version``) of every model, written aside and renamed into place together. An
    interrupted publish of the same runs is finished instead (only its missing models are
    written); one of other runs is rolled back. ``extra_metadata`` goes into every version's.
    ``reuse``: {model: a version folder of that very model} (what a catalogue change leaves as it
    is: ``item_encoder``), copied with this version's metadata (``copied_from``: its version, so a
    server that has it loaded serves it again without a load) instead of built and traced again.
    ``link_state``: the training state goes into the store as hard links to the run folders'
    files (``training_state.store``), for runs that are never rewritten in place. ``parts``: these
    runs' parts when the caller holds their models already (``serving.parts.assemble_parts``)."""
    started = time.perf_counter()
    parts = parts or load_parts(retrieval_dir, ranking_dir, config)
    config = parts.config
    models = _checked_models(models, ranking_dir, parts)
    state_fingerprint = training_state.fingerprint(retrieval_dir, ranking_dir)
    set_id = _set_id(state_fingerprint, config, models)
    say = (lambda message: print(message, flush=True)) if progress else (lambda message: None)
    result = ExportResult({}, {}, {}, 0.0)
    runs = (retrieval_dir, ranking_dir, state_fingerprint, link_state)
    with publish_set(out, models, set_id, version, say) as publish:
        if publish.missing:
            result.metadata = _write_set(publish, parts, runs, recall_queries, say, extra_metadata or {}, reuse or {})
    for name in models:
        result.versions[name] = publish.version
        result.paths[name] = Path(out) / name / str(publish.version)
        result.metadata.setdefault(name, json.loads((result.paths[name] / "assets" / METADATA_FILE).read_text()))
    if "retrieval" in models:
        training_state.prune(out)
    result.seconds = time.perf_counter() - started
    return result


def _checked_models(models, ranking_dir, parts) -> list[str]:
    models = list(models or (MODELS if ranking_dir is not None else ("retrieval", "item_encoder")))
    unknown = set(models) - set(MODELS)
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODELS)}")
    if {"ranking", "recommender"} & set(models) and parts.ranker is None:
        raise ConfigError("the ranking and recommender models need a trained ranker: pass --ranking DIR "
                          "(from `crossrec train ranking`)")
    return models


def _set_id(state_fingerprint: str, config: Config, models: list[str]) -> str:
    """What identifies a set: the trained runs' files, the served config and the models."""
    digest = hashlib.sha256(state_fingerprint.encode())
    digest.update(json.dumps([served_config(config), sorted(models)], sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


def _write_set(publish, parts, runs, recall_queries, say, extra: dict, reuse: dict) -> dict:
    """Builds and saves every model the set still lacks into its staged folder (or copies the one
    ``reuse`` names); returns each written model's metadata. ``runs``: (retrieval run folder,
    ranking run folder or None, their training state's fingerprint, whether the store may link to
    their files)."""
    export = parts.config.export
    index_info = _build_index(parts, recall_queries)
    builders = {"retrieval": RetrievalModule, "ranking": RankingModule, "recommender": FeedRecommenderModule,
                "item_encoder": ItemEncoderModule}
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"] if export.index == "scann" else None)
    # retraining's state (user histories) goes beside the serving folder, never into it
    state = training_state.store(publish.base, *runs) if "retrieval" in publish.missing else None
    written = {}
    for name in publish.missing:
        if name in reuse:
            say(f"copying {name} (version {publish.version}): unchanged since {reuse[name]}")
            written[name] = _copy_version(reuse[name], publish.folder(name), {
                "version": publish.version, "created": _now(),
                "set": publish.info, "copied_from": int(Path(reuse[name]).name), **extra})
            continue
        say(f"exporting {name} (version {publish.version})")
        module = builders[name](parts)
        folder = publish.folder(name)
        metadata = {**_metadata(name, publish.version, module, parts, index_info, state),
                    "set": publish.info, **extra}
        _save_module(module, folder, metadata, options)
        if export.warmup:
            write_warmup(folder, name, warmup_requests(name, parts))
        written[name] = metadata
    return written


def _build_index(parts, recall_queries: np.ndarray | None) -> dict:
    """The per-domain index over the item embeddings (``parts.index``); what it is and, with
    ``recall_queries``, its recall against exact search and its search time."""
    config = parts.config
    export = config.export
    k = max(export.max_k, parts.served_list.candidates)
    parts.index = DomainIndex(parts.catalogue, parts.item_embeddings, k=k, history_length=config.towers.history_length,
                              kind=export.index, scann={"leaves": export.scann_leaves,
                                                        "leaves_to_search": export.scann_leaves_to_search,
                                                        "reorder": export.scann_reorder},
                              quantize=export.quantize)
    index_info = {**parts.index.parameters, "index_bytes": parts.index.nbytes,
                  "embedding_table_bytes": parts.lookups.embeddings.nbytes}
    if recall_queries is not None and len(recall_queries):
        index_info.update(index_recall(parts, recall_queries))
        index_info["recall_queries"] = int(len(recall_queries))
    return index_info


def _metadata(name: str, number: int, module, parts, index_info: dict, state) -> dict:
    """What ``assets.extra/crossrec/crossrec_metadata.json`` of one version says."""
    config = parts.config
    export = config.export
    return {"model": name, "version": number, "crossrec_version": crossrec.__version__,
            "created": _now(),
            "signature": signature_description(module.serve),
            **({"feed_signature": signature_description(module.feed)} if hasattr(module, "feed") else {}),
            "max_k": min(export.max_k, parts.served_list.candidates) if name == "recommender" else export.max_k,
            **({"max_candidates": export.max_candidates} if name == "ranking" else {}),
            "domains": parts.lookups.served, "zero_shot_domains": parts.lookups.zero_shot,
            "history_length": config.towers.history_length,
            "index": index_info if name in ("retrieval", "recommender") else None,
            **parts.metadata, "config": served_config(config),
            **({"training_state": state} if name == "retrieval" else {})}


def _now() -> str:
    """A version's ``created`` time (UTC, ISO 8601)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def served_config(config) -> dict:
    """The config as a served version records it: every file path of the machine that trained it
    (data, encoder preset, cache) left out; the data is identified by ``data_fingerprint``."""
    values = to_dict(config)
    data = values["data"]
    for key in ("interactions", "items", "users"):
        if data.get(key) is not None:
            data[key] = "<path withheld>"
    data["amazon_files"] = {domain: dict.fromkeys(files, "<path withheld>")
                            for domain, files in (data.get("amazon_files") or {}).items()}
    for key in ("preset", "cache_dir", "adapted"):
        if values["encoder"].get(key) is not None:
            values["encoder"][key] = Path(values["encoder"][key]).name
    return values


def _save_module(module, folder: Path, metadata: dict, options) -> None:
    """``module`` as a SavedModel in ``folder`` (the version's temporary folder), its metadata as
    an asset. The asset's source is written inside that folder too, never in TMPDIR: a killed
    export leaves only the temporary folder, which the next export removes."""
    scratch = Path(folder) / ".metadata-source"
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2, default=str))
    module.metadata = tf.saved_model.Asset(str(path))
    tf.saved_model.save(module, str(folder), options=options, signatures={
        "serving_default": module.serve, **getattr(module, "extra_signatures", {})})
    shutil.rmtree(scratch)


def _copy_version(source: Path, folder: Path, changes: dict) -> dict:
    """A served version's files copied into ``folder`` (staged), its metadata updated by ``changes``."""
    shutil.copytree(source, folder, dirs_exist_ok=True)
    path = Path(folder) / "assets" / METADATA_FILE
    metadata = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps(metadata, indent=2, default=str))
    return metadata


def warmup_requests(name: str, parts) -> list[dict[str, np.ndarray]]:
    """A few requests per served domain for the version's warm-up file (``serving.warmup``)."""
    from crossrec import schema

    items = parts.catalogue.items
    firsts = items.groupby(schema.DOMAIN, sort=True).head(3)
    history = list(zip(firsts[schema.DOMAIN].astype(str), firsts[schema.ITEM_ID].astype(str), strict=True))
    domains = parts.lookups.served
    config = parts.config
    if name == "item_encoder":
        column = schema.TITLE if schema.TITLE in items else schema.ITEM_ID
        texts = [str(t).encode() for t in items[column].head(max(BATCH_SIZES))] or [b"item"]
        return [{"text": np.array([texts[i % len(texts)] for i in range(rows)], dtype=object),
                 "domain": np.array([domain.encode()] * rows, dtype=object)}
                for domain in domains for rows in BATCH_SIZES]
    if name == "ranking":
        def extra(rows, domain):
            candidates = [i.encode() for d, i in history if d == domain] or [b""]
            return {"candidate_item_ids": np.array([candidates] * rows, dtype=object)}
    else:
        limit = config.export.max_k if name == "retrieval" else min(config.export.max_k, parts.served_list.candidates)
        def extra(rows, domain):
            return {"k": np.full(rows, min(10, limit), np.int32), "exclude_history": np.ones(rows, bool)}
    return history_requests(domains, history, config.towers.history_length, extra)


def signature_description(function) -> dict:
    concrete = function.get_concrete_function()
    inputs = {spec.name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
              for spec in concrete.structured_input_signature[0]}
    outputs = {k: {"dtype": v.dtype.name, "shape": v.shape.as_list()} for k, v in concrete.structured_outputs.items()}
    return {"inputs": inputs, "outputs": outputs}



def write_model_config(base: str | Path, serving_root: str = "/models") -> Path:
    """``<base>/models.config``: a TF Serving ModelServerConfig listing the models under ``base``
    that stock TF Serving can load (not ``item_encoder``: its tokenizer needs TF Text ops), with
    base paths as seen inside the tensorflow/serving container (``base`` mounted at
    ``serving_root``)."""
    base = Path(base)
    entries = []
    for model in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if model.name == "item_encoder":
            continue
        entries.append(f'  config {{\n    name: "{model.name}"\n    base_path: "{serving_root}/{model.name}"\n'
                       f'    model_platform: "tensorflow"\n  }}')
    path = base / "models.config"
    write_file_atomically(path, "# For tensorflow/serving (see docs/serving.md). item_encoder is served by "
                                "`crossrec serve`:\n# its tokenizer needs TF Text ops that stock TF Serving does "
                                "not have.\nmodel_config_list {\n" + "\n".join(entries) + "\n}\n")
    return path
