"""The process's own temporary folder: what libraries write to TMPDIR, crossrec's process keeps
in ``$TMPDIR/crossrec-<pid>/`` and removes.

TensorFlow's autograph writes each function it converts as ``__autograph_generated_file*.py`` in
the temporary folder and deletes them at exit, so a process killed with SIGKILL (an export, a
training run) leaves them behind: 11 killed exports left 179. ``claim`` points Python's
``tempfile`` at a folder named for this process (removed at a normal exit) and removes the
folders of crossrec processes that are no longer running, so the next start cleans up after a
kill. It runs once, when ``crossrec`` is first imported.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "crossrec-"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_stale(base: Path) -> list[Path]:
    """Removes the folders of crossrec processes in ``base`` that are no longer running; returns them."""
    removed = []
    for folder in base.glob(f"{PREFIX}*"):
        pid = folder.name[len(PREFIX):]
        if folder.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def claim() -> Path | None:
    """This process's temporary folder, made Python's default; None where the system's temporary
    folder cannot be written (then nothing changes)."""
    base = Path(tempfile.gettempdir())
    if base.name.startswith(PREFIX):  # already claimed (a re-import)
        return base
    mine = base / f"{PREFIX}{os.getpid()}"
    try:
        remove_stale(base)
        mine.mkdir(exist_ok=True)
    except OSError:
        return None
    tempfile.tempdir = str(mine)
    atexit.register(_remove_own, mine, os.getpid())
    return mine


def _remove_own(folder: Path, owner: int) -> None:
    if os.getpid() == owner:  # a forked child that runs atexit handlers leaves its parent's folder alone
        shutil.rmtree(folder, ignore_errors=True)
