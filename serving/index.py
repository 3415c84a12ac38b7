"""The top-k index behind every retrieval export: one TFRS ``factorized_top_k`` layer per
domain, ``BruteForce`` (exact; only core TF ops, so stock ``tensorflow/serving`` loads it) or
``ScaNN`` (approximate; needs the ``google/tf-serving-scann`` build); with ``export.quantize``,
a brute-force index over a float16 or int8 table (``QuantizedBruteForce``, core TF ops only)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from crossrec.config import ExportConfig
from crossrec.errors import ConfigError
from crossrec.features import Catalogue
from serving.lookups import UNKNOWN_SCORE
from serving.quantize import QuantizedTable


class QuantizedBruteForce(tf.Module):
    """Exact top-k over a quantized table (``serving.quantize``): the same call as TFRS's
    ``BruteForce`` layer, ``(queries, k) -> (scores, ids)``, with core TF ops only."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, mode: str):
        super().__init__(name="quantized_brute_force")
        self.table = QuantizedTable(vectors, mode, name="candidates")
        self.ids = tf.constant(np.asarray(ids, np.int32))

    def __call__(self, queries, k: int):
        scores, positions = self.table.top_k(queries, k)
        return scores, tf.gather(self.ids, positions)


class DomainIndex(tf.Module):
    """Top-k items of the query's target domain, one TFRS index per domain; excluded rows are
    left out. ``search(queries, target, exclude, k)`` -> ([b, k] scores, [b, k] rows); slots
    beyond a small domain's size hold row 0 and score -1e9."""

    def __init__(self, catalogue: Catalogue, item_embeddings: np.ndarray, *, k: int, history_length: int,
                 kind: str = "brute_force", scann: dict | None = None, scann_min_items: int = 1000,
                 quantize: str = "none"):
        super().__init__(name="index")
        if quantize != "none" and kind != "brute_force":
            raise ConfigError(f"export.quantize: {quantize} needs export.index: brute_force (ScaNN keeps its own "
                              "compressed index)")
        self.k = int(k)
        self.kind = kind
        self.quantize = quantize
        self.history_length = int(history_length)
        self.scann_min_items = int(scann_min_items)  # smaller domains are searched exactly
        self.indexes = []
        self.sizes = []
        self.parameters = {"kind": kind, "k": self.k, "quantize": quantize, "domains": {}}
        self.nbytes = 0
        if scann is None:
            defaults = ExportConfig()
            scann = {"leaves": defaults.scann_leaves, "leaves_to_search": defaults.scann_leaves_to_search,
                     "reorder": defaults.scann_reorder}
        domain_of_row = catalogue.served_domain
        for d, name in enumerate(catalogue.domain_names, start=1):
            rows = np.flatnonzero(domain_of_row == d).astype(np.int32)
            rows = rows[rows > 0]
            if quantize != "none":
                layer, params = QuantizedBruteForce(item_embeddings[rows], rows, quantize), {"index": "brute_force"}
                self.nbytes += layer.table.nbytes
            else:
                layer, params = self._layer(len(rows), kind, scann)
                self.nbytes += 4 * len(rows) * item_embeddings.shape[1]
                if len(rows):
                    layer.index(tf.constant(item_embeddings[rows].astype(np.float32)), tf.constant(rows))
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
        if isinstance(layer, tfrs.layers.factorized_top_k.ScaNN):
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

