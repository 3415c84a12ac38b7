"""Shared benchmark plumbing: a results table printed and written as JSON and Markdown."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _number(value: float) -> str:
    """Large values with thousands separators, small ones with four significant digits."""
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"


@dataclass
class Row:
    benchmark: str
    value: float
    unit: str
    target: str = ""  # e.g. ">= 50000"
    note: str = ""

    @property
    def status(self) -> str:
        if not self.target:
            return ""
        op, _, bound = self.target.partition(" ")
        bound = float(bound)
        ok = self.value >= bound if op == ">=" else self.value <= bound
        return "met" if ok else "MISSED"


@dataclass
class Results:
    name: str
    rows: list[Row] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def add(self, benchmark: str, value: float, unit: str, target: str = "", note: str = "") -> None:
        row = Row(benchmark, float(value), unit, target, note)
        self.rows.append(row)
        print(f"  {benchmark}: {_number(value)} {unit}" + (f"  (target {target}: {row.status})" if target else ""),
              flush=True)

    def table(self) -> str:
        lines = ["| benchmark | value | unit | target | status | note |", "|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.benchmark} | {_number(r.value)} | {r.unit} | {r.target} | {r.status} | {r.note} |")
        return "\n".join(lines)

    def write(self, directory: Path | None = None) -> Path:
        directory = Path(directory or RESULTS)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"name": self.name, "seconds": round(time.time() - self.started, 1), "cpus": os.cpu_count(),
                "machine": platform.machine(), "python": platform.python_version(),
                "date": time.strftime("%Y-%m-%d %H:%M:%S")}
        path = directory / f"{self.name}.json"
        path.write_text(json.dumps({**meta, "rows": [asdict(r) | {"status": r.status} for r in self.rows]}, indent=2))
        (directory / f"{self.name}.md").write_text(f"# {self.name}\n\n{self.table()}\n")
        print("\n" + self.table())
        print(f"\nwrote {path}")
        return path


def bench_parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes: --quick, --preset, --results-dir."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--preset", help="text encoder preset folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--results-dir", help="where to write the results (default: bench/results)")
    return parser


def start_server(base: Path, *flags: str) -> tuple[subprocess.Popen, int]:
    """``crossrec serve`` over the models under ``base`` in its own process, with ``flags``:
    (the process, its gRPC port), once it listens."""
    from serving.server import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "crossrec", "serve", "--model_base_path", str(base),
                               "--port", str(port), *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = ""
    while "Ctrl-C stops" not in line:
        line = server.stdout.readline()
        if not line and server.poll() is not None:
            raise RuntimeError("crossrec serve exited")
    return server, port
