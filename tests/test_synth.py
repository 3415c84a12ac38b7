"""The built-in data: deterministic, the requested shape, and cross-domain tastes that carry over."""

import numpy as np
import pandas as pd
import pytest

from crossrec import schema
from crossrec.config import SynthConfig
from crossrec.data.synth import THEMES, generate
from crossrec.data.validate import validate

from conftest import TINY


def test_same_seed_same_data_other_seed_other_data(tiny_dataset):
    again = generate(TINY)
    pd.testing.assert_frame_equal(again.interactions, tiny_dataset.interactions)
    pd.testing.assert_frame_equal(again.items, tiny_dataset.items)
    other = generate(SynthConfig(**{**TINY.__dict__, "seed": TINY.seed + 1}))
    assert not other.interactions.equals(tiny_dataset.interactions)


def test_sizes_domains_and_schema(tiny_dataset):
    inter, items = tiny_dataset.interactions, tiny_dataset.items
    assert len(items) == TINY.n_items
    assert sorted(items[schema.DOMAIN].unique()) == sorted(TINY.domains)
    assert inter[schema.USER_ID].nunique() == TINY.n_users
    assert abs(len(inter) - TINY.n_interactions) / TINY.n_interactions < 0.1
    # passes crossrec's own validation with no notes
    _, _, _, report = validate(inter, items, text_template="{title}. {categories}")
    assert report.notes == []


def test_histories_are_ordered_in_time(tiny_dataset):
    inter = tiny_dataset.interactions
    assert inter.groupby(schema.USER_ID)[schema.TIMESTAMP].apply(lambda s: s.is_monotonic_increasing).all()


def test_titles_carry_their_theme_words_in_every_domain(tiny_dataset):
    items = tiny_dataset.items
    for _, row in items.sample(40, random_state=0).iterrows():
        adjs, nouns, _, _ = THEMES[row["theme"]]
        assert any(w in row[schema.TITLE] for w in adjs + nouns), row[schema.TITLE]


def test_a_users_favourite_theme_carries_across_domains():
    data = generate(SynthConfig(n_users=600, n_items=900, n_interactions=15000, seed=1))
    merged = data.interactions.merge(data.items[[schema.ITEM_ID, "theme"]], on=schema.ITEM_ID)
    top = merged.groupby([schema.USER_ID, schema.DOMAIN])["theme"].agg(lambda s: s.value_counts().index[0])
    top = top.unstack()
    both = top["books"].notna() & top["movies"].notna()
    agreement = (top.loc[both, "books"] == top.loc[both, "movies"]).mean()
    chance = 1 / len(THEMES)
    # learnable (far above chance) but not trivial (far from always)
    assert 3 * chance < agreement < 0.8


def test_popularity_is_skewed(tiny_dataset):
    counts = tiny_dataset.interactions.groupby(schema.ITEM_ID).size().sort_values(ascending=False)
    top_decile = counts.head(len(counts) // 10).sum() / counts.sum()
    assert top_decile > 0.2


def test_custom_domains_get_titles():
    data = generate(SynthConfig(n_users=20, n_items=40, n_interactions=200, domains=["games", "garden tools"]))
    assert sorted(data.items[schema.DOMAIN].unique()) == ["games", "garden tools"]
    assert data.items[schema.TITLE].str.len().min() > 5


def test_impossible_sizes_are_refused():
    with pytest.raises(ValueError, match="synth sizes do not fit"):
        generate(SynthConfig(n_users=10, n_items=2, n_interactions=100))
    with pytest.raises(ValueError, match="distinct and non-empty"):
        generate(SynthConfig(domains=["a", "a"]))


def test_ratings_follow_taste():
    data = generate(SynthConfig(n_users=300, n_items=600, n_interactions=6000, seed=3))
    assert set(np.unique(data.interactions[schema.RATING])) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert data.interactions[schema.RATING].std() > 0.5
