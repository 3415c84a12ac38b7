"""Shared fixtures: tiny synthetic data and helpers to write malformed input files."""

from pathlib import Path

import pytest

import crossrec  # noqa: F401  (environment first, before anything imports TensorFlow)
from bench.tiny_encoder import make_tiny_preset
from crossrec.config import Config, DataConfig, EncoderConfig, SynthConfig, TowerConfig, TrainConfig
from crossrec.data.synth import generate

TINY = SynthConfig(n_users=120, n_items=180, n_interactions=2400, seed=7)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Tests never read or write the user's ~/.cache/crossrec."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CROSSREC_CACHE", str(tmp_path_factory.mktemp("crossrec_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_dataset():
    """About 2.4k interactions of 120 users over 180 items in 3 domains."""
    return generate(TINY)


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory):
    """A 2-layer, 16-dim random BERT saved as a keras-hub preset (loads like the real one)."""
    return make_tiny_preset(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture
def tiny_config(tiny_preset, tmp_path):
    """Small data, the tiny backbone, two short epochs: a full training run in seconds."""
    return Config(data=DataConfig(synth=SynthConfig(n_users=80, n_items=120, n_interactions=1600, seed=3)),
                  encoder=EncoderConfig(preset=str(tiny_preset), sequence_length=16, cache_dir=str(tmp_path / "cache")),
                  towers=TowerConfig(embedding_dim=16, history_length=8),
                  train=TrainConfig(epochs=2, batch_size=128, learning_rate=0.01))


@pytest.fixture
def write(tmp_path):
    """write("name.csv", text) -> path of a file with that content under tmp_path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write


GOOD_INTERACTIONS = (
    "user_id,item_id,domain,timestamp,rating\n"
    "u1,b1,books,1700000000,5\n"
    "u1,m1,movies,1700000100,4\n"
    "u2,b1,books,2024-01-01T00:00:00Z,3\n"
)
GOOD_ITEMS = (
    "item_id,domain,title,categories\n"
    "b1,books,The Last Nebula,Science Fiction\n"
    "m1,movies,Orbit of Comets (1987),Sci-Fi\n"
)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_preset, tmp_path_factory):
    """Retrieval towers and rankers trained once on tiny data: (config, retrieval run, its folder,
    ranking folder). Tests must not modify them."""
    from crossrec.config import ExportConfig, RankerConfig, RankingConfig
    from ranking.train import train_ranking
    from towers.train import train_retrieval

    tmp = tmp_path_factory.mktemp("pipeline")
    config = Config(data=DataConfig(synth=SynthConfig(n_users=80, n_items=120, n_interactions=1600, seed=3)),
                    encoder=EncoderConfig(preset=str(tiny_preset), sequence_length=16, cache_dir=str(tmp / "cache")),
                    towers=TowerConfig(embedding_dim=16, history_length=8),
                    train=TrainConfig(epochs=2, batch_size=128, learning_rate=0.01),
                    ranking=RankingConfig(candidates=10, epochs=4, batch_size=32, random_negatives=2, learning_rate=0.01,
                                          teacher=RankerConfig(cross_layers=2, deep_layers=[32, 16]),
                                          student=RankerConfig(cross_layers=1, cross_projection_dim=4,
                                                               deep_layers=[8], dropout=0.0)),
                    export=ExportConfig(max_k=20, recall_queries=50))
    run = train_retrieval(config, tmp / "retrieval", progress=False)
    train_ranking(config, tmp / "retrieval", tmp / "ranking", progress=False)
    return config, run, tmp / "retrieval", tmp / "ranking"


@pytest.fixture(scope="session")
def tiny_exported(tiny_pipeline, tmp_path_factory):
    """``tiny_pipeline`` exported once (all four models, version 1): (config, retrieval run,
    saved_models folder, ExportResult). Tests copy the folder before changing it."""
    from serving.export import export_models
    from serving.parts import load_parts, sample_queries

    config, run, retrieval_dir, ranking_dir = tiny_pipeline
    out = tmp_path_factory.mktemp("saved_models")
    queries = sample_queries(load_parts(retrieval_dir, None), 50)
    result = export_models(retrieval_dir, out, ranking_dir=ranking_dir, recall_queries=queries, progress=False)
    return config, run, out, result
