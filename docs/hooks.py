"""MkDocs hook: the pages made from the code and the measurements at every build, so that they
cannot drift from them (``mkdocs build --strict`` runs in ``make test``):

- ``reference/config.md`` from the config dataclasses (``crossrec/config.py``,
  ``crossrec/ranking_config.py``): every key with its type, default and the comment above it;
- ``reference/cli.md`` from the argparse parsers of ``crossrec`` (``crossrec.cli.build_parser``);
- ``reference/ranking-features.md`` from the ranker's feature registry;
- ``results/<benchmark>.md`` and ``results/index.md`` from ``bench/results/*.json`` (and the
  figures beside them), so a benchmark run updates the docs without a hand edit.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import typing
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import crossrec  # noqa: E402,F401  (the TF/Keras environment before anything imports TensorFlow)

# -- configuration reference ----------------------------------------------------------------------

def field_comments(cls) -> dict[str, str]:
    """Each field's comment in the class's source: the ``#`` lines just above it and a trailing one."""
    comments, pending = {}, []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"^ {4}(\w+): ", line)
        if match:
            code, _, trailing = line.partition("  # ")
            text = " ".join(pending + ([trailing.strip()] if trailing else []))
            comments[match.group(1)] = text
        pending = []
    return comments


def _value(value) -> str:
    return "`" + json.dumps(value) + "`" if not isinstance(value, str) else f'`"{value}"`'


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_section(instance, path: str, lines: list[str]) -> None:
    """The table of one section; ``instance`` is its default as the whole ``Config()`` holds it (a
    section's own defaults can differ from its class's, e.g. ``ranking.student``)."""
    from crossrec.typed import _type_name

    cls = type(instance)
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    nested = []
    doc = inspect.getdoc(cls) or ""
    lines += [f"## `{path}`", "", doc.split("\n\n")[0].replace("\n", " "), "",
              "| key | type | default | what it does |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            nested.append((getattr(instance, f.name), f"{path}.{f.name}"))
            lines.append(f"| `{f.name}` | section | | see [`{path}.{f.name}`](#{path}{f.name}) |")
            continue
        default = getattr(instance, f.name)
        lines.append(f"| `{f.name}` | {_cell(_type_name(tp))} | {_cell(_value(default))} | "
                     f"{_cell(comments.get(f.name, ''))} |")
    lines.append("")
    for section, sub in nested:
        config_section(section, sub, lines)


def config_reference() -> str:
    from crossrec.config import Config

    lines = ["# Configuration reference", "",
             "Generated from the typed dataclasses of `crossrec/config.py` and `crossrec/ranking_config.py` "
             "at every docs build. One YAML file mirrors them, section by section; every key is optional. "
             "Unknown keys and wrong types are errors that name the file, the section and the key (with a close "
             "match for a typo). Relative paths are resolved against the config file's folder. Command-line "
             "flags override the file. `crossrec.api.config(path, train={...})` builds the same object in Python.",
             "", "```yaml", "train:", "  epochs: 5", "towers:", "  item_id_dropout: 0.3   # a sparse catalogue",
             "```", ""]
    defaults = Config()
    for f in dataclasses.fields(Config):
        config_section(getattr(defaults, f.name), f.name, lines)
    return "\n".join(lines)


# -- command-line reference -----------------------------------------------------------------------

def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _options(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        flags = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
        if action.metavar or (action.option_strings and action.nargs != 0):
            flags += f" *{action.metavar or action.dest.upper()}*"
        help_text = (action.help or "") % {"default": action.default} if action.help else ""
        rows.append(f"| {_cell(flags)} | {_cell(help_text)} |")
    return ["| option | what it does |", "|---|---|", *rows] if rows else []


def cli_command(name: str, parser: argparse.ArgumentParser, lines: list[str], depth: int = 2) -> None:
    subcommands = list(_subcommands(parser))
    lines += [f"{'#' * depth} `{name}`", "", _cell(parser.description or ""), "",
              "```text", parser.format_usage().strip(), "```", ""]
    lines += _options(parser) + [""]
    for sub, subparser in subcommands:
        cli_command(f"{name} {sub}", subparser, lines, depth + 1)


def cli_reference() -> str:
    from crossrec.cli import build_parser

    parser = build_parser()
    lines = ["# Command-line reference", "",
             "Generated from the argparse parsers of `crossrec` at every docs build: what "
             "`crossrec <command> --help` prints, one section per command.", "",
             "```text", parser.format_help().strip(), "```", ""]
    for name, subparser in _subcommands(parser):
        cli_command(f"crossrec {name}", subparser, lines)
    return "\n".join(lines)


def ranking_features() -> str:
    from crossrec.ranking_features import markdown_table

    return "\n".join([
        "# Ranking features", "",
        "Generated from the ranker's feature registry (`crossrec/ranking_features.py`), which config "
        "validation and the model read. `ranking.features` chooses the teacher's, "
        "`ranking.student.features` the student's. `columns` is per candidate (\"embedding\" = the "
        "towers' embedding size, \"domains\" = the domain count + 1). See [Ranking](../ranking.md).",
        "", markdown_table(), ""])


# -- results --------------------------------------------------------------------------------------

RESULTS = ROOT / "bench" / "results"
IMAGES = {"feed": ["feed_tradeoff.png"], "scale": ["scale.png"]}


def _number(value: float) -> str:
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"


def _bench_doc(name: str) -> str:
    module = ROOT / "bench" / f"{name.split('-')[0]}.py"
    if not module.exists():
        return ""
    doc = (re.match(r'\s*"""(.*?)"""', module.read_text(), flags=re.S) or [None, ""])[1]
    return re.sub(r"``([^`]+)``", r"`\1`", doc.strip())


def results_page(name: str, run: dict) -> str:
    doc = _bench_doc(name)
    intro, _, rest = doc.partition("\n\n")
    lines = [f"# {name}", "", intro.replace("\n", " "), ""]
    if rest:
        lines += ["??? note \"What it runs\"", "", *("    " + line for line in rest.splitlines()), ""]
    lines += [f"Run {run.get('date', '?')}, {run.get('seconds', '?')} s on {run.get('cpus', '?')} CPU cores "
              f"({run.get('machine', '?')}, Python {run.get('python', '?')}); `bench/results/{name}.json`.", "",
              "| benchmark | value | unit | target | status | note |", "|---|---|---|---|---|---|"]
    for r in run["rows"]:
        status = "**MISSED**" if r.get("status") == "MISSED" else r.get("status", "")
        lines.append(f"| {_cell(r['benchmark'])} | {_number(r['value'])} | {r['unit']} | {r['target']} | {status} "
                     f"| {_cell(r.get('note', ''))} |")
    for image in IMAGES.get(name, []):
        if (RESULTS / image).exists():
            lines += ["", f"![{name}]({image})"]
    return "\n".join(lines) + "\n"


def results_index(runs: dict[str, dict]) -> str:
    lines = ["# Results", "",
             "Every page here is generated from `bench/results/<name>.json` at each docs build: run a "
             "benchmark (`python -m bench.<name>`, or `crossrec bench` for all of them) and the page follows. "
             "Speed targets are ratios measured in one run where the machine's own speed moves (absolute "
             "timings move 2-3x between machines of one kind). What was tried along the way and what it "
             "measured: [Design notes](../design-notes.md); evaluation runs on public data: "
             "[Evaluation runs](evaluation.md).", "",
             "| benchmark | run | rows | targets met | missed |", "|---|---|---|---|---|"]
    for name, run in runs.items():
        rows = run["rows"]
        met = sum(r.get("status") == "met" for r in rows)
        missed = sum(r.get("status") == "MISSED" for r in rows)
        lines.append(f"| [{name}]({name}.md) | {run.get('date', '?')} | {len(rows)} | {met} | {missed} |")
    return "\n".join(lines) + "\n"


def result_runs() -> dict[str, dict]:
    runs = {}
    for path in sorted(RESULTS.glob("*.json")):
        run = json.loads(path.read_text())
        if isinstance(run, dict) and "rows" in run:
            runs[path.stem] = run
    return runs


# -- the hook -------------------------------------------------------------------------------------

def generated_pages() -> dict[str, str | bytes]:
    pages: dict[str, str | bytes] = {
        "reference/config.md": config_reference(),
        "reference/cli.md": cli_reference(),
        "reference/ranking-features.md": ranking_features(),
        "images/explorer.png": (ROOT / "serving" / "explorer_static" / "screenshot.png").read_bytes(),
    }
    runs = result_runs()
    pages["results/index.md"] = results_index(runs)
    for name, run in runs.items():
        pages[f"results/{name}.md"] = results_page(name, run)
        for image in IMAGES.get(name, []):
            if (RESULTS / image).exists():
                pages[f"results/{image}"] = (RESULTS / image).read_bytes()
    return pages


def on_files(files, config):
    for uri, content in generated_pages().items():
        files.append(File.generated(config, uri, content=content))
    return files
