"""The README matches the code: the configuration reference lists every key with its real
default, and every `crossrec` command it shows is one the CLI accepts."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from crossrec.config import Config
from crossrec.typed import from_dict, to_dict

README = Path(__file__).resolve().parents[1] / "README.md"


def _reference_block() -> str:
    text = README.read_text()
    section = text.split("## Configuration reference", 1)[1]
    return section.split("```yaml", 1)[1].split("```", 1)[0]


def test_configuration_reference_matches_the_defaults():
    documented = yaml.safe_load(_reference_block())
    assert documented == to_dict(Config())
    from_dict(Config, documented)  # and it loads as a config


def readme_commands() -> list[str]:
    """Every `crossrec ...` command line in the README's bash blocks (continuations joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("crossrec "):
                commands.append(line)
    return commands


def test_the_readme_shows_every_subcommand():
    from crossrec.cli import build_parser

    shown = {c.split()[1] for c in readme_commands()}
    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert set(subcommands) <= shown


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses(command):
    from crossrec.cli import build_parser

    argv = shlex.split(command)[1:]
    try:
        args, extra = build_parser().parse_known_args(argv)
    except SystemExit as exc:
        pytest.fail(f"README command does not parse (exit {exc.code}): {command}")
    assert not extra or argv[0] == "candidates", f"unknown flags {extra} in: {command}"
