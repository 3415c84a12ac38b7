"""``crossrec export``: the trained towers and rankers as versioned SavedModels for TF Serving.

Four models, each a SavedModel with one named signature (``serving_default``) and explicit
input/output names, written to ``<base>/<model>/<version>/`` (see ``serving.layout``):

``retrieval``     history_item_ids [b, h] string, history_domains [b, h] string (oldest first,
                  "" = padding), target_domain [b] string, k [b] int32 (<= max_k),
                  exclude_history [b] bool  ->  item_ids [b, k] string, scores [b, k] float32,
                  history_known [b], history_in_domain [b] int32 (history items the model used)
``ranking``       history_item_ids, history_domains, target_domain, candidate_item_ids [b, c]
                  string  ->  engagement [b, c] (logit; unknown candidates get -1e9), rating [b, c]
``recommender``   the retrieval inputs -> retrieve ``ranking.candidates`` -> rank -> top k:
                  item_ids [b, k], scores [b, k] (ranker), retrieval_scores [b, k], history counts
``item_encoder``  text [b] string, domain [b] string -> embedding [b, e]: index a new item from
                  its text without retraining (the only model with TF Text ops: its tokenizer)

The index sits behind one interface (``DomainIndex``): one TFRS ``factorized_top_k`` layer per
domain, ``BruteForce`` (exact; only core TF ops, so stock ``tensorflow/serving`` loads it) or
``ScaNN`` (approximate; needs the ``google/tf-serving-scann`` build). Item keys are
``(domain, item_id)``: lookups are ``tf.lookup.StaticHashTable``s inside the graph.
Each version carries ``assets/crossrec_metadata.json``: config, data fingerprint, evaluation
metrics and the index's parameters and measured recall.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

import crossrec
import crossrec.errors
from crossrec import schema
from crossrec.config import Config, ExportConfig, to_dict
from crossrec.errors import ConfigError
from crossrec.features import Catalogue
from serving.layout import METADATA_FILE, TRAINING_STATE, new_version
from towers.model import user_query

MODELS = ("retrieval", "ranking", "recommender", "item_encoder")
# What each retrieval version carries for `crossrec retrain` (see serving.layout.TRAINING_STATE).
TOWER_STATE = ("towers.weights.h5", "catalogue.parquet", "model_spec.json", "config.yaml", "run_summary.json", "data")
RANKING_STATE = ("teacher.weights.h5", "student.weights.h5", "ranking_spec.json", "config.yaml", "run_summary.json")
KEY_SEPARATOR = "\x1f"  # joins domain and item id into one lookup key
UNKNOWN_SCORE = -1e9


def item_keys(domains, item_ids):
    return tf.strings.join([domains, item_ids], separator=KEY_SEPARATOR)


class Lookups(tf.Module):
    """Item keys <-> rows, domain names -> indices, the item embedding table.

    Every catalogue domain is served (``served`` = ``catalogue.domain_names``), including one the
    towers never trained on: requests name it, the index searches its items, and the towers see
    it as domain 0, the domain-agnostic (zero-shot) path."""

    def __init__(self, catalogue: Catalogue, item_embeddings: np.ndarray, history_length: int):
        super().__init__(name="lookups")
        items = catalogue.items
        keys = (items[schema.DOMAIN].astype(str) + KEY_SEPARATOR + items[schema.ITEM_ID].astype(str)).tolist()
        self.rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(items["row"].to_numpy(np.int32))),
            default_value=0)
        self.served = list(catalogue.domain_names)
        self.zero_shot = catalogue.zero_shot_domains
        self.domain_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(self.served or [""]),
                                                tf.constant(np.arange(1, max(len(self.served), 1) + 1, dtype=np.int32))),
            default_value=0)
        # served position -> the towers' domain index (0 for zero-shot domains)
        self.model_domain = tf.constant([0] + [catalogue.domain_index(d) for d in self.served], tf.int32)
        self.item_ids = tf.constant(np.concatenate([[""], items[schema.ITEM_ID].astype(str).to_numpy()]).astype(bytes))
        self.item_domain = tf.Variable(catalogue.item_domain, trainable=False, name="item_domain")
        self.item_served = tf.Variable(catalogue.served_domain, trainable=False, name="item_served_domain")
        self.embeddings = tf.Variable(item_embeddings.astype(np.float32), trainable=False, name="item_embeddings")
        self.history_length = int(history_length)

    def domain_index(self, names):
        """Domain names -> served positions (1-based); an unknown name is INVALID_ARGUMENT."""
        index = self.domain_table.lookup(names)
        known = ", ".join(self.served)
        check = tf.debugging.assert_positive(index, message=f"target_domain: unknown domain; known domains: {known}")
        with tf.control_dependencies([check]):
            return tf.identity(index)

    def history_rows(self, item_ids, domains):
        """[b, h] ids + domains (oldest first, "" = padding) -> [b, H] rows, right-aligned, the
        most recent H known items (unknown items are dropped, as a model never saw them)."""
        rows = self.rows.lookup(item_keys(domains, item_ids))
        present = tf.cast(rows > 0, tf.int32)
        order = tf.argsort(present, axis=1, stable=True)  # padding first, items in their order
        rows = tf.gather(rows, order, batch_dims=1)
        h = self.history_length
        return tf.pad(rows, [[0, 0], [h, 0]])[:, -h:]


class DomainIndex(tf.Module):
    """Top-k items of the query's target domain, one TFRS index per domain; excluded rows are
    left out. ``search(queries, target, exclude, k)`` -> ([b, k] scores, [b, k] rows); slots
    beyond a small domain's size hold row 0 and score -1e9."""

    def __init__(self, catalogue: Catalogue, item_embeddings: np.ndarray, *, k: int, history_length: int,
                 kind: str = "brute_force", scann: dict | None = None, scann_min_items: int = 1000):
        super().__init__(name="index")
        self.k = int(k)
        self.kind = kind
        self.history_length = int(history_length)
        self.scann_min_items = int(scann_min_items)  # smaller domains are searched exactly
        self.indexes = []
        self.sizes = []
        self.parameters = {"kind": kind, "k": self.k, "domains": {}}
        if scann is None:
            defaults = ExportConfig()
            scann = {"leaves": defaults.scann_leaves, "leaves_to_search": defaults.scann_leaves_to_search,
                     "reorder": defaults.scann_reorder}
        domain_of_row = catalogue.served_domain
        for d, name in enumerate(catalogue.domain_names, start=1):
            rows = np.flatnonzero(domain_of_row == d).astype(np.int32)
            rows = rows[rows > 0]
            vectors = tf.constant(item_embeddings[rows].astype(np.float32))
            layer, params = self._layer(len(rows), kind, scann)
            if len(rows):
                layer.index(vectors, tf.constant(rows))
            self.indexes.append(layer)
            self.sizes.append(len(rows))
            self.parameters["domains"][name] = {"items": len(rows), **params}

    def _layer(self, n: int, kind: str, scann: dict):
        if kind == "scann" and n >= self.scann_min_items:
            leaves = scann.get("leaves") or max(2, int(2 * np.sqrt(n)))
            search = scann.get("leaves_to_search") or max(1, leaves // 2)
            reorder = max(scann.get("reorder") or 0, self.k + self.history_length)
            layer = tfrs.layers.factorized_top_k.ScaNN(k=min(self.k, n), num_leaves=leaves, num_leaves_to_search=search,
                                                       num_reordering_candidates=reorder)
            return layer, {"index": "scann", "leaves": leaves, "leaves_to_search": search, "reorder": reorder}
        # small domains (and brute_force): exact search
        # the layer's default k must fit the domain: saving traces the layer with it
        return tfrs.layers.factorized_top_k.BruteForce(k=max(1, min(self.k, n))), {"index": "brute_force"}

    SCANN_MAX_QUERIES = 256  # per call: 1,024 crashed the ScaNN op (SIGSEGV) at 33k items; 256 ran

    def _query(self, layer, queries, fetch: int):
        """One index layer. A ScaNN layer refuses more than SCANN_MAX_QUERIES queries of one
        domain per request (INVALID_ARGUMENT) rather than crash the process."""
        if not isinstance(layer, tfrs.layers.factorized_top_k.BruteForce):
            check = tf.debugging.assert_less_equal(
                tf.shape(queries)[0], self.SCANN_MAX_QUERIES,
                message=f"batch: at most {self.SCANN_MAX_QUERIES} queries per domain per request with a ScaNN index")
            with tf.control_dependencies([check]):
                queries = tf.identity(queries)
        s, r = layer(queries, k=fetch)
        return s, tf.cast(r, tf.int32)

    def rows_for(self, queries: np.ndarray, domain: int, k: int) -> np.ndarray:
        """[n, k] top rows of ``domain`` for many query vectors, asked SCANN_MAX_QUERIES at a time
        (offline use: recall measurements, benchmarks)."""
        out = []
        for start in range(0, len(queries), self.SCANN_MAX_QUERIES):
            part = tf.constant(queries[start:start + self.SCANN_MAX_QUERIES], tf.float32)
            n = int(part.shape[0])
            out.append(self.search(part, tf.fill([n], domain), tf.zeros([n, 1], tf.int32), k)[1].numpy())
        return np.concatenate(out) if out else np.zeros((0, k), np.int32)

    def search(self, queries, target, exclude, k):
        """queries [b, e], target [b] domain index, exclude [b, x] rows, k: static int <= self.k."""
        n_domains = len(self.indexes) + 1
        positions = tf.dynamic_partition(tf.range(tf.shape(queries)[0]), target, n_domains)
        query_parts = tf.dynamic_partition(queries, target, n_domains)
        exclude_parts = tf.dynamic_partition(exclude, target, n_domains)
        scores_out, rows_out = [tf.zeros([0, k], tf.float32)], [tf.zeros([0, k], tf.int32)]
        for d, (layer, size) in enumerate(zip(self.indexes, self.sizes, strict=True), start=1):
            q, x = query_parts[d], exclude_parts[d]
            if size == 0:
                scores_out.append(tf.fill([tf.shape(q)[0], k], UNKNOWN_SCORE))
                rows_out.append(tf.zeros([tf.shape(q)[0], k], tf.int32))
                continue
            fetch = min(size, k + self.history_length)
            s, r = tf.cond(tf.shape(q)[0] > 0, lambda q=q, layer=layer, fetch=fetch: self._query(layer, q, fetch),
                           lambda fetch=fetch: (tf.zeros([0, fetch]), tf.zeros([0, fetch], tf.int32)))
            r = tf.cast(r, tf.int32)
            excluded = tf.reduce_any(tf.equal(r[:, :, None], x[:, None, :]) & (x[:, None, :] > 0), axis=-1)
            s = tf.where(excluded, UNKNOWN_SCORE * 2, s)
            keep = min(k, fetch)
            s, order = tf.math.top_k(s, k=keep)
            r = tf.gather(r, order, batch_dims=1)
            r = tf.where(s <= UNKNOWN_SCORE, 0, r)
            s = tf.maximum(s, UNKNOWN_SCORE)
            if keep < k:
                s = tf.pad(s, [[0, 0], [0, k - keep]], constant_values=UNKNOWN_SCORE)
                r = tf.pad(r, [[0, 0], [0, k - keep]])
            scores_out.append(s)
            rows_out.append(r)
        positions = [positions[0]] + positions[1:]
        return tf.dynamic_stitch(positions, scores_out), tf.dynamic_stitch(positions, rows_out)


def _history_specs():
    return [tf.TensorSpec([None, None], tf.string, name="history_item_ids"),
            tf.TensorSpec([None, None], tf.string, name="history_domains"),
            tf.TensorSpec([None], tf.string, name="target_domain")]


class QueryModule(tf.Module):
    """What every serving model shares: lookups and the user tower (without the text path)."""

    def __init__(self, parts: ExportParts, name: str):
        super().__init__(name=name)
        self.lookups = parts.lookups
        self.user_tower = parts.retrieval_model.user_tower
        self.user_hashing = parts.retrieval_model.user_hashing

    def _query(self, history_item_ids, history_domains, target_domain):
        rows = self.lookups.history_rows(history_item_ids, history_domains)
        target = self.lookups.domain_index(target_domain)  # served position: the index partition
        embeddings = tf.gather(self.lookups.embeddings, rows)
        query = user_query(self.user_tower, self.lookups.item_domain, self.user_hashing, embeddings, rows,
                           tf.gather(self.lookups.model_domain, target))
        return tf.cast(query, tf.float32), rows, target

    def _history_counts(self, rows, target):
        """How much of the request's history the model used: known items, and those in the target
        domain (0 = a cross-domain cold start; no known item at all = a user the model cannot place)."""
        known = rows > 0
        in_domain = known & tf.equal(tf.gather(self.lookups.item_served, rows), target[:, None])
        return {"history_known": tf.reduce_sum(tf.cast(known, tf.int32), axis=1),
                "history_in_domain": tf.reduce_sum(tf.cast(in_domain, tf.int32), axis=1)}

    def _retrieve(self, query, rows, target, exclude_history, k: int):
        exclude = tf.where(exclude_history[:, None], rows, tf.zeros_like(rows))
        return self.index.search(query, target, exclude, k)


class RetrievalModule(QueryModule):
    def __init__(self, parts: ExportParts):
        super().__init__(parts, "retrieval")
        self.index = parts.index
        self.max_k = parts.config.export.max_k
        self.serve = tf.function(self._serve, input_signature=_history_specs() + [
            tf.TensorSpec([None], tf.int32, name="k"), tf.TensorSpec([None], tf.bool, name="exclude_history")])

    def _serve(self, history_item_ids, history_domains, target_domain, k, exclude_history):
        checks = [tf.debugging.assert_positive(k, message="k: must be at least 1"),
                  tf.debugging.assert_less_equal(k, self.max_k, message=f"k: must be at most {self.max_k} "
                                                                         "(max_k fixed at export)")]
        with tf.control_dependencies(checks):
            query, rows, target = self._query(history_item_ids, history_domains, target_domain)
        scores, found = self._retrieve(query, rows, target, exclude_history, self.max_k)
        width = tf.reduce_max(k)
        beyond = tf.range(width)[None, :] >= k[:, None]
        ids = tf.gather(self.lookups.item_ids, found[:, :width])
        return {"item_ids": tf.where(beyond, tf.constant(b""), ids),
                "scores": tf.where(beyond, UNKNOWN_SCORE, scores[:, :width]), **self._history_counts(rows, target)}


class RankingModule(QueryModule):
    def __init__(self, parts: ExportParts):
        super().__init__(parts, "ranking")
        self.ranker = parts.ranker
        self.serve = tf.function(self._serve, input_signature=_history_specs() + [
            tf.TensorSpec([None, None], tf.string, name="candidate_item_ids")])

    def _rank(self, query, rows, candidates):
        out = self.ranker({"query": query, "history": rows, "candidates": candidates}, training=False)
        known = candidates > 0
        rating = out.get("rating", tf.zeros_like(out["engagement"]))  # a ranker trained without ratings: 0
        return {"engagement": tf.where(known, out["engagement"], UNKNOWN_SCORE),
                "rating": tf.where(known, rating, 0.0)}

    def _serve(self, history_item_ids, history_domains, target_domain, candidate_item_ids):
        query, rows, _ = self._query(history_item_ids, history_domains, target_domain)
        domains = tf.broadcast_to(target_domain[:, None], tf.shape(candidate_item_ids))
        candidates = self.lookups.rows.lookup(item_keys(domains, candidate_item_ids))
        return self._rank(query, rows, candidates)


class RecommenderModule(RankingModule):
    def __init__(self, parts: ExportParts):
        QueryModule.__init__(self, parts, "recommender")
        self.ranker = parts.ranker
        self.index = parts.index
        self.max_k = parts.config.export.max_k
        self.candidates = int(min(parts.config.ranking.candidates, parts.index.k))
        self.serve = tf.function(self._serve_top, input_signature=_history_specs() + [
            tf.TensorSpec([None], tf.int32, name="k"), tf.TensorSpec([None], tf.bool, name="exclude_history")])

    def _serve_top(self, history_item_ids, history_domains, target_domain, k, exclude_history):
        limit = min(self.max_k, self.candidates)
        checks = [tf.debugging.assert_positive(k, message="k: must be at least 1"),
                  tf.debugging.assert_less_equal(k, limit, message=f"k: must be at most {limit} (the recommender "
                                                                   "re-ranks that many retrieved candidates)")]
        with tf.control_dependencies(checks):
            query, rows, target = self._query(history_item_ids, history_domains, target_domain)
        retrieval_scores, found = self._retrieve(query, rows, target, exclude_history, self.candidates)
        ranked = self._rank(query, rows, found)["engagement"]
        width = tf.reduce_max(k)
        scores, order = tf.math.top_k(ranked, k=width)
        picked = tf.gather(found, order, batch_dims=1)
        beyond = (tf.range(width)[None, :] >= k[:, None]) | (picked == 0)
        return {"item_ids": tf.where(beyond, tf.constant(b""), tf.gather(self.lookups.item_ids, picked)),
                "scores": tf.where(beyond, UNKNOWN_SCORE, scores),
                "retrieval_scores": tf.where(beyond, UNKNOWN_SCORE,
                                             tf.gather(retrieval_scores, order, batch_dims=1)),
                **self._history_counts(rows, target)}


class ItemEncoderModule(tf.Module):
    """text + domain -> item embedding: the frozen/fine-tuned text encoder and the item tower's
    text path (no item-ID part: a new item has none). A domain the towers never saw goes through
    the domain-agnostic adapter and is centred on the mean of the known domains' text means."""

    def __init__(self, parts: ExportParts):
        super().__init__(name="item_encoder")
        from towers.encoder import TextEncoder

        model = parts.retrieval_model
        if model.text_table is None:
            raise ConfigError("item_encoder: the towers were trained without text (towers.use_text: false)")
        encoder = TextEncoder(parts.config.encoder)
        self.tokenizer, self.packer, self.encoder = encoder.tokenizer, encoder.packer, encoder.layer
        self.item_tower = model.item_tower
        catalogue = parts.catalogue
        names = catalogue.domain_names
        means = np.asarray(model.text_means)
        self.text_means = tf.Variable(np.concatenate([means, means.mean(axis=0, keepdims=True)]), trainable=False)
        self.text_domain = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(names), tf.constant(np.arange(len(names), dtype=np.int32))),
            default_value=len(names))
        self.lookups = parts.lookups
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec([None], tf.string, name="text"),
                                                               tf.TensorSpec([None], tf.string, name="domain")])

    def _serve(self, text, domain):
        tokens = self.packer(self.tokenizer(text))
        vectors = tf.cast(self.encoder(tokens, training=False), tf.float32)
        vectors = vectors - tf.gather(self.text_means, self.text_domain.lookup(domain))
        model_domain = tf.gather(self.lookups.model_domain, self.lookups.domain_table.lookup(domain))
        zeros = tf.zeros_like(model_domain)
        embedding = self.item_tower(vectors, model_domain, zeros, tf.zeros_like(zeros, tf.bool), training=False)
        return {"embedding": tf.cast(embedding, tf.float32)}


@dataclass
class ExportParts:
    config: Config
    catalogue: Catalogue
    retrieval_model: object
    item_embeddings: np.ndarray
    lookups: Lookups
    index: DomainIndex | None = None
    ranker: object | None = None
    metadata: dict = field(default_factory=dict)


@dataclass
class ExportResult:
    versions: dict[str, int]
    paths: dict[str, Path]
    metadata: dict
    seconds: float


def load_parts(retrieval_dir: str | Path, ranking_dir: str | Path | None, config: Config | None = None) -> ExportParts:
    from towers.train import load_trained

    model, catalogue, trained_config = load_trained(retrieval_dir)
    config = config or trained_config
    embeddings = model.all_item_embeddings()
    parts = ExportParts(config, catalogue, model, embeddings,
                        Lookups(catalogue, embeddings, config.towers.history_length))
    summary = Path(retrieval_dir) / "run_summary.json"
    if summary.exists():
        run = json.loads(summary.read_text())
        parts.metadata["data_fingerprint"] = run.get("data_fingerprint")
        parts.metadata["retrieval_metrics"] = run.get("test_metrics")
    if ranking_dir is not None:
        from ranking.train import load_ranking

        teacher, student, _ = load_ranking(ranking_dir)
        parts.ranker = student if config.export.ranker == "student" and student is not None else teacher
        rank_summary = Path(ranking_dir) / "run_summary.json"
        if rank_summary.exists():
            parts.metadata["ranking_metrics"] = json.loads(rank_summary.read_text()).get("test_metrics")
    return parts


def export_models(retrieval_dir: str | Path, out: str | Path = "saved_models", *, ranking_dir: str | Path | None = None,
                  config: Config | None = None, models=None, version: int | None = None,
                  recall_queries: np.ndarray | None = None, progress: bool = True,
                  on_published=None) -> ExportResult:
    """Writes the next version (or ``version``) of each model in ``models`` under ``out``;
    ``on_published(model, version)`` is called as each one lands."""
    started = time.perf_counter()
    parts = load_parts(retrieval_dir, ranking_dir, config)
    config = parts.config
    models = list(models or (MODELS if ranking_dir is not None else ("retrieval", "item_encoder")))
    unknown = set(models) - set(MODELS)
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODELS)}")
    if {"ranking", "recommender"} & set(models) and parts.ranker is None:
        raise ConfigError("the ranking and recommender models need a trained ranker: pass --ranking DIR "
                          "(from `crossrec train ranking`)")
    export = config.export
    k = max(export.max_k, config.ranking.candidates)
    parts.index = DomainIndex(parts.catalogue, parts.item_embeddings, k=k, history_length=config.towers.history_length,
                              kind=export.index, scann={"leaves": export.scann_leaves,
                                                        "leaves_to_search": export.scann_leaves_to_search,
                                                        "reorder": export.scann_reorder})
    index_info = dict(parts.index.parameters)
    if recall_queries is not None and len(recall_queries):
        index_info["recall@10"] = index_recall(parts, recall_queries)
        index_info["recall_queries"] = int(len(recall_queries))
    builders = {"retrieval": RetrievalModule, "ranking": RankingModule, "recommender": RecommenderModule,
                "item_encoder": ItemEncoderModule}
    result = ExportResult({}, {}, {}, 0.0)
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"] if export.index == "scann" else None)
    for name in models:
        if progress:
            print(f"exporting {name}", flush=True)
        module = builders[name](parts)
        with new_version(Path(out) / name, version) as (tmp, number):
            metadata = {"model": name, "version": number, "crossrec_version": crossrec.__version__,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "signature": signature_description(module.serve),
                        "max_k": export.max_k, "domains": parts.lookups.served,
                        "zero_shot_domains": parts.lookups.zero_shot,
                        "history_length": config.towers.history_length,
                        "index": index_info if name in ("retrieval", "recommender") else None,
                        **parts.metadata, "config": to_dict(config)}
            with tempfile.TemporaryDirectory() as scratch:
                path = Path(scratch) / METADATA_FILE
                path.write_text(json.dumps(metadata, indent=2, default=str))
                module.metadata = tf.saved_model.Asset(str(path))
                tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve}, options=options)
            if name == "retrieval":
                copy_training_state(tmp, retrieval_dir, ranking_dir)
        result.versions[name] = number
        result.paths[name] = Path(out) / name / str(number)
        result.metadata[name] = metadata
        if on_published is not None:
            on_published(name, number)
    result.seconds = time.perf_counter() - started
    return result


def copy_training_state(version_dir: Path, retrieval_dir: str | Path, ranking_dir: str | Path | None) -> None:
    """The training run(s) behind a version, inside it, so retraining can warm-start from exactly
    what is served."""
    for source, names, sub in ((retrieval_dir, TOWER_STATE, "towers"), (ranking_dir, RANKING_STATE, "ranking")):
        if source is None:
            continue
        target = Path(version_dir) / TRAINING_STATE / sub
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            path = Path(source) / name
            if path.is_dir():
                shutil.copytree(path, target / name)
            elif path.exists():
                shutil.copy2(path, target / name)


def signature_description(function) -> dict:
    concrete = function.get_concrete_function()
    inputs = {spec.name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
              for spec in concrete.structured_input_signature[0]}
    outputs = {k: {"dtype": v.dtype.name, "shape": v.shape.as_list()} for k, v in concrete.structured_outputs.items()}
    return {"inputs": inputs, "outputs": outputs}


def index_recall(parts: ExportParts, queries: np.ndarray, k: int = 10) -> float:
    """Recall@k of the index against exact search, for query embeddings ``queries`` [n, e]
    (each asked in every domain)."""
    exact_hits, total = 0, 0
    for d in range(1, len(parts.catalogue.domain_names) + 1):
        rows = np.flatnonzero(parts.catalogue.served_domain == d)
        rows = rows[rows > 0]
        if len(rows) == 0:
            continue
        kk = min(k, len(rows))
        exact = rows[np.argsort(-(queries @ parts.item_embeddings[rows].T), axis=1)[:, :kk]]
        found = parts.index.rows_for(queries, d, kk)
        exact_hits += sum(len(set(a) & set(b)) for a, b in zip(exact, found, strict=True))
        total += exact.size
    return round(exact_hits / max(total, 1), 4)


def sample_queries(parts: ExportParts, n: int, seed: int = 0) -> np.ndarray:
    """Query embeddings of ``n`` real training queries (from the config's data), for measuring
    the index's recall; empty if the data cannot be loaded here."""
    from towers.train import prepare_data, sample_query_embeddings

    try:
        data = prepare_data(parts.config)
    except crossrec.errors.CrossrecInputError as exc:
        print(f"note: index recall not measured: the training data could not be loaded ({exc})")
        return np.zeros((0, parts.item_embeddings.shape[1]), np.float32)
    return sample_query_embeddings(parts.retrieval_model, data.examples, n, seed)


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
    path.write_text("# For tensorflow/serving (see README: Serving). item_encoder is served by `crossrec serve`:\n"
                    "# its tokenizer needs TF Text ops that stock TF Serving does not have.\n"
                    "model_config_list {\n" + "\n".join(entries) + "\n}\n")
    return path
