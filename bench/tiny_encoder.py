"""Tiny random keras-hub BERT presets (saved and loaded like real ones): the tests' encoder, and
the benchmarks' where only the cost of everything but encoding is measured."""

from pathlib import Path

import crossrec  # noqa: F401
from crossrec.data.synth import THEMES

WORDS = sorted({w.lower() for adjs, nouns, _, _ in THEMES.values() for w in " ".join(adjs + nouns).split()}
               | set(["the", "a", "of", "and", ":", "(", ")", ".", ",", ">", "-", "books", "movies", "kitchen", "novel", "mug", "set", "print"]))


def make_tiny_preset(directory: Path, *, hidden_dim: int = 16, num_layers: int = 2, seed: int = 0) -> Path:
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab, lowercase=True)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(vocab), num_layers=num_layers, num_heads=2,
                                             hidden_dim=hidden_dim, intermediate_dim=2 * hidden_dim,
                                             max_sequence_length=64)
    directory.mkdir(parents=True, exist_ok=True)
    backbone.save_to_preset(str(directory))
    tokenizer.save_to_preset(str(directory))
    return directory
