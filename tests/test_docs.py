"""The documentation's runnable paths run: the Python API page's example as printed, and the
README's "your data" commands on the built-in data exported as CSV and on MovieLens 100k's own
file format. The commands run as printed with the paths swapped for the test's files and, for
time, one training epoch and two models in `crossrec evaluate`; `crossrec serve` gets free ports."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crossrec.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPEED = {"evaluate": ["--epochs", "1", "--models", "crossrec,popularity"], "train": ["--epochs", "1"]}


def test_the_python_api_example_runs_as_printed(tmp_path):
    page = (ROOT / "docs" / "python-api.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", page, flags=re.S))
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "interactions in books, kitchen, movies" in run.stdout
    assert "{'retrieval': 1, 'ranking': 1, 'recommender': 1, 'item_encoder': 1}" in run.stdout
    assert "because of" in run.stdout and "new_item" in run.stdout
    assert "oneDNN supports" not in run.stderr and "triggered tf.function retracing" not in run.stderr


def readme_your_data_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Your data", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [re.split(r"\s#", line, maxsplit=1)[0].strip() for line in block.splitlines() if line.strip()]


def _argv(command: str, data: list[str], query: list[str]) -> list[str]:
    argv = shlex.split(command)[1:]
    if "--data" in argv:
        i = argv.index("--data")
        argv[i:i + 2] = data
    if argv[0] == "query":
        argv = ["query", *query]
    return argv + SPEED.get(argv[0], [])


def _serve(argv: list[str], cwd: Path) -> tuple[subprocess.Popen, int]:
    server = subprocess.Popen([sys.executable, "-m", "crossrec", *argv, "--port", "0", "--rest_api_port", "0"],
                              cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    for line in server.stdout:
        found = re.search(r"gRPC [\d.]+:(\d+)", line)
        if found:
            return server, int(found.group(1))
        assert time.time() < deadline, "crossrec serve did not start"
    raise AssertionError(f"crossrec serve exited with {server.wait()}")


def run_your_data_path(tmp_path: Path, data: list[str], query: list[str], monkeypatch, capfd) -> str:
    monkeypatch.chdir(tmp_path)
    commands = readme_your_data_commands()
    assert [c.split()[1] for c in commands] == ["data", "evaluate", "train", "train", "export", "serve", "query"]
    for command in commands:
        argv = _argv(command, data, query)
        if argv[0] == "serve":
            server, port = _serve(argv, tmp_path)
            continue
        if argv[0] == "query":
            argv += ["--server", f"127.0.0.1:{port}"]
        try:
            assert main(argv) == 0, f"{command} failed"
        except BaseException:
            if argv[0] == "query":
                server.kill()
            raise
    server.terminate()
    server.wait(timeout=60)
    return capfd.readouterr().out


def test_the_readmes_your_data_path_runs_on_csv_files(tmp_path, monkeypatch, capfd):
    """The built-in data exported as CSV (`crossrec data synth --file-format csv`), small."""
    assert main(["data", "synth", "--out", str(tmp_path / "mine"), "--file-format", "csv", "--n-users", "150",
                 "--n-items", "240", "--n-interactions", "3000"]) == 0
    inter = pd.read_csv(tmp_path / "mine" / "interactions.csv")
    movie = inter[inter["domain"] == "movies"]["item_id"].iloc[0]
    out = run_your_data_path(tmp_path, ["--data", str(tmp_path / "mine")],
                             ["--domain", "books", "--history", f"movies:{movie}", "--k", "10"], monkeypatch, capfd)
    assert "OK: " in out and "summary (report:" in out and "recommender: version 1" in out
    assert re.search(r"^ *10\. \S+ +score ", out, flags=re.M), out[-2000:]
    assert (tmp_path / "report" / "report.md").exists() and (tmp_path / "saved_models" / "models.config").exists()


def _movielens_100k(root: Path, synth: Path) -> None:
    """MovieLens 100k's own files (tab-separated `u.data`, pipe-separated latin-1 `u.item` with 19
    genre flags), written from the built-in data's movies."""
    inter = pd.read_parquet(synth / "interactions.parquet")
    items = pd.read_parquet(synth / "items.parquet")
    inter, items = inter[inter["domain"] == "movies"], items[items["domain"] == "movies"]
    item_ids = {item: i + 1 for i, item in enumerate(items["item_id"])}
    user_ids = {user: i + 1 for i, user in enumerate(inter["user_id"].unique())}
    root.mkdir()
    ratings = inter.assign(u=inter["user_id"].map(user_ids), i=inter["item_id"].map(item_ids),
                           r=np.clip(inter.get("rating", 4), 1, 5).astype(int), t=inter["timestamp"].astype(int))
    ratings[["u", "i", "r", "t"]].to_csv(root / "u.data", sep="\t", header=False, index=False)
    rows = []
    for n, (item, title) in enumerate(zip(items["item_id"], items["title"], strict=True)):
        flags = ["0"] * 19
        flags[1 + n % 18] = "1"
        rows.append(f"{item_ids[item]}|{title}|01-Jan-1995||http://example.org/{item_ids[item]}|" + "|".join(flags))
    (root / "u.item").write_bytes(("\n".join(rows) + "\n").encode("latin-1"))


@pytest.mark.slow
def test_the_readmes_your_data_path_runs_on_movielens_files(tmp_path, monkeypatch, capfd):
    assert main(["data", "synth", "--out", str(tmp_path / "synth"), "--n-users", "200", "--n-items", "300",
                 "--n-interactions", "5000", "--domains", "movies"]) == 0
    _movielens_100k(tmp_path / "ml-100k", tmp_path / "synth")
    out = run_your_data_path(tmp_path, ["--data", str(tmp_path / "ml-100k"), "--format", "movielens"],
                             ["--domain", "movies", "--history", "movies:1", "--history", "movies:2", "--k", "5"],
                             monkeypatch, capfd)
    assert "in 1 domains (movies)" in out and "recommender: version 1" in out
    assert re.search(r"^ *5\. \S+ +score ", out, flags=re.M), out[-2000:]
