"""What the served models answer, in the server's Prometheus registry: read from each Predict's own
inputs and outputs after the signature ran (no second model pass), with label values bounded by
the served models, their versions and their domains, so that no request can grow the registry.

- ``crossrec_answer_rows_total{model, signature}``: query rows answered;
- ``crossrec_answer_history_items_total{model, used}``: history slots of those rows (the most
  recent ``history_length`` items sent), ``used="true"`` when the model knew the item there;
- ``crossrec_answer_unknown_histories_total{model}``: rows with a history of which the model
  knows no item (served like a brand-new user's);
- ``crossrec_answer_history_domain_items_total{model, domain}``: history items sent, by domain
  (the live domain mix, against ``crossrec_reference_domain_share``);
- ``crossrec_answer_items_total{model, signature, domain}``: items answered by their domain (the
  feed's mix across domains; the target domain otherwise);
- ``crossrec_answer_new_items_total{model}``: items answered that ``crossrec catalogue add``
  placed since the towers were trained (read from the training state beside the serving folder;
  none counted where it is not there);
- ``crossrec_answer_empty_total{model, signature}``, ``crossrec_answer_short_total{model,
  signature}``: rows answered with no item, and with fewer items than they asked for;
- ``crossrec_answer_score{model, version, signature}``: each answered row's top score
  (histogram; versions no longer served are dropped at the next scrape);
- ``crossrec_answer_catalogue_coverage{model}``: distinct items answered in the last one to two
  windows (``COVERAGE_WINDOW`` seconds) over the catalogue's size, counted in a fixed bitmap of
  ``COVERAGE_BITS`` bits per window (linear counting: about 1% error below a few 100k distinct
  items, memory fixed whatever the traffic);
- ``crossrec_reference_domain_share{model, domain}`` and
  ``crossrec_reference_history_length_share{model, bin}``: the training data's profile, from the
  served version's metadata (``crossrec.profile``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter as Tally

import numpy as np
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

SCORE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 6, 8, 10, 15, 20, 30)
COVERAGE_BITS = 1 << 20
COVERAGE_WINDOW = 3600.0
OTHER = "<other>"


class Coverage:
    """Distinct (domain, item) keys seen over the current and the previous window, estimated by
    linear counting over two fixed bitmaps (``COVERAGE_BITS`` each)."""

    def __init__(self, bits: int = COVERAGE_BITS, window: float = COVERAGE_WINDOW, clock=time.monotonic):
        self.bits, self.window, self.clock = bits, window, clock
        self.current, self.previous = np.zeros(bits, bool), np.zeros(bits, bool)
        self.started = clock()
        self.lock = threading.Lock()

    def add(self, keys) -> None:
        bits = self.bits
        positions = [hash(key) % bits for key in keys]
        with self.lock:
            self._rotate()
            current = self.current
            for position in positions:
                current[position] = True

    def _rotate(self) -> None:
        now = self.clock()
        if now - self.started >= self.window:
            gone = int((now - self.started) // self.window)
            self.previous = self.current if gone == 1 else np.zeros(self.bits, bool)
            self.current = np.zeros(self.bits, bool)
            self.started += gone * self.window

    def distinct(self) -> float:
        with self.lock:
            self._rotate()
            empty = self.bits - int(np.count_nonzero(self.current | self.previous))
        return self.bits * math.log(self.bits / max(empty, 1))


class AnswerMetrics:
    """Answer-quality metrics of one server (see the module's docstring)."""

    def __init__(self, registry, manager, added_items=None):
        self.manager = manager
        self.added_items = added_items  # serving.training_state.AddedItems, or None
        self.coverage: dict[str, Coverage] = {}
        self.scored: set[tuple[str, str, str]] = set()
        self._children: dict = {}
        self._added: tuple = (None, {})  # ((model, version), {(domain, item_id): ...}) of the last answer
        self._lock = threading.Lock()
        # first: a scrape drops unserved versions' score histograms before they are collected
        registry.register(_Collector(self))
        counter = lambda name, doc, labels: Counter(name, doc, labels, registry=registry)  # noqa: E731
        self.rows = counter("crossrec_answer_rows", "Query rows answered", ["model", "signature"])
        self.history = counter("crossrec_answer_history_items", "History slots of answered rows, used = the model "
                               "knew the item", ["model", "used"])
        self.unknown = counter("crossrec_answer_unknown_histories", "Rows whose history the model knows none of",
                               ["model"])
        self.history_domains = counter("crossrec_answer_history_domain_items", "History items sent, by domain",
                                       ["model", "domain"])
        self.items = counter("crossrec_answer_items", "Items answered, by domain", ["model", "signature", "domain"])
        self.new_items = counter("crossrec_answer_new_items", "Items answered that catalogue add placed since "
                                 "training", ["model"])
        self.empty = counter("crossrec_answer_empty", "Rows answered with no item", ["model", "signature"])
        self.short = counter("crossrec_answer_short", "Rows answered with fewer items than asked",
                             ["model", "signature"])
        self.scores = Histogram("crossrec_answer_score", "Scores answered", ["model", "version", "signature"],
                                buckets=SCORE_BUCKETS, registry=registry)

    def _child(self, metric, *labels):
        """``metric.labels(*labels)``, kept: a label lookup costs more than the increment."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, model, signature: str, inputs: dict, outputs: dict) -> None:
        """One answer: ``inputs`` and ``outputs`` as numpy arrays (rows first). Plain Python over
        lists: a request holds a few rows of a few items, where numpy's per-call cost dominates."""
        ids = outputs.get("item_ids")
        if ids is None or ids.ndim != 2:
            return  # not a list of items (the ranking model's scores)
        name, domains = model.name, model.metadata.get("domains") or ()
        rows = ids.tolist()
        counts = [len(row) - row.count(b"") for row in rows]
        self._child(self.rows, name, signature).inc(len(rows))
        self._child(self.empty, name, signature).inc(counts.count(0))  # every series from the first answer on
        asked = inputs.get("k", inputs.get("n"))
        if asked is not None:
            width = len(rows[0]) if rows else 0
            short = sum(c < min(a, width) for c, a in zip(counts, np.asarray(asked).tolist(), strict=True))
            self._child(self.short, name, signature).inc(short)
        self._history(name, model.metadata.get("history_length"), domains, inputs, outputs)
        answer_domains = outputs.get("domains")
        if answer_domains is not None:
            keys = [(d, i) for row, drow in zip(rows, answer_domains.tolist(), strict=True)
                    for i, d in zip(row, drow, strict=True) if i]
        elif "target_domain" in inputs:
            targets = np.asarray(inputs["target_domain"], object).tolist()
            keys = [(target, item) for target, row in zip(targets, rows, strict=True) for item in row if item]
        else:
            keys = []
        if keys:
            for domain, count in Tally(d for d, _ in keys).items():
                self._child(self.items, name, signature, _bounded(domain, domains)).inc(count)
            self._new_items(model, keys)
            coverage = self.coverage.get(name)
            if coverage is None:
                with self._lock:
                    coverage = self.coverage.setdefault(name, Coverage())
            coverage.add(keys)
        self._scores(model, signature, outputs.get("scores"), counts)

    def _history(self, name, length, domains, inputs, outputs) -> None:
        sent_ids = inputs.get("history_item_ids")
        known = outputs.get("history_known")
        if sent_ids is None or known is None:
            return
        ids, sent_domains = np.asarray(sent_ids, object).tolist(), np.asarray(inputs["history_domains"], object).tolist()
        used_total = unknown_slots = unknown_rows = 0
        tally = Tally()
        for row_ids, row_domains, row_known in zip(ids, sent_domains, known.tolist(), strict=True):
            present = [d for i, d in zip(row_ids, row_domains, strict=True) if i]
            slots = min(len(present), length) if length else len(present)
            used = min(row_known, slots)
            used_total += used
            unknown_slots += slots - used
            unknown_rows += bool(present) and row_known == 0
            tally.update(present)
        self._child(self.history, name, "true").inc(used_total)
        self._child(self.history, name, "false").inc(unknown_slots)
        self._child(self.unknown, name).inc(unknown_rows)
        for domain, count in tally.items():
            self._child(self.history_domains, name, _bounded(domain, domains)).inc(count)

    def _new_items(self, model, keys) -> None:
        if self.added_items is None:
            return
        version = (model.name, model.version)
        if self._added[0] != version:  # read again only when the served version changes
            self._added = (version, self.added_items.served()[1])
        added = self._added[1]
        if added:
            new = sum((d.decode(), i.decode()) in added for d, i in keys)
            if new:
                self._child(self.new_items, model.name).inc(new)

    def _scores(self, model, signature, scores, counts) -> None:
        """Each answered row's top score (its first: the served order puts the best first)."""
        if scores is None or not any(counts):
            return
        labels = (model.name, str(model.version), signature)
        if labels not in self.scored:
            with self._lock:
                self.scored.add(labels)
        histogram = self._child(self.scores, *labels)
        for value, count in zip(scores[:, 0].tolist(), counts, strict=True):
            if count:
                histogram.observe(value)

    def drop_unserved(self) -> None:
        """Removes the score histograms of versions no longer served (bounded label sets)."""
        with self._lock:
            for labels in list(self.scored):
                try:
                    served = self.manager.get(labels[0]).version
                except KeyError:
                    served = None
                if str(served) != labels[1]:
                    self.scores.remove(*labels)
                    self.scored.discard(labels)
                    self._children.pop((id(self.scores), labels), None)


def _bounded(domain, domains: list[str]) -> str:
    text = domain.decode() if isinstance(domain, bytes) else str(domain)
    return text if text in domains else OTHER


class _Collector:
    """At scrape time: coverage, and the served versions' reference profiles."""

    def __init__(self, metrics: AnswerMetrics):
        self.metrics = metrics

    def collect(self):
        metrics = self.metrics
        metrics.drop_unserved()
        coverage = GaugeMetricFamily("crossrec_answer_catalogue_coverage", "Distinct items answered over the "
                                     "last one to two windows / catalogue size", labels=["model"])
        shares = GaugeMetricFamily("crossrec_reference_domain_share", "The training data's share of interactions "
                                   "per domain", labels=["model", "domain"])
        lengths = GaugeMetricFamily("crossrec_reference_history_length_share", "The training data's share of "
                                    "users per history length bin", labels=["model", "bin"])
        for name in metrics.manager.specs:
            try:
                model = metrics.manager.get(name)
            except KeyError:
                continue
            size = _catalogue_size(model.metadata)
            with metrics._lock:
                counted = metrics.coverage.get(name)
            if counted is not None and size:
                coverage.add_metric([name], min(1.0, counted.distinct() / size))
            reference = model.metadata.get("reference_profile") or {}
            for domain, share in (reference.get("domain_shares") or {}).items():
                shares.add_metric([name, domain], share)
            for label, share in (reference.get("history_length") or {}).items():
                lengths.add_metric([name, label], share)
        yield from (coverage, shares, lengths)


def _catalogue_size(metadata: dict) -> int:
    index = metadata.get("index") or {}
    return sum(int(d.get("items", 0)) for d in (index.get("domains") or {}).values())
