"""Typed config: YAML in, dataclasses out; unknown keys and wrong types are named."""

import pytest

from crossrec.config import Config, DataConfig, SplitConfig, load_config, save_config
from crossrec.errors import ConfigError


def test_defaults_use_the_builtin_data():
    config = load_config(None)
    assert config.data.interactions is None
    assert config.data.synth.domains == ["books", "movies", "kitchen"]


def test_yaml_round_trip(tmp_path):
    config = Config(data=DataConfig(interactions="/abs/i.csv", items="/abs/items.csv",
                                    columns={"user_id": "userId"}, text_template="{title}. {categories}"),
                    split=SplitConfig(kind="cold_start", target_domain="movies", holdout_fraction=0.3))
    path = tmp_path / "c.yaml"
    save_config(config, path)
    assert load_config(path) == config


def test_relative_paths_resolve_against_the_config_folder(tmp_path, write):
    (tmp_path / "sub").mkdir()
    path = write("sub/c.yaml", "data:\n  interactions: data/i.csv\n  items: /abs/items.csv\n")
    config = load_config(path)
    assert config.data.interactions == str(tmp_path / "sub" / "data" / "i.csv")
    assert config.data.items == "/abs/items.csv"


def test_a_config_saved_elsewhere_still_finds_relative_data(tmp_path, write, monkeypatch):
    (tmp_path / "sub").mkdir()
    write("sub/c.yaml", "data:\n  interactions: ../data/i.csv\n")
    monkeypatch.chdir(tmp_path)
    config = load_config("sub/c.yaml")  # a relative config path, as on the command line
    save_config(config, tmp_path / "runs_copy.yaml")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_config(tmp_path / "runs_copy.yaml").data.interactions == str(tmp_path / "data" / "i.csv")


def test_unknown_key_suggests_the_close_one(write):
    path = write("c.yaml", "data:\n  colums: {user_id: userId}\n")
    with pytest.raises(ConfigError, match=r"in \S*c.yaml, data: unknown key 'colums'. Did you mean 'columns'\?"):
        load_config(path)


def test_wrong_type_names_key_expected_and_found(write):
    path = write("c.yaml", "data:\n  synth:\n    n_users: many\n")
    with pytest.raises(ConfigError, match=r"c.yaml, data.synth.n_users: expected int, got 'many' \(str\)"):
        load_config(path)


def test_bad_choice_lists_the_choices(write):
    path = write("c.yaml", "split:\n  kind: random\n")
    with pytest.raises(ConfigError, match=r"split.kind: expected one of 'leave_last_out', 'cold_start', "
                                          r"'new_item', 'evaluation', 'given', got 'random'"):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path, write):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write("c.yaml", "data: [unclosed\n"))


def test_a_run_config_built_from_relative_flags_finds_its_data_from_any_folder(tmp_path, monkeypatch):
    """`crossrec train --data .runs/x/data` saves the run's config; export (from another folder,
    or the run folder) must find the same data, not `<run folder>/.runs/x/data`."""
    (tmp_path / "work" / "runs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    config = Config(data=DataConfig(interactions="data/interactions.parquet", items="data/items.parquet"))
    save_config(config, tmp_path / "work" / "runs" / "config.yaml")
    monkeypatch.chdir(tmp_path)
    loaded = load_config(tmp_path / "work" / "runs" / "config.yaml")
    assert loaded.data.interactions == str(tmp_path / "work" / "data" / "interactions.parquet")
    assert loaded.data.items == str(tmp_path / "work" / "data" / "items.parquet")
    assert config.data.interactions == "data/interactions.parquet"  # the caller's config is unchanged


def test_a_removed_option_loads_at_its_old_default_and_is_refused_otherwise(write):
    # a served version's saved config from before the options were removed holds their defaults
    old = write("old.yaml", "towers:\n  fusion: sum\n  self_attention_layers: 0\n  embedding_dim: 32\n"
                "train:\n  negatives: in_batch\n  sampled_negatives: 0\nranking:\n  loss: listwise\n")
    assert load_config(old).towers.embedding_dim == 32
    with pytest.raises(ConfigError, match=r"towers.fusion: 'gate' is no longer an option.*Delete the key"):
        load_config(write("gate.yaml", "towers:\n  fusion: gate\n"))
    with pytest.raises(ConfigError, match="train.examples: 'sequences' is no longer an option"):
        load_config(write("seq.yaml", "train:\n  examples: sequences\n"))
    # fine-tuning inside the fit gave way to `crossrec adapt`: a frozen run's keys load, whatever the
    # settings that only mattered when fine-tuning; another policy names the replacement
    frozen = write("frozen.yaml", "encoder:\n  freeze: frozen\n  trainable_layers: 2\n  lora_rank: 8\n"
                   "  shared_backbone: true\n  sequence_length: 40\n")
    assert load_config(frozen).encoder.sequence_length == 40
    with pytest.raises(ConfigError, match=r"encoder.freeze: 'lora' is no longer an option; use encoder.adapt"):
        load_config(write("lora.yaml", "encoder:\n  freeze: lora\n"))


def test_shares_outside_zero_to_one_name_the_key():
    from crossrec.config import RankingConfig

    with pytest.raises(ConfigError, match=r"ranking.cold_start_lists: expected a share in \[0, 1\], got 1.5"):
        RankingConfig(cold_start_lists=1.5)
