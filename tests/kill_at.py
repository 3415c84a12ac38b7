"""``python tests/kill_at.py STEP:N crossrec-args...``: runs the crossrec CLI and kills itself with
SIGKILL at one step of a publish, so the kill tests reach every step the same way each time.

Steps (N counts from 1):
  state:N     after the N-th folder a run writes whole before it publishes (``crossrec catalogue``:
              the changed towers, then rankers)
  save:N      after the N-th model is written aside (nothing renamed into place yet)
  rename:N    after the N-th staged model is renamed into place (the set is incomplete until the last)
  published:1 after the whole set is in place, before anything else (models.config, run log, result)
"""

import contextlib
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import crossrec  # noqa: E402,F401  (environment first)

step, count = sys.argv[1].split(":")
count = int(count)
seen = {"state": 0, "save": 0, "rename": 0, "published": 0}


def tick(name: str) -> None:
    seen[name] += 1
    if name == step and seen[name] == count:
        print(f"kill_at: SIGKILL at {step}:{count}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


import crossrec.data.io as data_io  # noqa: E402
import serving.export as export  # noqa: E402

_atomic_directory = data_io.atomic_directory


@contextlib.contextmanager
def atomic_directory(*args, **kwargs):
    with _atomic_directory(*args, **kwargs) as folder:
        yield folder
    tick("state")


data_io.atomic_directory = atomic_directory

_save_module, _write_model_config, _rename = export._save_module, export.write_model_config, os.rename


def save_module(*args, **kwargs):
    _save_module(*args, **kwargs)
    tick("save")


def rename(src, dst, *args, **kwargs):
    _rename(src, dst, *args, **kwargs)
    if Path(src).name.startswith(".tmp-") and Path(dst).name.isdigit():
        tick("rename")


def write_model_config(*args, **kwargs):
    tick("published")
    return _write_model_config(*args, **kwargs)


export._save_module, export.write_model_config, os.rename = save_module, write_model_config, rename

from crossrec.cli import main  # noqa: E402

sys.exit(main(sys.argv[2:]))
