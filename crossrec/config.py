"""Typed configuration: dataclasses, loadable from and savable to YAML.

A YAML file mirrors the dataclasses below, section by section. Every key is optional (the
defaults are the built-in data and sensible settings); an unknown key or a value of the wrong
type is a ``ConfigError`` that names the key, what was expected and what was found::

    data:
      interactions: data/interactions.parquet
      items: data/items.parquet
      text_template: "{title}. {categories}"
    split:
      kind: leave_last_out
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from crossrec import schema
from crossrec.encoder_config import AdaptConfig, EncoderConfig  # noqa: F401 (re-exported)
from crossrec.errors import ConfigError
from crossrec.ranking_config import (  # noqa: F401 (the ranking section, re-exported for its users)
    CANDIDATE_SOURCES,
    DEFAULT_STUDENT_FEATURES,
    RANKING_FEATURES,
    RANKING_TASKS,
    RankerConfig,
    RankingConfig,
)
from crossrec.typed import from_dict, to_dict

DataFormat = Literal["table", "movielens", "amazon"]
UnknownItemPolicy = Literal["error", "drop"]
SplitKind = Literal["leave_last_out", "cold_start", "new_item", "evaluation", "given"]


@dataclass
class SynthConfig:
    """The built-in synthetic multi-domain catalogue (see ``crossrec.data.synth``)."""

    # Users in the built-in data.
    n_users: int = 2000
    # Items over all domains.
    n_items: int = 3000
    # Interactions over all users.
    n_interactions: int = 60000
    # The item domains generated.
    domains: list[str] = field(default_factory=lambda: ["books", "movies", "kitchen"])
    # Share of interactions that ignore the user's tastes (popularity-driven noise).
    noise: float = 0.1
    # How far a user's tastes move from the start of their history to its end (0 = not at all).
    drift: float = 0.35
    # Zipf exponent of item popularity inside a theme.
    popularity_exponent: float = 0.7
    # Dirichlet concentration of a user's taste over themes (smaller = fewer favourite themes).
    taste_concentration: float = 0.15
    # Random seed of the generator.
    seed: int = 0


@dataclass
class DataConfig:
    """Where the data comes from and how to read it. No ``interactions`` = the built-in data."""

    # Interactions file or folder (interactions.* and items.*); null = the built-in data.
    interactions: str | None = None
    # Items file (not needed when interactions is a folder).
    items: str | None = None
    # Optional users file.
    users: str | None = None
    # table: Parquet / CSV / CSV.gz in the canonical schema (rename columns with ``columns``);
    # movielens: an ml-100k / ml-1m / ml-latest directory given as ``interactions``;
    # amazon: Amazon Reviews JSON Lines, ``interactions`` = {domain: reviews file} pairs in
    # ``amazon_files``.
    format: DataFormat = "table"
    # canonical column name -> name in the source files, e.g. {user_id: userId}.
    columns: dict[str, str] = field(default_factory=dict)
    # Python format string over item columns; builds the text the encoder reads.
    text_template: str = schema.DEFAULT_TEXT_TEMPLATE
    # Interactions whose (domain, item_id) is not in the items table: fail, or drop and report.
    unknown_items: UnknownItemPolicy = "error"
    # MovieLens: "genre" makes each movie's first genre its domain; "movies" keeps one domain.
    movielens_domain: Literal["movies", "genre"] = "movies"
    # Amazon: domain name -> {reviews: path, meta: path}.
    amazon_files: dict[str, dict[str, str]] = field(default_factory=dict)
    synth: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class SplitConfig:
    """How interactions are split into train / validation / test (``crossrec.data.splits``)."""

    # leave_last_out | cold_start | new_item (evaluation and given: what a training run records).
    kind: SplitKind = "leave_last_out"
    # Random seed of the split (which users and items are held out).
    seed: int = 0
    # cold_start: the domain whose interactions are held out for some users.
    target_domain: str | None = None
    # cold_start: share of eligible users held out; new_item: share of items held out.
    holdout_fraction: float = 0.2
    # cold_start / new_item: share of the held-out part that goes to validation (rest: test).
    validation_fraction: float = 0.5


@dataclass
class TowerConfig:
    """Item towers and the shared user tower (``towers.model``)."""

    # Size of the item and query embeddings.
    embedding_dim: int = 64
    # Items seen in training also get an ID embedding, added to the text path (hybrid).
    use_item_ids: bool = True
    # Share of training examples whose item-ID embeddings are dropped, so text alone stays strong
    # (the defaults of this, the text-only loss and the text experts: docs: design notes).
    # Raise it to 0.3 when items have only a handful of interactions each (new items +19% / +51%
    # on Amazon Arts/Office; -7% to -23% where items have dozens: docs: your data, design notes),
    # or give auto: chosen on the training split's validation queries (towers.tuning).
    item_id_dropout: float | Literal["auto"] = 0.1
    # Weight of a second loss on the same queries whose candidates are embedded from text alone
    # (no item-ID part): trains the path new items take without dropping IDs from the hybrid
    # (0 = off). With it, item_id_dropout can be low: the hybrid mostly sees its IDs.
    text_only_loss_weight: float = 0.5
    # The shared text path: 0 = a two-layer MLP over the text vector; K > 0 = UniSRec's
    # mixture-of-experts adapter (K parametric-whitening experts and a softmax gate).
    text_experts: int = 8
    # false = an ID-only two-tower (no text): the baseline that shows what text adds.
    use_text: bool = True
    # Share of examples trained through the domain-agnostic adapter alone (what unseen domains use).
    domain_dropout: float = 0.2
    # Subtract each domain's mean text vector (computed from its items' texts, so a brand-new domain
    # gets one too): removes what all of a domain's texts share (e.g. "Kitchen > Mug") and aligns
    # domains for transfer and zero-shot use.
    center_text_by_domain: bool = True
    # The user's most recent interactions (all domains) the user tower reads.
    history_length: int = 32
    # Hashed user-id embedding buckets (0 = none: users are known by their history alone).
    user_id_buckets: int = 0
    # Dropout in the towers.
    dropout: float = 0.1
    # Settings given as auto (towers.tuning): at most this many trainings to choose them.
    auto_trials: int = 4
    # ... and no trial started after this many minutes (the values measured to matter always run).
    auto_budget_minutes: float = 30.0
    # ... and the default kept unless another scores this much (relative) more on validation.
    auto_margin: float = 0.02


@dataclass
class TrainConfig:
    """The retrieval fit script (``towers.train``)."""

    # Maximum epochs (early stopping may end sooner).
    epochs: int = 10
    # Training examples per batch.
    batch_size: int = 256
    # AdamW's learning rate.
    learning_rate: float = 0.003
    # AdamW's weight decay.
    weight_decay: float = 0.0001
    # Softmax temperature of the retrieval loss.
    temperature: float = 0.1
    # Correct the in-batch softmax for item popularity (logQ correction).
    logq_correction: bool = True
    # Mask in-batch negatives that are the query's own target item.
    remove_accidental_hits: bool = True
    # Extra hardest in-batch negatives per query (0 = off).
    hard_negatives: int = 0
    # In-batch negatives only from the query's target domain (as evaluation and serving rank
    # within a domain); false = every in-batch item is a negative.
    same_domain_negatives: bool = True
    # Loss weight per domain (the cross-domain weighting alpha_i); missing domains weigh 1.
    domain_weights: dict[str, float] = field(default_factory=dict)
    # Sample batches so every domain is equally represented.
    balance_domains: bool = False
    # Epochs without a better validation Recall@50 before training stops.
    early_stopping_patience: int = 3
    # Queries per slice that the per-epoch validation metric (early stopping, checkpoints) reads,
    # sampled once, so an epoch's validation costs at most this many queries x items per slice
    # (null = all of them).
    validation_queries: int | None = 10000
    # Training steps per graph call (Keras steps_per_execution): amortises per-step overhead.
    steps_per_execution: int = 8
    # tf.distribute strategy: auto (default / Mirrored on several GPUs / MultiWorkerMirrored from
    # TF_CONFIG / TPU when tpu_address is set), default, mirrored, multi_worker, tpu.
    strategy: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto"
    # The TPU to train on (local on a TPU VM); strategy auto then picks TPUStrategy.
    tpu_address: str | None = None
    # Mixed precision on GPU (ignored on CPU).
    mixed_precision: bool = True
    # Random seed of initialisation, shuffling and dropout.
    seed: int = 0


@dataclass
class ExportConfig:
    """Versioned SavedModels in TF Serving's layout (``serving.export``)."""

    # brute_force: exact, loads in stock tensorflow/serving; scann: approximate and fast, needs the
    # google/tf-serving-scann build (or `import scann` in Python) to load.
    index: Literal["brute_force", "scann"] = "brute_force"
    # The largest k a request may ask for (fixed at export).
    max_k: int = 100
    # The most candidates one query of a `ranking` request may carry (fixed at export): a request's
    # memory grows with its candidates squared (each candidate's place in its list).
    max_candidates: int = 500
    # Which ranker the ranking and recommender models use: the distilled student (cheaper) or the teacher.
    ranker: Literal["student", "teacher"] = "student"
    # ScaNN: leaves of the partitioning tree per domain (null = 2 sqrt(items)), leaves searched
    # per query (null = half of them), and exact re-scoring of this many candidates (recall and
    # search time at export: the version's metadata; at 1M items: docs: results, serving).
    scann_leaves: int | None = None
    # ScaNN leaves searched per query; null = half of the leaves.
    scann_leaves_to_search: int | None = None
    # ScaNN candidates re-scored exactly.
    scann_reorder: int = 1000
    # Queries sampled to measure the index's recall@10 against exact search (stored in the metadata).
    recall_queries: int = 1000
    # Item tables (index and embedding lookups) stored as float32 (none), float16, or int8 with a
    # scale per row: 2x / 4x smaller; recall@10 against exact float search is measured at export.
    # Brute-force index only (ScaNN compresses its own).
    quantize: Literal["none", "float16", "int8"] = "none"
    # Write assets.extra/tf_serving_warmup_requests (TF Serving's format) into each version: the
    # server replays them before the version serves, so its first request is not slow.
    warmup: bool = True


@dataclass
class RetrainConfig:
    """``crossrec retrain``: warm-started training on old + new data, gated publishing."""

    # Train on every user's last `window` interactions (old and new together); null = all of them.
    window: int | None = None
    # How the new data's items table changes the catalogue. merge: its rows add new items and
    # replace changed ones (rows with `removed: true` are taken out); replace: it is the whole
    # catalogue, and items missing from it are removed.
    catalogue: Literal["merge", "replace"] = "merge"
    # The gate: publish only if this validation metric of the retrained towers is at least the
    # served model's on the same queries times (1 - max_regression). Recall@50 is what early
    # stopping watches; a catalogue of under ~100 items per domain needs recall_at_10 or ndcg_at_10.
    metric: Literal["recall_at_50", "recall_at_10", "ndcg_at_10"] = "recall_at_50"
    # Publish only if the gate's metric >= the served model's x (1 - this).
    max_regression: float = 0.02
    # Warm-start the ranker too (when the trained domains are unchanged; otherwise it starts cold).
    warm_start_ranker: bool = True

    def __post_init__(self):
        if self.window is not None and self.window < 2:
            raise ConfigError(f"retrain.window: expected at least 2 interactions per user or null, got {self.window}")
        if not 0 <= self.max_regression < 1:
            raise ConfigError(f"retrain.max_regression: expected a share in [0, 1), got {self.max_regression}")


@dataclass
class EvalConfig:
    """The evaluator shared by every model (``crossrec.evaluation``)."""

    # Cut-offs of Recall@k (NDCG and MRR are at 10).
    ks: list[int] = field(default_factory=lambda: [10, 50, 100])
    # Leave items the user already interacted with out of the ranking.
    exclude_seen: bool = True
    # Use the dataset's own split column / roles where it has them (e.g. a published split).
    use_given_split: bool = True
    # On a given split: the share of each held-out split's multi-domain users asked as a
    # cross-domain cold start (their interactions in one domain leave the data; see
    # crossrec.data.splits.given_split). The rest are the warm slice.
    given_cold_start_fraction: float = 0.5
    # Train every model this many times (train.seed, +1, ...) and pool the queries of every seed
    # (intervals and paired comparisons then cover seed noise as well as query noise).
    seeds: int = 1


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    towers: TowerConfig = field(default_factory=TowerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Options measured not to help and removed (docs: design notes; deployment, "Retrieval levers,
# measured"; Ranking): their key and the value every run had unless it set them. A saved config
# of an older run (a served version's training state) still loads when it holds that value
# (ANY: whatever it holds, a setting that only mattered with another removed one).
ANY = object()
REMOVED_KEYS = {
    ("towers", "id_embedding_init"): "random",
    ("towers", "fusion"): "sum",
    ("towers", "target_domain_history_dropout"): 0.0,
    ("towers", "self_attention_layers"): 0,
    ("train", "sampled_negatives"): 0,
    ("train", "negatives"): "in_batch",
    ("train", "examples"): "windows",
    ("ranking", "loss"): "listwise",
    # fine-tuning inside the towers' fit (19-34 examples/s on 2 cores, its quality never measured
    # here) gave way to adapting the encoder once beforehand (encoder.adapt, `crossrec adapt`)
    ("encoder", "freeze"): "frozen",
    ("encoder", "trainable_layers"): ANY,
    ("encoder", "lora_rank"): ANY,
    ("encoder", "shared_backbone"): True,
}
REPLACED_BY = {("encoder", "freeze"): "encoder.adapt (`crossrec adapt`): the encoder's top layers fine-tuned once, "
                                      "before the towers train"}


def _without_removed_keys(raw: dict, where: str) -> dict:
    """``raw`` without the removed options that hold the behaviour crossrec now has; one set to
    anything else is a ``ConfigError`` (its run cannot be reproduced, and silently ignoring it
    would train something else)."""
    for (section, key), kept in REMOVED_KEYS.items():
        part = raw.get(section)
        if not isinstance(part, dict) or key not in part:
            continue
        if kept is not ANY and part[key] != kept:
            if (section, key) in REPLACED_BY:
                raise ConfigError(f"{where}: {section}.{key}: {part[key]!r} is no longer an option; use "
                                  f"{REPLACED_BY[section, key]}. Delete the key")
            raise ConfigError(f"{where}: {section}.{key}: {part[key]!r} is no longer an option (it was measured not "
                              f"to help; the docs' design notes keep the numbers); "
                              f"crossrec always does what {key}: {kept!r} did. Delete the key")
        raw = {**raw, section: {k: v for k, v in part.items() if k != key}}
    return raw


def load_config(path: str | Path | None) -> Config:
    """Reads a YAML config; ``None`` gives the defaults. Relative data paths are resolved
    against the config file's folder, so a config works from any working directory."""
    if path is None:
        return Config()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        config = from_dict(Config, _without_removed_keys(raw, str(path)))
    except ConfigError as exc:
        raise ConfigError(f"in {path}, {exc}") from None
    _resolve_paths(config, Path(os.path.abspath(path.parent)))
    return config


def _resolve_paths(config: Config, base: Path, *, preset_if_exists: bool = False) -> None:
    def resolve(p: str | None) -> str | None:
        if p is None or Path(p).is_absolute():
            return p
        return os.path.normpath(base / p)  # absolute: a saved copy of the config still finds the data

    data = config.data
    preset = config.encoder.preset  # a preset name stays a name where no such folder exists
    if not preset_if_exists or (preset is not None and (base / preset).exists()):
        config.encoder.preset = resolve(preset)
    config.encoder.cache_dir = resolve(config.encoder.cache_dir)
    if not preset_if_exists:  # loading: a run records its adapted encoder relative to its own folder
        config.encoder.adapted = resolve(config.encoder.adapted)
    data.interactions = resolve(data.interactions)
    data.items = resolve(data.items)
    data.users = resolve(data.users)
    data.amazon_files = {
        d: {k: resolve(v) for k, v in files.items()} for d, files in data.amazon_files.items()
    }


def save_config(config: Config, path: str | Path) -> None:
    """Writes ``config`` as YAML with every relative path made absolute against the working
    directory it was given in: a run's saved config finds its data from any folder."""
    config = copy.deepcopy(config)
    _resolve_paths(config, Path(os.getcwd()), preset_if_exists=True)
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
