"""A server watching a serving folder while a test publishes into it: records every instant at
which its models served versions of different model sets."""

import subprocess
import sys
import threading
import time
from pathlib import Path

from serving.models import ModelManager, ModelSpec

KILL_AT = str(Path(__file__).with_name("kill_at.py"))


def run_killed(step: str | None, args: list[str]) -> subprocess.CompletedProcess:
    """``crossrec ARGS`` killed with SIGKILL at ``step`` (see ``kill_at.py``; None: never)."""
    command = [sys.executable, KILL_AT, step or "never:1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


class SetWatcher:
    """``with SetWatcher(base, models) as watch:`` polls ``base`` like ``crossrec serve`` (every
    0.1 s) and samples what is served every few milliseconds; ``watch.mixes`` lists the samples
    that mixed versions."""

    def __init__(self, base: Path, models, loader=None):
        specs = [ModelSpec(m, Path(base) / m) for m in models]
        self.manager = ModelManager(specs, **({"loader": loader} if loader else {}))
        self.mixes: list[dict] = []
        self.seen: list[dict] = []
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.003):
            served = self.manager.served_versions()
            latest = {name: versions[-1] for name, versions in served.items() if versions}
            if not self.seen or self.seen[-1] != latest:
                self.seen.append(latest)
            if len(set(latest.values())) > 1:
                self.mixes.append(latest)

    def wait_for(self, version: int, timeout: float = 120.0) -> dict:
        """Waits until every model serves ``version``; returns what is served then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            served = self.manager.served_versions()
            if all(v and v[-1] == version for v in served.values()):
                return served
            time.sleep(0.05)
        raise AssertionError(f"not every model serves version {version} after {timeout} s: "
                             f"{self.manager.served_versions()}")

    def __enter__(self):
        self.manager.start(poll_seconds=0.1)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.manager.stop()
