"""``crossrec retrain``: the weekly fit script that keeps a served crossrec fresh.

One run, from the latest served version (``<base>/retrieval/<v>/assets.extra/crossrec``, written
by ``crossrec export``) and a folder of new data:

1. merge: the served version's training data + the new interactions (optionally each user's last
   ``retrain.window``), its catalogue + the new items (``retrain.catalogue``: merge or replace);
2. warm start: new towers for the new catalogue, the served weights copied in by item key and
   domain name (``towers.warm_start``); frozen text vectors of unchanged texts come from the served
   model, so only new or changed texts are encoded;
3. gate: a validation metric (``retrain.metric``, Recall@50 by default) of the served weights
   (on the new catalogue, new items through text only, as the served item encoder would place
   them) vs the retrained towers; the run stops here, publishing nothing, when the new one is
   worse than ``retrain.max_regression`` allows;
4. the rankers (warm-started when the domains are unchanged), then every served model is
   published as one model set (``serving.model_set``: one version number for all, each written
   aside and all renamed into place together; the server switches the whole set at once).

Every stage leaves its result in the run folder (``--work-dir``, one folder per served version,
new data and config), so the same command after a crash or ``kill -9`` resumes: finished stages
are reused, Keras BackupAndRestore resumes training, a publish cut short is finished (its set's
missing models only), and a run killed after its publish reports the set it published.
``run_log.jsonl`` in that folder records each stage as one JSON line.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from crossrec import schema
from crossrec.config import Config
from crossrec.data.dataset import Dataset
from crossrec.errors import ConfigError
from crossrec.experiment import data_fingerprint, prepare_data
from crossrec.pipelines.retrain_run import (
    RetrainResult,
    RunLog,
    finished_by_an_earlier_run,
    read_result,
    write_json,
    write_result,
)
from crossrec.pipelines.served_data import (
    merge_data,
    read_new_data,
    read_training_data,
    served_state,
)
from crossrec.typed import to_dict
from ranking.run_folder import load_ranking
from ranking.train import train_ranking
from ranking.warm_start import warm_start_ranker
from serving.export import export_models, write_model_config
from towers.cache import EmbeddingCache
from towers.callbacks import validation_metrics
from towers.queries import sample_query_embeddings
from towers.text import text_vectors
from towers.train import build_model, load_trained, train_retrieval
from towers.warm_start import item_row_map, warm_start_towers

DEFAULT_WORK_DIR = ".runs/retrain"


@dataclass
class Gate:
    served: float
    retrained: float
    max_regression: float
    metric: str = "recall_at_50"
    # every item embedding of the retrained towers is a finite number (a NaN model never publishes)
    finite: bool = True

    @property
    def threshold(self) -> float:
        return self.served * (1.0 - self.max_regression)

    @property
    def publish(self) -> bool:
        return self.finite and math.isfinite(self.retrained) and self.retrained >= self.threshold

    def reason(self, version: int) -> str:
        if not (self.finite and math.isfinite(self.retrained)):
            return (f"the retrained towers are not finite (validation {self.metric} {self.retrained}, "
                    f"embeddings finite: {self.finite}); a model with NaN or infinite values never publishes")
        verdict = "at least" if self.publish else "below"
        return (f"validation {self.metric} {self.retrained:.4f} of the retrained towers is {verdict} the served "
                f"version {version}'s {self.served:.4f} x (1 - {self.max_regression}) = {self.threshold:.4f}")


def _fingerprint(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12]


def _data_fingerprint(dataset: Dataset) -> str:
    order = [c for c in schema.ORDER_COLUMNS if c in dataset.interactions.columns]
    return data_fingerprint(dataset.interactions[list(schema.INTERACTION_REQUIRED) + order].astype(str)) + \
        data_fingerprint(dataset.items[[schema.DOMAIN, schema.ITEM_ID, schema.TEXT]].astype(str))


def _new_data_fingerprint(new: Dataset) -> str:
    """The new data as read (before merging): with the config, what names one retrain command."""
    parts = [data_fingerprint(new.interactions.astype(str))]
    if new.items is not None and len(new.items.columns):
        parts.append(data_fingerprint(new.items.astype(str)))
    return "".join(parts)


def retrain(data: str | Path, base: str | Path = "saved_models", *, config: Config | None = None,
            items: str | Path | None = None, work_dir: str | Path | None = None, progress: bool = True,
            callbacks=()) -> RetrainResult:
    """Warm-starts from the latest version under ``base``, trains on its data plus ``data``, and
    publishes the next version unless the gate refuses it. ``config`` defaults to the served
    version's; ``callbacks`` go to the towers' ``fit``."""
    started = time.perf_counter()
    served = served_state(base)
    old_model, old_catalogue, served_config = load_trained(served.towers_dir)
    config = config or served_config
    new_data = read_new_data(data, items)
    run_key = _fingerprint(_new_data_fingerprint(new_data), to_dict(config))
    finished = finished_by_an_earlier_run(served, run_key, Path(work_dir or DEFAULT_WORK_DIR), progress)
    if finished is not None:
        return finished
    dataset, change = merge_data(read_training_data(served.towers_dir), new_data, config)
    fingerprint = _data_fingerprint(dataset)
    work = Path(work_dir or DEFAULT_WORK_DIR) / f"from-v{served.version}-{run_key}"
    log = RunLog(work / "run_log.jsonl")
    previous = read_result(work)
    if previous is not None:
        _say(progress, f"this run already finished: {previous.reason} (log: {log.path})")
        return previous
    resumed = any(r["event"] == "start" for r in log.records())
    stage = _Stages(config, served, old_model, old_catalogue, dataset, work, log, progress, callbacks, run_key)
    change.zero_shot_domains = stage.data.catalogue.zero_shot_domains
    log.write("start", served_version=served.version, base=str(served.base), new_data=str(data),
              data_fingerprint=fingerprint, resumed=resumed,
              interactions=len(dataset.interactions), items=len(dataset.items), **change.as_dict())
    _say(progress, f"retraining from {served.base}/retrieval/{served.version}"
                   f"{' (resuming)' if resumed else ''}: +{change.new_interactions} interactions, "
                   f"+{change.new_users} users, +{change.new_items} items ({change.changed_items} changed, "
                   f"{change.removed_items} removed); run folder {work}")
    if change.zero_shot_domains:
        _say(progress, f"zero-shot domain(s) {', '.join(change.zero_shot_domains)}: items with text but no "
                       "interactions, served through the domain-agnostic adapter path")
    served_metric = stage.served_metric()
    towers = stage.train_towers()
    gate = stage.gate(served_metric, towers)
    reason = gate.reason(served.version)
    log.write("gate", metric=gate.metric, served=gate.served, retrained=gate.retrained,
              threshold=gate.threshold, publish=gate.publish)
    published = None
    if gate.publish:
        published = stage.publish(towers, stage.train_rankers(towers))
        reason = f"published {', '.join(f'{m} {v}' for m, v in published.items())}: {reason}"
    else:
        reason = (f"not published, {served.base} keeps version {served.version}: {reason}; the retrained towers "
                  f"are in {work / 'towers'}")
    seconds = {"total": round(time.perf_counter() - started, 1)}
    log.write("published" if published else "kept", versions=published, reason=reason, seconds=seconds)
    result = RetrainResult(work, served.version, published, reason,
                           {"metric": gate.metric, "served": gate.served, "retrained": gate.retrained,
                            "threshold": gate.threshold, "publish": gate.publish}, change.as_dict(), seconds)
    write_result(result)
    _say(progress, reason)
    return result


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)


@dataclass
class TrainedTowers:
    """The towers a run trained (or found trained in its folder) and the folder they are in."""

    model: object  # towers.model.RetrievalModel
    folder: Path
    run: object | None = None  # the towers.train.RetrievalRun when trained by this process


class _Stages:
    """The resumable stages of one run, each named for what it does and returning what it made;
    each reads its result back from the run folder if present."""

    def __init__(self, config, served, old_model, old_catalogue, dataset, work, log, progress, callbacks, run_key):
        self.config, self.served, self.old_model, self.old_catalogue = config, served, old_model, old_catalogue
        self.run_key = run_key
        self.dataset, self.work, self.log, self.progress, self.callbacks = dataset, work, log, progress, callbacks
        self.data = prepare_data(config, dataset)
        self.towers_dir, self.ranking_dir = work / "towers", work / "ranking"

    def _validation(self):
        return [q for q in self.data.validation if len(q.examples)]

    def _metric(self, model) -> float:
        queries = self._validation()
        if not queries:
            raise ConfigError("retraining needs validation queries for its gate, and the split left none; "
                              "use a split with a validation part (split.validation_fraction > 0)")
        metrics = validation_metrics(model, queries, self.data.catalogue, exclude_seen=self.config.eval.exclude_seen)
        return metrics[f"val_{self.config.retrain.metric}"]

    def _warm_start(self, model):
        return warm_start_towers(model, self.old_model, self.old_catalogue, self.data.catalogue)

    def served_metric(self) -> float:
        """The served weights on the new validation queries; new items only through their text."""
        path = self.work / "served_metric.json"
        if path.exists():
            return json.loads(path.read_text())["value"]
        self._seed_text_cache()
        text = text_vectors(self.config, self.data.catalogue, progress=self.progress)
        model = build_model(self.config, self.data, text)
        report = self._warm_start(model)
        carried = item_row_map(self.old_catalogue, self.data.catalogue) > 0
        model.id_known.assign(np.asarray(model.id_known) & carried)
        value = self._metric(model)
        self.log.write("served_metric", metric=self.config.retrain.metric, value=value, warm_start=report.as_dict(),
                       text_cache_hits=text.cache_hits, text_encoded=text.cache_misses)
        write_json(path, {"value": value})
        return value

    def _seed_text_cache(self) -> None:
        """Frozen text vectors of the served catalogue, from the served model's table: retraining
        then encodes only texts that are new or changed, on any machine."""
        config = self.config
        if not (config.towers.use_text and config.encoder.cache):
            return
        summary_path = self.served.towers_dir / "run_summary.json"
        fingerprint = json.loads(summary_path.read_text()).get("text_encoder", {}).get("fingerprint") \
            if summary_path.exists() else None
        if not fingerprint or self.old_model.text_table is None:
            return
        table = np.asarray(self.old_model.text_table)
        EmbeddingCache(config.encoder.cache_dir, fingerprint).put(
            self.old_catalogue.items[schema.TEXT].tolist(), table[1:])

    def train_towers(self) -> TrainedTowers:
        """The towers warm-started from the served ones and trained on the merged data (or the
        ones a killed run already finished)."""
        if (self.towers_dir / "run_summary.json").exists():
            model, _, _ = load_trained(self.towers_dir)
            self.log.write("towers_reused", folder=str(self.towers_dir))
            return TrainedTowers(model, self.towers_dir)
        started = time.perf_counter()
        reports = []
        run = train_retrieval(self.config, self.towers_dir, data=self.data, progress=self.progress,
                              name="retrieval towers (warm-started)",
                              initialize=lambda model: reports.append(self._warm_start(model)),
                              callbacks=self.callbacks)
        history = run.history
        self.log.write("towers_trained", seconds=round(time.perf_counter() - started, 1),
                       epochs=len(history.get("loss", [])), loss=history.get("loss"),
                       text_cache_hits=run.text.cache_hits, text_encoded=run.text.cache_misses,
                       warm_start=reports[-1].as_dict(),
                       test_metrics=json.loads(run.metrics[run.metrics["domain"] == "all"].to_json(orient="records")))
        return TrainedTowers(run.model, self.towers_dir, run)

    def gate(self, served_metric: float, towers: TrainedTowers) -> Gate:
        """Whether the retrained towers may publish: finite, and their validation metric within
        ``retrain.max_regression`` of the served weights'."""
        finite = bool(np.isfinite(towers.model.all_item_embeddings()).all())
        return Gate(served_metric, self._metric(towers.model), self.config.retrain.max_regression,
                    self.config.retrain.metric, finite)

    def _ranker_initializer(self):
        """(initialize(name, model) or None, how): the served rankers' weights copied into the
        new ones when the served version has rankers of the same domains."""
        if self.served.ranking_dir is None:
            return None, "cold start: the served version has no ranker"
        spec = json.loads((self.served.ranking_dir / "ranking_spec.json").read_text())
        if not self.config.retrain.warm_start_ranker:
            return None, "cold start: retrain.warm_start_ranker is false"
        if spec["domains"] != self.data.catalogue.domains:
            return None, f"cold start: trained domains changed ({spec['domains'][1:]} -> {self.data.catalogue.domains[1:]})"
        teacher, student, _ = load_ranking(self.served.ranking_dir)
        old = {"teacher": teacher, "student": student}

        def initialize(name, model):
            if old.get(name) is not None:
                warm_start_ranker(model, old[name])

        return initialize, "warm start"

    def train_rankers(self, towers: TrainedTowers) -> Path | None:
        """The rankers on lists the new towers mine (warm-started when the domains are unchanged):
        their folder, or None when the served version has no ranking model."""
        if not ({"ranking", "recommender"} & set(self.served.models)):
            return None
        if (self.ranking_dir / "run_summary.json").exists():
            self.log.write("rankers_reused", folder=str(self.ranking_dir))
            return self.ranking_dir
        initialize, how = self._ranker_initializer()
        started = time.perf_counter()
        run = train_ranking(self.config, towers.run or towers.folder, self.ranking_dir, dataset=self.dataset,
                            progress=self.progress, initialize=initialize)
        self.log.write("rankers_trained", how=how, seconds=round(time.perf_counter() - started, 1),
                       test_metrics=json.loads(run.metrics.to_json(orient="records")))
        return self.ranking_dir

    def publish(self, towers: TrainedTowers, ranking_dir: Path | None) -> dict[str, int]:
        """Every served model as one new model set (``serving.model_set``); a publish a killed
        run left half done is finished, not repeated: {model: version}."""
        queries = sample_query_embeddings(towers.model, self.data.examples, self.config.export.recall_queries)
        models = [m for m in self.served.models if ranking_dir is not None or m not in ("ranking", "recommender")]
        result = export_models(towers.folder, self.served.base, ranking_dir=ranking_dir, config=self.config,
                               models=models, recall_queries=queries, progress=self.progress,
                               extra_metadata={"retrain_run": {"key": self.run_key,
                                                               "from_version": self.served.version}})
        write_model_config(self.served.base)
        self.log.write("set_published", versions=result.versions)
        return result.versions


def with_overrides(config: Config, *, epochs: int | None = None, max_regression: float | None = None) -> Config:
    if epochs is not None:
        config = replace(config, train=replace(config.train, epochs=epochs),
                         ranking=replace(config.ranking, epochs=epochs))
    if max_regression is not None:
        config = replace(config, retrain=replace(config.retrain, max_regression=max_regression))
    return config
