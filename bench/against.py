"""Training speed of this tree against another git revision, measured in one run.

    python -m bench.towers --against REV

Absolute speeds move 2-3x between machines of one kind and by 20% between minutes of one
machine, so a speed-up is only meaningful as a ratio measured side by side: REV is checked out in
a temporary git worktree, and the default towers' ``training_speed`` (cached frozen text, batch
1024) runs in fresh processes alternating between REV and this tree, ``rounds`` times each; each
side's median and the ratio of the medians are reported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import crossrec
from dataclasses import replace
from crossrec.config import Config
from crossrec.experiment import prepare_data
from bench.towers import training_speed
config = Config()
config = replace(config, train=replace(config.train, batch_size=1024))
print("SPEED", training_speed(config, prepare_data(config), steps={steps}, attempts=3))
"""


def _speed(tree: Path, steps: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(steps=steps)], cwd=tree, env=env, capture_output=True,
                         text=True, timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.startswith("SPEED ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"training speed in {tree} failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
    return float(lines[-1].split()[1])


def against(revision: str, rounds: int = 3, steps: int = 48) -> dict:
    """{"revision", "before": [examples/s], "after": [...], "ratio": median after / median before}."""
    before, after = [], []
    with tempfile.TemporaryDirectory(prefix="crossrec-against-") as folder:
        tree = Path(folder) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), revision], check=True,
                       capture_output=True)
        try:
            for _ in range(rounds):
                before.append(_speed(tree, steps))
                after.append(_speed(ROOT, steps))
                print(f"  {revision}: {before[-1]:,.0f} examples/s, this tree: {after[-1]:,.0f}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    return {"revision": revision, "before": before, "after": after,
            "ratio": float(np.median(after) / np.median(before))}
