"""Shared fixtures: tiny synthetic data and helpers to write malformed input files."""

from pathlib import Path

import pytest

import crossrec  # noqa: F401  (environment first, before anything imports TensorFlow)
from crossrec.config import SynthConfig
from crossrec.data.synth import generate

TINY = SynthConfig(n_users=120, n_items=180, n_interactions=2400, seed=7)


@pytest.fixture(scope="session")
def tiny_dataset():
    """About 2.4k interactions of 120 users over 180 items in 3 domains."""
    return generate(TINY)


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
