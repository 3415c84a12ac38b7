"""The `crossrec` command: subcommands work, bad input exits 2 naming file/row/column, nothing written."""

import subprocess
import sys

import pandas as pd
import pytest

from crossrec.cli import build_parser, main

from conftest import GOOD_INTERACTIONS, GOOD_ITEMS


def test_every_command_has_help(capsys):
    parser = build_parser()
    for argv in (["--help"], ["data", "--help"], ["data", "synth", "--help"], ["data", "validate", "--help"],
                 ["data", "describe", "--help"], ["data", "split", "--help"], ["quickstart", "--help"]):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(argv)
        assert info.value.code == 0
    assert "crossrec data synth --out data/" in capsys.readouterr().out


def test_synth_then_describe_validate_and_split(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["data", "synth", "--out", str(out), "--n-users", "60", "--n-items", "90",
                 "--n-interactions", "900", "--file-format", "csv"]) == 0
    assert (out / "interactions.csv").exists() and (out / "items.csv").exists()
    assert main(["data", "validate", "--data", str(out)]) == 0
    assert "OK: " in capsys.readouterr().out
    assert main(["data", "describe", "--data", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Users shared between domains" in text and "History length per user" in text
    assert main(["data", "split", "--data", str(out), "--out", str(tmp_path / "split"), "--kind", "new_item",
                 "--fraction", "0.2"]) == 0
    written = pd.read_parquet(tmp_path / "split" / "interactions.parquet")
    assert set(written["split"]) == {"train", "validation", "test"}


def test_validate_bad_input_exits_2_naming_file_row_and_column(write, capsys):
    inter = write("inter.csv", GOOD_INTERACTIONS + "u3,b1,books,1700000200,lots\n")
    items = write("items.csv", GOOD_ITEMS)
    assert main(["data", "validate", "--data", str(inter), "--items", str(items)]) == 2
    err = capsys.readouterr().err
    assert "crossrec: error: invalid input data" in err
    assert "inter.csv, row 4 (line 5), column 'rating': rating 'lots' is not a number" in err
    assert "Traceback" not in err


def test_column_flag_maps_source_columns(write):
    inter = write("inter.csv", GOOD_INTERACTIONS.replace("user_id", "userId", 1))
    items = write("items.csv", GOOD_ITEMS)
    argv = ["data", "validate", "--data", str(inter), "--items", str(items)]
    assert main(argv) == 2
    assert main(argv + ["--column", "user_id=userId"]) == 0


def test_split_on_bad_input_writes_nothing(write, tmp_path):
    inter = write("inter.csv", GOOD_INTERACTIONS + "u3,zz,books,1700000200,4\n")
    items = write("items.csv", GOOD_ITEMS)
    out = tmp_path / "split-out"
    assert main(["data", "split", "--data", str(inter), "--items", str(items), "--out", str(out)]) == 2
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".split-out")]


def test_existing_output_is_not_overwritten_without_the_flag(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["data", "synth", "--out", str(out), "--n-users", "10", "--n-items", "30",
                 "--n-interactions", "100"]) == 2
    assert "pass --overwrite to replace it" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_bad_config_exits_2(write, capsys):
    config = write("c.yaml", "data:\n  formatt: table\n")
    assert main(["data", "validate", "--config", str(config)]) == 2
    assert "unknown key 'formatt'. Did you mean 'format'?" in capsys.readouterr().err


def test_quickstart_runs_every_step(tmp_path, capfd, caplog):
    import shlex
    import warnings

    from crossrec.cli import build_parser

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["quickstart", "--out", str(tmp_path / "qs"), "--tiny"]) == 0
    text, err = capfd.readouterr()
    # nothing a user cannot act on: every such message fixed at its cause or silenced in crossrec.quiet
    noise = ("build()` was called", "Skipping full serialization", "cuInit", "Resource module is not available",
             "triggered tf.function retracing", "apitools not found")
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert not [m for m in noise if m in text + err + logged or any(m in str(w.message) for w in caught)]
    # each training is one labelled progress line; no bare "Epoch n/m" lines
    for label in ("training crossrec towers", "training id_two_tower (baseline)", "training ranker (teacher)",
                  "training ranker (distilled student)", "training crossrec towers without movies (zero-shot)"):
        assert label in text
    assert "Epoch 1/" not in text
    assert len(text.split("\n")) <= 130  # progress bars collapsed: they redraw with carriage returns
    # cold start asked on the domain the split held out; the demo shows the history its picks cite
    assert "cross-domain cold start on movies" in text and "--zero-shot-domain movies" in text
    assert "the 2 most recent:" in text and "(N%) after a pick" in text
    # it ends with the commands that serve, explore and query its own output, and they parse
    tail = text.split("quickstart done", 1)[1]
    for verb in ("serve", "query"):
        line = next(x for x in tail.splitlines() if f" {verb} --" in x)
        argv = shlex.split(line[line.index(f"crossrec {verb} "):])[1:]
        build_parser().parse_args(argv)
        assert str(tmp_path / "qs") in line or verb == "query"
    assert "curl -s http://127.0.0.1:8501/v1/models/recommender:predict" in tail
    assert "[5/8] train the retrieval towers" in text and "quickstart done" in text
    assert "[7/8] serve them" in text and "cross-domain cold-start user" in text and "because you liked" in text
    assert "embedded server stopped" in text and "candidates for" in text
    assert (tmp_path / "qs" / "split" / "interactions.parquet").exists()
    assert (tmp_path / "qs" / "retrieval" / "towers.weights.h5").exists()
    assert "NDCG@10" in text and (tmp_path / "qs" / "report" / "report.md").exists()


def test_console_script_exit_code(write, tmp_path):
    inter = write("inter.csv", "")
    result = subprocess.run([sys.executable, "-m", "crossrec", "data", "validate", "--data", str(inter),
                             "--items", str(inter)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "inter.csv: interactions file is empty" in result.stderr


def test_query_without_a_server_says_how_to_start_one(capsys):
    from crossrec.cli import main
    from serving.server import free_port

    port = free_port()  # nobody listens there
    assert main(["query", "--server", f"127.0.0.1:{port}", "--domain", "books", "--history", "books:B1",
                 "--timeout", "3"]) == 2
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "start one with `crossrec serve --model_base_path" in err
    assert "Traceback" not in err


def test_serve_on_an_empty_folder_names_the_fix(tmp_path, capsys):
    from crossrec.cli import main

    assert main(["serve", "--model_base_path", str(tmp_path), "--port", "0", "--rest_api_port", "0"]) == 2
    err = capsys.readouterr().err
    assert "holds no model versions" in err and "crossrec export" in err and "--out" in err


def test_one_flag_name_for_the_models_folder_with_the_old_spellings_as_aliases(tmp_path):
    from crossrec.cli import build_parser

    parser = build_parser()
    folder = str(tmp_path)
    for command, dest in ((["candidates", "--input", "u.parquet", "--output", "o"], "model_dir"),
                          (["catalogue", "add", "--items", "i.csv"], "model_base_path"),
                          (["retrain", "--data", "d"], "base"), (["serve"], "model_base_path")):
        args, _ = parser.parse_known_args([*command, "--model-dir", folder])
        assert getattr(args, dest) == folder, command
    assert parser.parse_known_args(["retrain", "--data", "d", "--from", folder])[0].base == folder
    assert parser.parse_known_args(["catalogue", "add", "--items", "i", "--model_base_path", folder])[0] \
        .model_base_path == folder
    assert parser.parse_known_args(["serve", "--model_base_path", folder])[0].model_base_path == folder


def test_make_install_hides_the_editable_install_banner():
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    editable = [line for line in makefile.splitlines() if "pip install" in line and " -e " in line]
    assert editable and all("PYTHONWARNINGS=ignore" in line for line in editable)


def test_the_quickstarts_history_headings_say_what_each_listed_item_is(capsys):
    from crossrec.pipelines.quickstart import _show

    history = [("books", f"B{i}") for i in range(1, 13)]
    rows = [{"item_id": "M1", "because": {"domain": "books", "item_id": b, "weight": 0.4}} for b in ("B3", "B8")]
    _show("a reader", history, rows, {}, 2)
    out = capsys.readouterr().out
    recent, cited = out.split("the others the picks are explained by:")
    assert "the 2 most recent:" in recent and " 11. books    B11" in recent and " 12. books    B12" in recent
    assert "B3" not in recent and " 3. books    B3" in cited and " 8. books    B8" in cited


def test_a_list_out_of_score_order_says_why():
    from crossrec.cli.query import order_note

    assert order_note("recommender", [6.9, 6.8, 6.1]) is None
    note = order_note("recommender", [6.9, 6.851, 6.885, 6.2, 6.3])
    assert note.startswith("order: the served order; 2 score(s) sit above a larger one") and "added" in note
    assert "diversity and calibration" in order_note("feed", [0.0398, 0.0124, 0.0260])


def test_quickstart_runs_on_your_own_csv_files(tmp_path, capfd):
    """`crossrec quickstart --data PATH`: the main job on a user's own folder of CSV files (here the
    built-in data exported as CSV, one domain renamed so nothing is the built-in's by name)."""
    import pandas as pd

    assert main(["data", "synth", "--out", str(tmp_path / "synth"), "--n-users", "150", "--n-items", "240",
                 "--n-interactions", "3000"]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    for table in ("interactions", "items"):
        frame = pd.read_parquet(tmp_path / "synth" / f"{table}.parquet")
        frame["domain"] = frame["domain"].replace({"kitchen": "garden"})
        frame.to_csv(mine / f"{table}.csv", index=False)
    capfd.readouterr()
    assert main(["quickstart", "--data", str(mine), "--out", str(tmp_path / "qs"), "--tiny"]) == 0
    text = capfd.readouterr().out
    fewest = pd.read_csv(mine / "interactions.csv")["domain"].value_counts().sort_values(kind="stable").index[0]
    assert "generate the built-in data" not in text and "[1/7] validate it" in text
    assert f"cross-domain cold start on {fewest}" in text and "--zero-shot-domain" not in text
    assert f"recommended {fewest}" in text and "quickstart done" in text and "candidates for" in text
    assert f"query --domain {fewest}" in text
    # a folder that is not a dataset is refused before anything runs, naming the problem
    (tmp_path / "empty").mkdir()
    assert main(["quickstart", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "qs2")]) == 2
