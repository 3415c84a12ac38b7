"""The ``crossrec`` command: one entry point, one subcommand per job.

One module per command (``crossrec/cli/<command>.py``) owns its flags (``register``) and its
handler; the flags several commands share live in ``crossrec.cli.flags``. Each handler calls a
plain function of a stage or a pipeline; errors in the user's input
(``CrossrecInputError``) are printed without a traceback and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import crossrec  # noqa: F401  (sets up the TF/Keras environment first)
from crossrec.cli import (
    adapt,
    bench,
    candidates,
    catalogue,
    data,
    evaluate,
    export,
    monitor,
    query,
    quickstart,
    retrain,
    serve,
    train,
)
from crossrec.errors import CrossrecInputError

EXIT_INPUT_ERROR = 2
# commands that run TensorFlow: their device probe's noise is dropped once, up front (crossrec.quiet)
TENSORFLOW_COMMANDS = {"adapt", "train", "export", "serve", "candidates", "evaluate", "retrain", "catalogue", "bench",
                       "quickstart"}

DESCRIPTION = """\
crossrec: a cross-domain recommender (text-encoder item towers, a shared user tower,
TFRS retrieval and ranking, TF Serving-compatible exports).

Start with the built-in data:
  crossrec quickstart                         the main job end to end, each step's command printed
  crossrec data synth --out data/            generate the built-in multi-domain dataset
  crossrec data describe --data data/        sizes, overlap between domains, history lengths
  crossrec data validate --data data/        check a dataset (exit 2 with file/row/column on errors)
  crossrec data split --data data/ --out split/ --kind cold_start --target-domain movies

Run `crossrec <command> --help` for each command's options.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossrec", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"crossrec {crossrec.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (data, adapt, train, export, serve, candidates, query, evaluate, monitor, retrain, catalogue, bench,
                   quickstart):
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "pipeline_args", None) != []:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.pipeline_args = extra  # `crossrec candidates`: Beam pipeline options pass through
    func: Callable[[argparse.Namespace], int] = args.func
    from crossrec.quiet import init_devices, quiet_logs, spend_onednn_note

    quiet_logs()
    if args.command in TENSORFLOW_COMMANDS:
        init_devices()
        # serve sets TF's thread pools and a multi-worker strategy its collective ops before the
        # runtime starts: those spend the note themselves, after their settings
        if args.command != "serve" and not os.environ.get("TF_CONFIG"):
            spend_onednn_note()
    try:
        return func(args)
    except CrossrecInputError as exc:
        print(f"crossrec: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("crossrec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
