"""What the retrieval model is built from, and nothing else: ``TowerSpec`` (the towers' shape),
``LossSpec`` (the retrieval loss) and ``TowerTables`` (the catalogue's arrays the towers read).
``RetrievalModel`` takes these three; the training configuration stays with the fit script
(``towers.train``), which derives them (``from_config``) once, after ``auto`` settings are chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from crossrec.config import Config, TowerConfig


@dataclass(frozen=True)
class TowerSpec:
    # width of every embedding (items and queries)
    embedding_dim: int = 64
    # history slots the user tower reads
    history_length: int = 32
    # the item tower reads the item's text vector
    use_text: bool = True
    # the item tower learns an ID embedding per training item
    use_item_ids: bool = True
    # share of training items embedded as if new (text alone), per step; a number, never auto here
    item_id_dropout: float = 0.1
    # share of steps that hide the item's domain adapter
    domain_dropout: float = 0.2
    # dropout inside the towers
    dropout: float = 0.1
    # whitening experts over the text vector (0: a plain two-layer map)
    text_experts: int = 8
    # hashed user-ID buckets in the user tower (0: none)
    user_id_buckets: int = 0
    # subtract each text domain's mean text vector before the tower
    center_text_by_domain: bool = True

    @classmethod
    def from_config(cls, towers: TowerConfig) -> TowerSpec:
        if towers.item_id_dropout == "auto":
            raise ValueError("TowerSpec.from_config: towers.item_id_dropout is auto; choose it first (towers.tuning)")
        return cls(**{f.name: getattr(towers, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class LossSpec:
    # softmax temperature of the in-batch loss
    temperature: float = 0.1
    # subtract log sampling probability from in-batch negatives' logits
    logq_correction: bool = True
    # drop a negative that is the query's own target
    remove_accidental_hits: bool = True
    # keep only the hardest in-batch negatives (0: all)
    hard_negatives: int = 0
    # only candidates of the target's domain compete
    same_domain_negatives: bool = True
    # weight of the same loss over candidates embedded from text alone
    text_only_loss_weight: float = 0.5

    @classmethod
    def from_config(cls, config: Config) -> LossSpec:
        t = config.train
        return cls(float(t.temperature), bool(t.logq_correction), bool(t.remove_accidental_hits),
                   int(t.hard_negatives), bool(t.same_domain_negatives), float(config.towers.text_only_loss_weight))


@dataclass(frozen=True, eq=False)
class TowerTables:
    # (items, d) every item's text vector (None: towers without text)
    text_table: np.ndarray | None
    # (items,) each item row's domain index
    item_domain: np.ndarray
    # (items,) whether the item has training interactions (an ID embedding to read)
    id_known: np.ndarray
    # (items,) each item row's text domain (its encoder and text mean)
    text_domain: np.ndarray
    # (text domains, d) each text domain's mean text vector (None: without text)
    text_means: np.ndarray | None
    # (items,) each item's share of the training interactions (logQ correction)
    item_probability: np.ndarray
    # number of domains, padding included
    num_domains: int
