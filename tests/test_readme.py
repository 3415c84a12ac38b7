"""The README's configuration reference lists every key with its real default."""

from pathlib import Path

import yaml

from crossrec.config import Config, from_dict, to_dict

README = Path(__file__).resolve().parents[1] / "README.md"


def _reference_block() -> str:
    text = README.read_text()
    section = text.split("## Configuration reference", 1)[1]
    return section.split("```yaml", 1)[1].split("```", 1)[0]


def test_configuration_reference_matches_the_defaults():
    documented = yaml.safe_load(_reference_block())
    assert documented == to_dict(Config())
    from_dict(Config, documented)  # and it loads as a config
