"""The README and the documentation match the code: every `crossrec` command they show parses,
every subcommand is shown, the README stays a user's guide (short, two set-up commands on its
first screen, links that resolve), and the generated references cover every key and flag."""

import re
import shlex
import sys
from pathlib import Path

import pytest

from crossrec.config import Config
from crossrec.typed import to_dict

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]


def hooks():
    sys.path.insert(0, str(DOCS))
    import hooks as module

    return module


def shown_commands() -> list[str]:
    """Every `crossrec ...` command line in the bash blocks of the README and the docs."""
    commands = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.split(r"\s#", line, maxsplit=1)[0].strip()
                if line.startswith("crossrec "):
                    commands.append(line)
    return commands


def test_every_subcommand_is_shown():
    from crossrec.cli import build_parser

    shown = {c.split()[1] for c in shown_commands()}
    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert set(subcommands) <= shown


@pytest.mark.parametrize("command", shown_commands())
def test_every_shown_command_parses(command):
    from crossrec.cli import build_parser

    argv = shlex.split(command)[1:]
    try:
        args, extra = build_parser().parse_known_args(argv)
    except SystemExit as exc:
        pytest.fail(f"documented command does not parse (exit {exc.code}): {command}")
    assert not extra or argv[0] == "candidates", f"unknown flags {extra} in: {command}"


def test_the_readme_is_a_short_guide_with_two_setup_commands_first():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    commands = [line.split("#", 1)[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make quickstart", "make test"]
    assert text.index("make test") < 1500  # on the first screen


def test_the_readmes_links_resolve():
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text()):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_the_config_reference_lists_every_key_with_its_default():
    module = hooks()
    page = module.config_reference()

    def leaves(tree, path):
        for key, value in tree.items():
            if isinstance(value, dict) and key not in ("columns", "amazon_files", "domain_weights", "task_weights"):
                yield from leaves(value, f"{path}.{key}" if path else key)
            else:
                yield path, key, value

    for section, key, value in leaves(to_dict(Config()), ""):
        assert f"## `{section}`" in page, section
        body = page.split(f"## `{section}`", 1)[1].split("\n## ", 1)[0]
        row = next((line for line in body.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, f"{section}.{key} missing from the configuration reference"
        assert module._cell(module._value(value)) in row, f"{section}.{key}: default {value!r} not in {row}"
        assert row.split(" | ")[3].strip() and row.split(" | ")[3].strip() != "|", f"{section}.{key} has no description"


def test_the_cli_reference_has_every_command_and_flag():
    from crossrec.cli import build_parser

    page = hooks().cli_reference()
    for name, parser in build_parser()._subparsers._group_actions[0].choices.items():
        assert f"## `crossrec {name}`" in page
        for action in parser._actions:
            for flag in () if action.dest == "help" else action.option_strings:
                assert f"`{flag}`" in page, f"crossrec {name} {flag}"


def test_every_benchmark_result_has_a_page():
    module = hooks()
    pages = module.generated_pages()
    for path in (ROOT / "bench" / "results").glob("*.json"):
        if path.stem in module.result_runs():
            assert f"results/{path.stem}.md" in pages
            run = module.result_runs()[path.stem]
            assert all(r["benchmark"] in pages[f"results/{path.stem}.md"] for r in run["rows"])
