"""A retrain's run folder: its log (``run_log.jsonl``), its result (``result.json``), and the
result of an earlier run of the same command found from what is served."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossrec.pipelines.served_data import DataChange


class RunLog:
    """One JSON object per line: a stage, when, and what it found."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields) -> dict:
        record = {"event": event, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=json_default) + "\n")
        return record

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


@dataclass
class RetrainResult:
    work_dir: Path
    served_version: int
    published: dict[str, int] | None
    reason: str
    gate: dict
    change: dict
    seconds: dict[str, float]


def write_json(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=json_default))
    tmp.replace(path)


def read_result(work: Path) -> RetrainResult | None:
    """The result a finished run left in its folder, or None."""
    done = work / "result.json"
    return RetrainResult(**{**json.loads(done.read_text()), "work_dir": work}) if done.exists() else None


def write_result(result: RetrainResult) -> None:
    write_json(result.work_dir / "result.json", {k: v for k, v in result.__dict__.items() if k != "work_dir"})


def finished_by_an_earlier_run(served, run_key: str, root: Path, progress: bool) -> RetrainResult | None:
    """The result of this same command when an earlier run of it already published the set that
    is served now (it was killed after the publish, or is simply run again); else None."""
    published = served.metadata.get("retrain_run") or {}
    if published.get("key") != run_key:
        return None
    work = root / f"from-v{published['from_version']}-{run_key}"
    result = read_result(work)
    if result is None:
        log = RunLog(work / "run_log.jsonl")
        gates = [r for r in log.records() if r["event"] == "gate"]
        gate = {k: gates[-1][k] for k in ("metric", "served", "retrained", "threshold", "publish")} if gates else {}
        starts = [r for r in log.records() if r["event"] == "start"]
        change = {k: v for k, v in (starts[-1] if starts else {}).items()
                  if k in DataChange.__dataclass_fields__}
        versions = {m: served.version for m in (served.metadata.get("set") or {}).get("models", served.models)}
        result = RetrainResult(work, int(published["from_version"]), versions,
                               f"published {', '.join(f'{m} {v}' for m, v in versions.items())} (by an earlier run of "
                               "this command, interrupted after its publish)", gate, change, {})
        log.write("published", versions=versions, reason=result.reason, seconds={})
        write_result(result)
    if progress:
        print(f"this run already finished: {result.reason} (log: {work / 'run_log.jsonl'})", flush=True)
    return result
