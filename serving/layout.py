"""TensorFlow Serving's directory layout, owned here: ``<base>/<model>/<version>/``.

A version is a folder whose name is a positive integer, holding a SavedModel
(``saved_model.pb`` + ``variables/``). New versions are written under a hidden temporary name in
the model's folder (TF Serving and crossrec ignore names that are not integers) and renamed into
place in one step, so no reader ever sees a half-written version (``serving.model_set`` publishes
them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

METADATA_FILE = "crossrec_metadata.json"  # inside each version's assets/
# Where retrieval versions exported before the training-state store (serving.training_state)
# carried their training state; read, never written, so those versions can still be retrained.
TRAINING_STATE = Path("assets.extra") / "crossrec"


def versions(model_dir: str | Path) -> list[int]:
    """The integer versions present in ``model_dir`` (sorted); ignores everything else."""
    path = Path(model_dir)
    if not path.is_dir():
        return []
    found = []
    for child in path.iterdir():
        if child.is_dir() and child.name.isdigit() and int(child.name) > 0 and (child / "saved_model.pb").exists():
            found.append(int(child.name))
    return sorted(found)


def latest_version(model_dir: str | Path) -> int | None:
    found = versions(model_dir)
    return found[-1] if found else None


def next_version(model_dir: str | Path) -> int:
    """One more than the highest version folder (counting half-finished ones' names too)."""
    path = Path(model_dir)
    taken = [int(c.name) for c in path.iterdir() if c.name.isdigit()] if path.is_dir() else []
    return max(taken, default=0) + 1


TMP_PREFIX = ".tmp-"
ABANDONED_SECONDS = 24 * 3600  # a temporary folder of another machine's export this old is abandoned


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_abandoned(model_dir: Path) -> list[Path]:
    """Removes the temporary folders of exports that were killed (their process is gone, or the
    folder is older than a day): an interrupted export leaves nothing behind for long."""
    removed = []
    for child in model_dir.glob(TMP_PREFIX + "*"):
        parts = child.name[len(TMP_PREFIX):].split("-")
        pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
        try:
            age = time.time() - child.stat().st_mtime
        except FileNotFoundError:
            continue
        if (pid is not None and pid != os.getpid() and not _alive(pid)) or age > ABANDONED_SECONDS:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def write_file_atomically(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` so a reader sees the old file or the new one, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
