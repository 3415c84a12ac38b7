"""crossrec from Python (a notebook, a script): the functions the ``crossrec`` commands run, by name.

Each is what one command does, with the same objects and files, so a folder written here is one
the CLI reads and the other way round::

    import crossrec.api as cr

    config = cr.config(data="my_data/", train={"epochs": 5})   # or cr.config("cfg.yaml", ...)
    data = cr.load_data(config)                # validated: errors name the file, row, column and fix
    towers = cr.train_towers(config, "runs/towers")            # crossrec train retrieval
    rankers = cr.train_rankers(config, "runs/towers", "runs/rankers")   # crossrec train ranking
    report = cr.evaluate(config, "runs/report")                # crossrec evaluate
    cr.export("runs/towers", "saved_models", rankers="runs/rankers")    # crossrec export
    with cr.recommender("saved_models") as model:              # the exported models, in-process
        model.recommend([("books", "BO00012")], domain="movies", k=10)

``crossrec serve --model-dir saved_models`` serves the same folder over gRPC and REST. Importing
this module drops the log lines the commands drop (``crossrec.quiet``); the first training, export
or load spends TensorFlow's one-time oneDNN note, after any TensorFlow settings made before it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import crossrec  # noqa: F401  (the TF/Keras environment first)
from crossrec.config import Config, load_config
from crossrec.quiet import init_devices, quiet_logs, spend_onednn_note
from crossrec.typed import from_dict, to_dict

__all__ = ["Config", "Evaluation", "config", "evaluate", "export", "load_data", "recommender", "synth",
           "train_rankers", "train_towers"]

quiet_logs()  # what the commands silence, silenced here too (crossrec.quiet)
init_devices()

DEFAULT_MODELS = ("crossrec", "popularity", "id_two_tower", "target_only", "ranking")


def config(path: str | Path | None = None, *, data: str | Path | None = None, items: str | Path | None = None,
           format: str | None = None, **sections: dict) -> Config:
    """A checked ``Config``: the YAML file at ``path`` (or the defaults), ``data``/``items``/``format``
    as ``--data``/``--items``/``--format`` set them, and any section's keys, e.g.
    ``train={"epochs": 5}`` or ``towers={"item_id_dropout": 0.3}``. Unknown keys and wrong types
    raise ``ConfigError`` naming the key."""
    merged = to_dict(load_config(str(path)) if path else Config())
    given = {"interactions": data, "items": items, "format": format}
    merged["data"].update({k: str(v) if isinstance(v, Path) else v for k, v in given.items() if v is not None})
    for section, values in sections.items():
        if not isinstance(values, dict):
            merged[section] = values  # from_dict names the section and what it expected
            continue
        merged[section] = _merge(merged.get(section), values)
    return from_dict(Config, merged, where="")


def _merge(base, values: dict):
    if not isinstance(base, dict):
        return values
    out = copy.deepcopy(base)
    for key, value in values.items():
        out[key] = _merge(out.get(key), value) if isinstance(value, dict) else value
    return out


def synth(out: str | Path, *, file_format: str = "parquet", overwrite: bool = False, **sizes) -> Path:
    """Writes the built-in data (``crossrec data synth``) to the folder ``out`` (``interactions``
    and ``items``, Parquet or ``file_format="csv"``); ``sizes`` are ``data.synth``'s keys
    (``n_users``, ``n_items``, ``n_interactions``, ``domains``, ``seed``...)."""
    from crossrec.config import SynthConfig
    from crossrec.data.synth import generate
    from crossrec.errors import ConfigError

    try:
        dataset = generate(from_dict(SynthConfig, sizes, where="synth"))
        return Path(dataset.save(out, file_format=file_format, overwrite=overwrite))
    except (ValueError, FileExistsError) as exc:
        raise ConfigError(str(exc)) from None


def load_data(config: Config):
    """The validated dataset (``crossrec data validate``): a ``crossrec.data.Dataset`` with
    ``interactions``, ``items``, ``users`` and ``domains``."""
    from crossrec.data.loaders import load_dataset

    return load_dataset(config.data)


def adapt(config: Config, *, budget_minutes: float | None = None, progress: bool = True):
    """``crossrec adapt``: the text encoder adapted to ``config``'s training split and cached (what
    a training with ``encoder.adapt.enabled`` reads); a ``towers.adapt.Adaptation`` (``.path``,
    ``.report``: held-out pairs' Recall@10 before and after, pairs, steps, seconds)."""
    from crossrec.experiment import prepare_data
    from towers.adapt import adapt_encoder

    spend_onednn_note()
    data = prepare_data(config)
    config = replace(config, encoder=replace(config.encoder, adapt=replace(config.encoder.adapt, enabled=True)))
    return adapt_encoder(config, data.train, data.catalogue, progress=progress, budget_minutes=budget_minutes)[1]


def train_towers(config: Config, out: str | Path, *, progress: bool = True):
    """``crossrec train retrieval``: the towers trained, evaluated on the test queries and written
    to ``out``; a ``towers.train.RetrievalRun`` (``.metrics``, ``.model``, ``.data``)."""
    from towers.train import train_retrieval

    spend_onednn_note()
    return train_retrieval(config, out, progress=progress, baselines=True)


def train_rankers(config: Config, towers: str | Path, out: str | Path, *, progress: bool = True):
    """``crossrec train ranking``: the ranker and its distilled student on the lists the towers in
    folder ``towers`` retrieve, written to ``out``; a ``ranking.train.RankingRun`` (``.metrics``:
    the towers' order, the ranker, the student and the served list on the same test lists)."""
    from ranking.train import train_ranking

    spend_onednn_note()
    return train_ranking(config, str(towers), out, progress=progress)


def all_domains(table, per_domain: bool = False):
    """A by-domain table's ``all`` rows (the domain level dropped), or every row with ``per_domain``."""
    if per_domain:
        return table
    return table[table.index.get_level_values("domain") == "all"].droplevel("domain")


@dataclass
class Evaluation:
    """What ``crossrec evaluate`` prints and writes: the comparison and the report's path."""

    comparison: object  # crossrec.pipelines.compare.Comparison
    report: Path
    seeds: int

    @property
    def metrics(self):
        """One row per model, slice and domain: queries, recall@k, ndcg@10, mrr and their intervals."""
        return self.comparison.metrics

    def ndcg(self, per_domain: bool = False):
        """NDCG@10 by slice (rows) and model (columns), as the command prints it."""
        from crossrec.report import ndcg_table

        return all_domains(ndcg_table(self.comparison.metrics), per_domain)

    def summary(self) -> list[str]:
        from crossrec.report import summary_lines

        return summary_lines(self.comparison.metrics, self.comparison.paired)


def evaluate(config: Config, out: str | Path, *, models=DEFAULT_MODELS, seeds: int | None = None,
             zero_shot_domain: str | None = None, towers_out: str | Path | None = None,
             rankers_out: str | Path | None = None, progress: bool = True) -> Evaluation:
    """``crossrec evaluate``: crossrec and the baselines ``models`` trained on one split, every
    held-out interaction ranked against its domain's whole catalogue, the report written to
    ``out``. ``towers_out``/``rankers_out`` keep the trained crossrec (``--model-out``,
    ``--ranking-out``) for ``export``."""
    from crossrec.pipelines.compare import compare_over_seeds
    from crossrec.report import write_report

    spend_onednn_note()
    seeds = seeds if seeds is not None else config.eval.seeds
    result = compare_over_seeds(config, seeds, models=list(models), zero_shot_domain=zero_shot_domain,
                                progress=progress, model_out=towers_out, ranking_out=rankers_out)
    notes = [f"data: {config.data.interactions or 'built-in synthetic data'}",
             f"training seeds: {seeds}" + (" (each query's metric averaged over them)" if seeds > 1 else ""),
             f"cross-domain cold-start target domain: {result.target_domain}",
             "full-corpus ranking per target domain" + (", seen items excluded" if config.eval.exclude_seen else ""),
             "seconds (training per model; evaluation: every model's test queries ranked): "
             + ", ".join(f"{k} {v}" for k, v in result.seconds.items())]
    chosen = [", ".join(f"{k} {v:g}" for k, v in seed.items()) for seed in result.chosen]
    if any(chosen):
        notes.append("chosen on the validation split (`auto`), per training seed: "
                     + "; ".join(f"seed {i}: {c or 'none'}" for i, c in enumerate(chosen)))
    path = write_report(result.metrics, out, title="crossrec evaluation", notes=notes, histories=result.histories,
                        extra={"seconds": result.seconds}, reranking=result.reranking, paired=result.paired,
                        ranks=result.ranks)
    return Evaluation(result, Path(path), seeds)


def export(towers: str | Path, out: str | Path = "saved_models", *, rankers: str | Path | None = None,
           config: Config | None = None, models=None, version: int | None = None, progress: bool = True,
           **settings):
    """``crossrec export``: the models as one versioned set under ``out`` (TF Serving's layout) and
    ``out/models.config``; a ``serving.export.ExportResult`` (``.versions``, ``.paths``). The
    ``export:`` section is ``config``'s (default: the towers' own), with ``settings`` over it
    (e.g. ``index="scann"``, ``max_k=200``)."""
    from dataclasses import replace

    from serving.export import export_models, write_model_config
    from serving.parts import load_parts, sample_queries

    spend_onednn_note()
    parts = load_parts(towers, None, config)
    merged = from_dict(type(parts.config.export), {**to_dict(parts.config.export), **settings}, where="export")
    parts = replace(parts, config=replace(parts.config, export=merged))
    queries = sample_queries(parts, merged.recall_queries)
    result = export_models(towers, out, ranking_dir=rankers, config=parts.config, models=models, version=version,
                           recall_queries=queries, progress=progress)
    write_model_config(out)
    return result


def recommender(model_dir: str | Path = "saved_models"):
    """The exported models answered in this process (``serving.local.LocalClient``): ``recommend``,
    ``feed``, ``retrieve``, ``rank`` and ``encode_items``, as ``serving.client.CrossrecClient``
    asks a server."""
    from serving.local import LocalClient

    spend_onednn_note()
    return LocalClient(model_dir)
