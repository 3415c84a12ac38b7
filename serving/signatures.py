"""The serving signatures, one ``tf.Module`` per exported model (see ``serving.export`` for their
inputs and outputs). Tokenization stays out of every graph but ``item_encoder``'s, so stock
TF Serving loads the others."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from crossrec.errors import ConfigError
from ranking.features import source_input
from ranking.policy import served_scores, with_popularity_prior
from ranking.source_scores import sorted_member
from serving.lookups import UNKNOWN_SCORE, item_keys
from serving.parts import ExportParts
from towers.model import user_query


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
        self.temperature = float(parts.config.train.temperature)

    @staticmethod
    def _history_checks(history_item_ids, history_domains, target_domain):
        return [
            tf.debugging.assert_positive(tf.size(target_domain), message="target_domain: the batch is empty; "
                                         "send at least one row"),
            tf.debugging.assert_equal(tf.shape(history_item_ids), tf.shape(history_domains),
                                      message="history_item_ids and history_domains: must have the same shape "
                                              "(one domain per history item, \"\" for padding)"),
            tf.debugging.assert_equal(tf.shape(history_item_ids)[0], tf.shape(target_domain)[0],
                                      message="history_item_ids and target_domain: must have one row per query"),
        ]

    def _query(self, history_item_ids, history_domains, target_domain):
        rows = self.lookups.history_rows(history_item_ids, history_domains)
        target = self.lookups.domain_index(target_domain)  # served position: the index partition
        embeddings = self.lookups.embedding_rows(rows)
        query = user_query(self.user_tower, self.lookups.item_domain, self.user_hashing, embeddings, rows,
                           tf.gather(self.lookups.model_domain, target))
        return tf.cast(query, tf.float32), rows, target

    def _history_counts(self, rows, target=None):
        """How much of the request's history the model used: known items, and (given a ``target``
        domain) those in it (0 = a cross-domain cold start; no known item at all = a user the
        model cannot place)."""
        known = rows > 0
        counts = {"history_known": tf.reduce_sum(tf.cast(known, tf.int32), axis=1)}
        if target is not None:
            in_domain = known & tf.equal(tf.gather(self.lookups.item_served, rows), target[:, None])
            counts["history_in_domain"] = tf.reduce_sum(tf.cast(in_domain, tf.int32), axis=1)
        return counts

    @staticmethod
    def _per_query_checks(target_domain, k, exclude_history):
        return [tf.debugging.assert_equal(tf.shape(k), tf.shape(target_domain),
                                          message="k: must have one value per query (as target_domain)"),
                tf.debugging.assert_equal(tf.shape(exclude_history), tf.shape(target_domain),
                                          message="exclude_history: must have one value per query (as target_domain)")]

    def _because(self, found, rows, beyond):
        """Per recommended item (``found`` rows, (b, w)), the history item that most drove it:
        the known history item (``rows``, (b, H)) whose embedding is closest to the item's, and
        its share of the item's similarity to the whole history (a softmax over the known history
        items at the towers' training temperature; shares over the history sum to 1). Empty and 0
        where the slot is empty or the history has no known item."""
        item = self.lookups.embedding_rows(found)  # (b, w, e), unit vectors
        history = self.lookups.embedding_rows(rows)  # (b, H, e)
        known = (rows > 0)[:, None, :]
        logits = tf.where(known, tf.einsum("bwe,bhe->bwh", item, history) / self.temperature, -1e9)
        best = tf.argmax(logits, axis=-1, output_type=tf.int32)  # (b, w)
        share = tf.gather(tf.nn.softmax(logits, axis=-1), best, batch_dims=2)
        because = tf.gather(rows, best, batch_dims=1)
        empty = beyond | (found == 0) | (because == 0)
        return {"because_item_ids": tf.where(empty, tf.constant(b""), tf.gather(self.lookups.item_ids, because)),
                "because_domains": tf.where(empty, tf.constant(b""),
                                            tf.gather(self.lookups.row_domain_names, because)),
                "because_weights": tf.where(empty, 0.0, share)}

    def _retrieve(self, query, rows, target, exclude_history, k: int):
        exclude = tf.where(exclude_history[:, None], rows, tf.zeros_like(rows))
        return self.index.search(query, target, exclude, k)


def checked(checks, *tensors):
    """``tensors`` again, each depending on every check: no op of a signature runs (or fails with
    a message that names nothing) before the request's checks have passed."""
    with tf.control_dependencies(checks):
        return [tf.identity(t) for t in tensors]


class RetrievalModule(QueryModule):
    def __init__(self, parts: ExportParts):
        super().__init__(parts, "retrieval")
        self.index = parts.index
        self.max_k = parts.config.export.max_k
        specs = _history_specs() + [tf.TensorSpec([None], tf.int32, name="k"),
                                    tf.TensorSpec([None], tf.bool, name="exclude_history")]
        self.serve = tf.function(self._serve, input_signature=specs, autograph=False)
        # the same answer without the explanations, for batch jobs (a third cheaper at 1,024 users)
        self.candidates = tf.function(self._candidates, input_signature=specs, autograph=False)
        self.extra_signatures = {"candidates": self.candidates}

    def _serve(self, history_item_ids, history_domains, target_domain, k, exclude_history):
        return self._answer(history_item_ids, history_domains, target_domain, k, exclude_history, explain=True)

    def _candidates(self, history_item_ids, history_domains, target_domain, k, exclude_history):
        return self._answer(history_item_ids, history_domains, target_domain, k, exclude_history, explain=False)

    def _answer(self, history_item_ids, history_domains, target_domain, k, exclude_history, explain: bool):
        checks = self._history_checks(history_item_ids, history_domains, target_domain) + \
            self._per_query_checks(target_domain, k, exclude_history) + [
                tf.debugging.assert_positive(k, message="k: must be at least 1"),
                tf.debugging.assert_less_equal(k, self.max_k, message=f"k: must be at most {self.max_k} "
                                                                       "(max_k fixed at export)")]
        history_item_ids, history_domains, target_domain, k, exclude_history = checked(
            checks, history_item_ids, history_domains, target_domain, k, exclude_history)
        query, rows, target = self._query(history_item_ids, history_domains, target_domain)
        # bounded by max_k whatever k says, so no allocation ever follows an absurd k
        width = tf.minimum(tf.reduce_max(k), self.max_k)
        scores, found = self._retrieve(query, rows, target, exclude_history, self.max_k)
        beyond = tf.range(width)[None, :] >= k[:, None]
        ids = tf.gather(self.lookups.item_ids, found[:, :width])
        return {"item_ids": tf.where(beyond, tf.constant(b""), ids),
                "scores": tf.where(beyond, UNKNOWN_SCORE, scores[:, :width]), **self._history_counts(rows, target),
                **(self._because(found[:, :width], rows, beyond) if explain else {})}


class RankedQueryModule(QueryModule):
    """A serving model that scores candidates with the exported ranker (``ranking``,
    ``recommender``)."""

    def __init__(self, parts: ExportParts, name: str):
        super().__init__(parts, name)
        self.ranker = parts.ranker

    def _rank(self, query, rows, candidates, given=None):
        """The ranker's outputs; ``given``: inputs it would otherwise compute (``source_input``)."""
        out = self.ranker({"query": query, "history": rows, "candidates": candidates, **(given or {})},
                          training=False)
        known = candidates > 0
        rating = out.get("rating", tf.zeros_like(out["engagement"]))  # a ranker trained without ratings: 0
        return {"engagement": tf.where(known, out["engagement"], UNKNOWN_SCORE),
                "rating": tf.where(known, rating, 0.0)}


class RankingModule(RankedQueryModule):
    """The ranker over the caller's candidates."""

    def __init__(self, parts: ExportParts):
        super().__init__(parts, "ranking")
        self.max_candidates = int(parts.config.export.max_candidates)
        self.serve = tf.function(self._serve, input_signature=_history_specs() + [
            tf.TensorSpec([None, None], tf.string, name="candidate_item_ids")], autograph=False)

    def _serve(self, history_item_ids, history_domains, target_domain, candidate_item_ids):
        checks = self._history_checks(history_item_ids, history_domains, target_domain) + [
            tf.debugging.assert_equal(tf.shape(candidate_item_ids)[0], tf.shape(target_domain)[0],
                                      message="candidate_item_ids: must have one row per query (as target_domain)"),
            tf.debugging.assert_less_equal(
                tf.shape(candidate_item_ids)[1], self.max_candidates,
                message=f"candidate_item_ids: at most {self.max_candidates} candidates per query "
                        "(export.max_candidates, fixed at export)")]
        history_item_ids, history_domains, target_domain, candidate_item_ids = checked(
            checks, history_item_ids, history_domains, target_domain, candidate_item_ids)
        query, rows, _ = self._query(history_item_ids, history_domains, target_domain)
        domains = tf.broadcast_to(target_domain[:, None], tf.shape(candidate_item_ids))
        candidates = self.lookups.rows.lookup(item_keys(domains, candidate_item_ids))
        # a retired item is unknown as a candidate (scored UNKNOWN_SCORE), known in histories
        candidates = tf.where(tf.gather(self.lookups.item_served, candidates) > 0, candidates, 0)
        return self._rank(query, rows, candidates)


class RecommenderModule(RankedQueryModule):
    """Sources -> merge -> rank -> top k in one call, shaped by the ranking run's
    ``ranking.served_list.ServedListSpec``: the towers' top ``candidates`` from the index, then
    each candidate source's top ``source_candidates`` of the target domain (its neighbour tables
    are the ranker's own weights), duplicates dropped, ranked by the ranker; with ``new_items:
    retrieval_rank`` a new item keeps its place by the towers' score (``ranking.policy``).
    ``scores`` are the ranker's. Only standard TensorFlow ops: stock TF Serving loads it."""

    def __init__(self, parts: ExportParts):
        super().__init__(parts, "recommender")
        self.index = parts.index
        self.max_k = parts.config.export.max_k
        spec = parts.served_list
        self.candidates = int(min(spec.candidates, parts.index.k))
        self.source_names = list(getattr(parts.ranker.features, "source_names", []))
        self.new_item_policy = spec.new_items
        self.cold_start_popularity = spec.cold_start_popularity
        self.source_candidates = spec.source_candidates if self.source_names else 0
        self.serve = tf.function(self._serve_top, input_signature=_history_specs() + [
            tf.TensorSpec([None], tf.int32, name="k"), tf.TensorSpec([None], tf.bool, name="exclude_history")],
            autograph=False)

    def _reached(self, rows, repeats: int = 1) -> dict:
        """Source name -> what the histories reach (``ranking.source_scores.Reached``), (b, N).
        ``repeats``: each history comes in that many consecutive rows (the feed's domains), scored once."""
        return {name: self.ranker.features.source_scores(name, rows[::repeats]).reached().repeat(repeats)
                for name in self.source_names}

    def _proposals(self, reached: dict, rows, target, exclude_history):
        """(b, S * source_candidates) item rows proposed by the sources (0 = none): each source's
        best-scored items of the target domain that the history reaches (``reached``)."""
        width = int(min(self.source_candidates, self.lookups.item_served.shape[0]))
        found = []
        for name in self.source_names:
            items, scores = reached[name].unique()
            allowed = tf.equal(tf.gather(self.lookups.item_served, items), target[:, None])
            allowed &= ~(exclude_history[:, None] & sorted_member(items, rows))
            top, picked = tf.math.top_k(tf.where(allowed, scores, 0.0), k=tf.minimum(width, tf.shape(items)[1]))
            picked = tf.where(top > 0, tf.gather(items, picked, batch_dims=1), 0)
            found.append(tf.pad(picked, [[0, 0], [0, width - tf.shape(picked)[1]]]))
        return tf.concat(found, axis=1)

    @staticmethod
    def _drop_duplicates(candidates):
        """Later copies of an earlier candidate -> 0."""
        same = tf.equal(candidates[:, :, None], candidates[:, None, :])  # (b, L, L)
        earlier = tf.linalg.band_part(tf.ones_like(same[0], tf.bool), -1, 0) & ~tf.eye(tf.shape(candidates)[1],
                                                                                         dtype=tf.bool)
        repeated = tf.reduce_any(same & earlier[None], axis=2)
        return tf.where(repeated, tf.zeros_like(candidates), candidates)

    def _served_list(self, query, rows, target, exclude_history, repeats: int = 1):
        """The merged candidates (b, L), the ranker's engagement logits, the towers' scores and
        the scores whose descending order is the served order (``ranking.policy``); ``repeats`` as
        in ``_proposals``."""
        _, found = self._retrieve(query, rows, target, exclude_history, self.candidates)
        reached = self._reached(rows, repeats)
        if reached:
            proposals = self._proposals(reached, rows, target, exclude_history)
            found = self._drop_duplicates(tf.concat([found, proposals], axis=1))
        given = {source_input(name): r.of(found) for name, r in reached.items()}  # each source sorted once
        ranked = self._rank(query, rows, found, given)["engagement"]
        towers = tf.reduce_sum(query[:, None, :] * self.lookups.embedding_rows(found), axis=-1)
        popularity = self.ranker.features.tables["popularity"]
        cold = self._history_counts(rows, target)["history_in_domain"] == 0
        order_by = with_popularity_prior(ranked, found, popularity, cold, self.cold_start_popularity)
        if self.new_item_policy == "retrieval_rank":  # new items keep the towers' place (ranking.policy)
            is_new = tf.gather(popularity, found) <= 0
            order_by = served_scores(order_by, towers, found, is_new)
        return found, ranked, towers, order_by

    def _serve_top(self, history_item_ids, history_domains, target_domain, k, exclude_history):
        limit = min(self.max_k, self.candidates)
        checks = self._history_checks(history_item_ids, history_domains, target_domain) + \
            self._per_query_checks(target_domain, k, exclude_history) + [
                tf.debugging.assert_positive(k, message="k: must be at least 1"),
                tf.debugging.assert_less_equal(k, limit, message=f"k: must be at most {limit} (the recommender "
                                                                 "re-ranks that many retrieved candidates)")]
        history_item_ids, history_domains, target_domain, k, exclude_history = checked(
            checks, history_item_ids, history_domains, target_domain, k, exclude_history)
        query, rows, target = self._query(history_item_ids, history_domains, target_domain)
        width = tf.minimum(tf.reduce_max(k), limit)
        found, ranked, towers, order_by = self._served_list(query, rows, target, exclude_history)
        _, order = tf.math.top_k(order_by, k=width)
        picked = tf.gather(found, order, batch_dims=1)
        scores = tf.gather(ranked, order, batch_dims=1)
        retrieval_scores = tf.gather(towers, order, batch_dims=1)
        beyond = (tf.range(width)[None, :] >= k[:, None]) | (picked == 0)
        return {"item_ids": tf.where(beyond, tf.constant(b""), tf.gather(self.lookups.item_ids, picked)),
                "scores": tf.where(beyond, UNKNOWN_SCORE, scores),
                "retrieval_scores": tf.where(beyond, UNKNOWN_SCORE, retrieval_scores),
                **self._history_counts(rows, target), **self._because(picked, rows, beyond)}


class ItemEncoderModule(tf.Module):
    """text + domain -> item embedding: the frozen/fine-tuned text encoder and the item tower's
    text path (no item-ID part: a new item has none). A zero-shot domain (served, with item text
    but no interactions) goes through the domain-agnostic adapter and is centred on the mean of the
    trained domains' text means; a domain that is not served is INVALID_ARGUMENT, as in every other
    model (its vectors could not be searched in any served index)."""

    def __init__(self, parts: ExportParts):
        super().__init__(name="item_encoder")
        from towers.encoder import TextEncoder

        model = parts.retrieval_model
        if model.text_table is None:
            raise ConfigError("item_encoder: the towers were trained without text (towers.use_text: false)")
        encoder = TextEncoder(parts.config.encoder)
        self.tokenizer, self.packer, self.encoder = encoder.tokenizer, encoder.packer, encoder.layer
        # the item tower's text path alone: its weights are tracked, its per-item ID table is not,
        # so this model holds nothing per item (a catalogue change leaves it as it is)
        tower = model.item_tower
        self.text_path_weights = tower.text_path_weights()
        self._text_embedding = lambda vectors, domain: tower.text_embedding(vectors, domain)
        catalogue = parts.catalogue
        names = catalogue.domain_names
        means = np.asarray(model.text_means)
        self.text_means = tf.Variable(np.concatenate([means, means.mean(axis=0, keepdims=True)]), trainable=False)
        self.text_domain = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(names), tf.constant(np.arange(len(names), dtype=np.int32))),
            default_value=len(names))
        self.domains = parts.lookups.domains  # no per-item table: the catalogue is not in this model
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec([None], tf.string, name="text"),
                                                               tf.TensorSpec([None], tf.string, name="domain")],
                                 autograph=False)

    def _serve(self, text, domain):
        checks = [tf.debugging.assert_positive(tf.size(text), message="text: the batch is empty; send at least one item"),
                  tf.debugging.assert_equal(tf.shape(text), tf.shape(domain),
                                            message="text and domain: must have one domain per text")]
        text, domain = checked(checks, text, domain)
        tokens = self.packer(self.tokenizer(text))
        vectors = tf.cast(self.encoder(tokens, training=False), tf.float32)
        vectors = vectors - tf.gather(self.text_means, self.text_domain.lookup(domain))
        model_domain = tf.gather(self.domains.model_domain, self.domains.index(domain, "domain"))
        return {"embedding": tf.cast(self._text_embedding(vectors, model_domain), tf.float32)}

