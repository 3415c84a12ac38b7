"""Item keys <-> rows, domain names -> served positions, and the item embedding table (optionally
quantized, ``serving.quantize``), as lookup tables inside a SavedModel's graph. Item keys are ``(domain, item_id)`` joined by
``KEY_SEPARATOR``."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from crossrec import schema
from crossrec.features import Catalogue
from serving.quantize import QuantizedTable

KEY_SEPARATOR = "\x1f"  # joins domain and item id into one lookup key
UNKNOWN_SCORE = -1e9


def item_keys(domains, item_ids):
    return tf.strings.join([domains, item_ids], separator=KEY_SEPARATOR)


class Domains(tf.Module):
    """Domain names -> served positions (1-based) and the towers' domain index of each: all the
    catalogue a text-only model (``item_encoder``) needs, so it holds no per-item table."""

    def __init__(self, catalogue: Catalogue):
        super().__init__(name="domains")
        self.served = list(catalogue.domain_names)
        self.zero_shot = catalogue.zero_shot_domains
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(self.served or [""]),
                                                tf.constant(np.arange(1, max(len(self.served), 1) + 1, dtype=np.int32))),
            default_value=0)
        # served position -> the towers' domain index (0 for zero-shot domains)
        self.model_domain = tf.constant([0] + [catalogue.domain_index(d) for d in self.served], tf.int32)

    def index(self, names, input_name: str = "target_domain"):
        """Domain names -> served positions (1-based); an unknown name is INVALID_ARGUMENT."""
        index = self.table.lookup(names)
        known = ", ".join(self.served)
        check = tf.debugging.assert_positive(index, message=f"{input_name}: unknown domain; known domains: {known}")
        with tf.control_dependencies([check]):
            return tf.identity(index)

    def check_named(self, names, input_name: str = "history_domains"):
        """``names`` (any shape) with every non-empty name a known domain ("" pads); an unknown
        name is INVALID_ARGUMENT, as it is in ``target_domain``."""
        known = ", ".join(self.served)
        check = tf.debugging.assert_equal(tf.reduce_all((names == "") | (self.table.lookup(names) > 0)), True,
                                          message=f"{input_name}: unknown domain (\"\" pads a history); known "
                                                  f"domains: {known}")
        with tf.control_dependencies([check]):
            return tf.identity(names)


class Lookups(tf.Module):
    """Item keys <-> rows, domain names -> indices, the item embedding table.

    Every catalogue domain is served (``served`` = ``catalogue.domain_names``), including one the
    towers never trained on: requests name it, the index searches its items, and the towers see
    it as domain 0, the domain-agnostic (zero-shot) path."""

    def __init__(self, catalogue: Catalogue, item_embeddings: np.ndarray, history_length: int,
                 quantize: str = "none"):
        super().__init__(name="lookups")
        items = catalogue.items
        keys = (items[schema.DOMAIN].astype(str) + KEY_SEPARATOR + items[schema.ITEM_ID].astype(str)).tolist()
        self.rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(items["row"].to_numpy(np.int32))),
            default_value=0)
        self.domains = Domains(catalogue)
        self.served, self.zero_shot, self.model_domain = self.domains.served, self.domains.zero_shot, \
            self.domains.model_domain
        self.item_ids = tf.constant(np.concatenate([[""], items[schema.ITEM_ID].astype(str).to_numpy()]).astype(bytes))
        self.row_domain_names = tf.constant(
            np.concatenate([[""], items[schema.DOMAIN].astype(str).to_numpy()]).astype(bytes))
        self.item_domain = tf.Variable(catalogue.item_domain, trainable=False, name="item_domain")
        self.item_served = tf.Variable(catalogue.served_domain, trainable=False, name="item_served_domain")
        self.embeddings = QuantizedTable(item_embeddings, quantize, name="item_embeddings")
        self.history_length = int(history_length)

    def embedding_rows(self, rows):
        """Item embeddings (float32) of ``rows``, any shape -> shape + [e]."""
        return self.embeddings.gather(rows)

    def domain_index(self, names, input_name: str = "target_domain"):
        """Domain names -> served positions (1-based); an unknown name is INVALID_ARGUMENT."""
        return self.domains.index(names, input_name)

    def history_rows(self, item_ids, domains):
        """[b, h] ids + domains (oldest first, "" = padding) -> [b, H] rows, right-aligned, the
        most recent H known items (unknown items are dropped, as a model never saw them; an unknown
        domain is INVALID_ARGUMENT, as in ``target_domain``)."""
        rows = self.rows.lookup(item_keys(self.domains.check_named(domains), item_ids))
        present = tf.cast(rows > 0, tf.int32)
        order = tf.argsort(present, axis=1, stable=True)  # padding first, items in their order
        rows = tf.gather(rows, order, batch_dims=1)
        h = self.history_length
        return tf.pad(rows, [[0, 0], [h, 0]])[:, -h:]

