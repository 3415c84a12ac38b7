"""How long-running steps show progress: one rule for every Keras fit script."""

from __future__ import annotations

import sys


def fit_verbosity(progress: bool) -> int:
    """Keras ``fit`` verbosity: a live progress bar on a terminal, one line per epoch in a log
    file, nothing when quiet."""
    if not progress:
        return 0
    return 1 if sys.stdout.isatty() else 2
