"""Splits are deterministic and leak nothing from validation/test into train."""

import pandas as pd
import pytest

from crossrec import schema
from crossrec.config import SplitConfig
from crossrec.data.splits import cold_start, leave_last_out, new_item, split
from crossrec.errors import ConfigError


def test_leave_last_out_holds_out_the_last_two_per_user_and_domain(tiny_dataset):
    out = leave_last_out(tiny_dataset.interactions)
    assert len(out) == len(tiny_dataset.interactions)
    for (_, _), group in out.groupby([schema.USER_ID, schema.DOMAIN]):
        group = group.sort_values(schema.TIMESTAMP, kind="stable")
        labels = group[schema.SPLIT].tolist()
        if len(group) >= 3:
            assert labels[-2:] == [schema.VALIDATION, schema.TEST]
            assert set(labels[:-2]) == {schema.TRAIN}
        else:
            assert set(labels) == {schema.TRAIN}


def test_leave_last_out_no_training_example_is_later_than_test(tiny_dataset):
    out = leave_last_out(tiny_dataset.interactions)
    key = [schema.USER_ID, schema.DOMAIN]
    last_train = out[out[schema.SPLIT] == schema.TRAIN].groupby(key)[schema.TIMESTAMP].max()
    test = out[out[schema.SPLIT] == schema.TEST].set_index(key)[schema.TIMESTAMP]
    assert (last_train.reindex(test.index) <= test).all()


def test_leave_last_out_with_seq_pos_and_ties():
    inter = pd.DataFrame({schema.USER_ID: ["u"] * 4, schema.ITEM_ID: ["a", "b", "c", "d"],
                          schema.DOMAIN: ["x"] * 4, schema.SEQ_POS: [0, 1, 1, 2]})
    out = leave_last_out(inter)
    assert out[schema.SPLIT].tolist() == ["train", "train", "validation", "test"]


def test_cold_start_users_lose_the_target_domain_and_keep_the_others(tiny_dataset):
    inter = tiny_dataset.interactions
    out = cold_start(inter, target_domain="movies", fraction=0.3, seed=1)
    held_rows = out[out[schema.SPLIT] != schema.TRAIN]
    assert (held_rows[schema.DOMAIN] == "movies").all()
    held_users = set(held_rows[schema.USER_ID])
    train = out[out[schema.SPLIT] == schema.TRAIN]
    # no leakage: held-out users have no target-domain interaction in train ...
    assert not (train[schema.USER_ID].isin(held_users) & (train[schema.DOMAIN] == "movies")).any()
    # ... but all of their other-domain history stays in train
    assert held_users <= set(train.loc[train[schema.DOMAIN] != "movies", schema.USER_ID])
    eligible = (set(inter.loc[inter[schema.DOMAIN] == "movies", schema.USER_ID])
                & set(inter.loc[inter[schema.DOMAIN] != "movies", schema.USER_ID]))
    assert len(held_users) == round(len(eligible) * 0.3)
    assert set(held_rows[schema.SPLIT]) == {schema.VALIDATION, schema.TEST}
    # a user is wholly validation or wholly test
    assert held_rows.groupby(schema.USER_ID)[schema.SPLIT].nunique().max() == 1


def test_new_items_never_appear_in_training(tiny_dataset):
    out = new_item(tiny_dataset.interactions, fraction=0.2, seed=3)
    key = [schema.DOMAIN, schema.ITEM_ID]
    train_items = set(map(tuple, out.loc[out[schema.SPLIT] == schema.TRAIN, key].to_numpy()))
    held_items = set(map(tuple, out.loc[out[schema.SPLIT] != schema.TRAIN, key].to_numpy()))
    assert held_items and not (train_items & held_items)
    used = tiny_dataset.interactions.groupby(schema.DOMAIN)[schema.ITEM_ID].nunique()
    held_per_domain = pd.Series([d for d, _ in held_items]).value_counts()
    assert ((held_per_domain - used * 0.2).abs() <= 1).all()


@pytest.mark.parametrize("kind", ["leave_last_out", "cold_start", "new_item"])
def test_splits_are_deterministic_for_a_seed(tiny_dataset, kind):
    config = SplitConfig(kind=kind, target_domain="books", seed=5)
    a = split(tiny_dataset.interactions, config)
    b = split(tiny_dataset.interactions.copy(), config)
    assert a[schema.SPLIT].tolist() == b[schema.SPLIT].tolist()
    if kind != "leave_last_out":
        c = split(tiny_dataset.interactions, SplitConfig(kind=kind, target_domain="books", seed=6))
        assert a[schema.SPLIT].tolist() != c[schema.SPLIT].tolist()


def test_cold_start_errors_name_the_setting(tiny_dataset):
    with pytest.raises(ConfigError, match=r"split.target_domain is required for a cold_start split \(domains: "
                                          r"books, kitchen, movies\)"):
        cold_start(tiny_dataset.interactions, target_domain=None)
    with pytest.raises(ConfigError, match="no interactions in domain 'toys'"):
        cold_start(tiny_dataset.interactions, target_domain="toys")
    with pytest.raises(ConfigError, match="holdout_fraction must be between 0 and 1"):
        cold_start(tiny_dataset.interactions, target_domain="books", fraction=1.5)


def test_evaluation_split_of_a_single_domain_dataset_has_warm_and_new_item_slices_only(tiny_dataset):
    from crossrec.data.splits import SLICE, evaluation_split

    one = tiny_dataset.interactions[tiny_dataset.interactions["domain"] == "books"]
    out = evaluation_split(one, target_domain="books", seed=0)
    assert set(out[SLICE]) == {"", "warm", "new_item"}
