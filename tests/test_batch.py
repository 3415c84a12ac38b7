"""Offline candidates on Apache Beam (the local FnApiRunner): same answers as the SavedModel, bad rows
dead-lettered, seen items left out, cold-start and unknown users counted."""

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from crossrec import schema
from crossrec.errors import ConfigError
from serving.batch import BatchRequest, run_candidates


def users_table(run, n=12) -> pd.DataFrame:
    """Test queries of the tiny pipeline as a users table (history lists + target domain)."""
    examples = run.data.test[0].examples
    items = run.data.catalogue.items.set_index("row")
    rows = []
    for i in range(n):
        history = examples.history[i][examples.history[i] > 0]
        rows.append({schema.USER_ID: f"{examples.user_id[i]}#{i}",
                     schema.DOMAIN: run.data.catalogue.domains[examples.target_domain[i]],
                     "history_item_ids": items.loc[history, schema.ITEM_ID].tolist(),
                     "history_domains": items.loc[history, schema.DOMAIN].tolist()})
    return pd.DataFrame(rows)


def one_by_one(saved_models, user: dict, k: int, model: str = "retrieval") -> list[str]:
    """The ``model`` SavedModel called in-process for one user, seen items of the domain removed."""
    serve = tf.saved_model.load(str(saved_models / model / "1")).signatures["serving_default"]
    seen = {i for i, d in zip(user["history_item_ids"], user["history_domains"], strict=True)
            if d == user[schema.DOMAIN]}
    out = serve(history_item_ids=tf.constant([list(user["history_item_ids"]) or [""]]),
                history_domains=tf.constant([list(user["history_domains"]) or [""]]),
                target_domain=tf.constant([user[schema.DOMAIN]]),
                k=tf.constant([min(20 if model == "retrieval" else 10, k + len(seen))]),
                exclude_history=tf.constant([True]))
    found = [b.decode() for b in out["item_ids"][0].numpy() if b]
    return [i for i in found if i not in seen][:k]


def read(folder, prefix) -> pd.DataFrame:
    files = sorted(folder.glob(f"{prefix}-*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def test_candidates_equal_the_saved_model_called_for_each_user(tiny_exported, tmp_path):
    _, run, saved_models, _ = tiny_exported
    users = users_table(run)
    users.to_parquet(tmp_path / "users.parquet")
    result = run_candidates(saved_models, tmp_path / "out", BatchRequest(users=str(tmp_path / "users.parquet"), k=5),
                            batch_size=4)
    out = read(tmp_path / "out", "candidates")
    assert list(out.columns) == ["user_id", "domain", "rank", "item_id", "score", "model_name", "model_version"]
    assert result.counts["users_scored"] == len(users) and result.counts["dead_letters"] == 0
    for user in users.to_dict("records"):
        mine = out[out["user_id"] == user[schema.USER_ID]].sort_values("rank")
        assert mine["item_id"].tolist() == one_by_one(saved_models, user, 5)
        assert mine["rank"].tolist() == list(range(1, len(mine) + 1))
        assert (np.diff(mine["score"].to_numpy()) <= 1e-6).all()
        # seen items of the target domain never come back
        seen = {i for i, d in zip(user["history_item_ids"], user["history_domains"], strict=True)
                if d == user[schema.DOMAIN]}
        assert not seen & set(mine["item_id"])
    assert set(out["model_name"]) == {"retrieval"} and set(out["model_version"]) == {1}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["runner"] == "FnApiRunner"  # chosen explicitly: never a Prism download attempt


def test_the_local_runner_is_explicit_and_runs_in_memory():
    from serving.batch import local_runner

    runner, name, args = local_runner([])
    assert type(runner).__name__ == "FnApiRunner" and name == "FnApiRunner"
    assert args == ["--direct_num_workers", "1", "--direct_running_mode", "in_memory"]
    assert local_runner(["--direct_num_workers", "2"])[2] == ["--direct_num_workers", "2", "--direct_running_mode",
                                                               "multi_threading"]  # several workers: as Beam runs them
    assert local_runner(["--direct_num_workers=0"])[2][-1] == "multi_threading"  # 0: one per core
    chosen = local_runner(["--direct_running_mode", "multi_processing"])[2]
    assert "multi_processing" in chosen and "in_memory" not in chosen  # the user's mode is kept
    assert local_runner(["--runner=DataflowRunner", "--project=p"]) == (None, "DataflowRunner",
                                                                         ["--runner=DataflowRunner", "--project=p"])


def test_bad_rows_go_to_the_dead_letter_output_and_the_run_goes_on(tiny_exported, tmp_path):
    _, run, saved_models, _ = tiny_exported
    good = users_table(run, 3)
    bad = pd.DataFrame([
        {schema.USER_ID: None, schema.DOMAIN: "books", "history_item_ids": [], "history_domains": []},
        {schema.USER_ID: "toys-fan", schema.DOMAIN: "toys", "history_item_ids": [], "history_domains": []},
        {schema.USER_ID: "mismatch", schema.DOMAIN: "books", "history_item_ids": ["a", "b"],
         "history_domains": ["books"]},
    ])
    pd.concat([good, bad], ignore_index=True).to_parquet(tmp_path / "users.parquet")
    result = run_candidates(saved_models, tmp_path / "out", BatchRequest(users=str(tmp_path / "users.parquet"), k=3))
    dead = read(tmp_path / "out", "dead_letter").sort_values("reason")
    assert result.counts["dead_letters"] == 3 and result.counts["users_scored"] == 3
    reasons = " | ".join(dead["reason"])
    assert "missing user_id" in reasons and "unknown domain 'toys'" in reasons
    assert "2 history_item_ids but 1 history_domains" in reasons
    assert set(read(tmp_path / "out", "candidates")["user_id"]) == set(good[schema.USER_ID])


def test_cold_start_and_unknown_users_are_served_and_counted(tiny_exported, tmp_path):
    _, run, saved_models, _ = tiny_exported
    items = run.data.catalogue.items
    books = items[items[schema.DOMAIN] == "books"][schema.ITEM_ID].head(3).tolist()
    users = pd.DataFrame([
        {schema.USER_ID: "reader", schema.DOMAIN: "movies", "history_item_ids": books,
         "history_domains": ["books"] * 3},  # no movie history: cross-domain cold start
        {schema.USER_ID: "stranger", schema.DOMAIN: "movies", "history_item_ids": ["never-seen"],
         "history_domains": ["movies"]},  # nothing the model knows
    ])
    users.to_parquet(tmp_path / "users.parquet")
    result = run_candidates(saved_models, tmp_path / "out", BatchRequest(users=str(tmp_path / "users.parquet"), k=4))
    assert result.counts["cold_start_users"] == 1 and result.counts["unknown_users"] == 1
    out = read(tmp_path / "out", "candidates")
    assert out.groupby("user_id").size().to_dict() == {"reader": 4, "stranger": 4}
    assert out["item_id"].str.startswith("MO").all()


def test_histories_built_from_the_interactions_table_give_the_same_candidates(tiny_exported, tmp_path):
    _, run, saved_models, _ = tiny_exported
    train = run.data.train
    some = train[train[schema.USER_ID].isin(train[schema.USER_ID].unique()[:5])]
    some[[schema.USER_ID, schema.ITEM_ID, schema.DOMAIN, schema.TIMESTAMP]].to_parquet(tmp_path / "inter.parquet")
    result = run_candidates(saved_models, tmp_path / "out",
                            BatchRequest(interactions=str(tmp_path / "inter.parquet"), k=3, domains=["kitchen"]))
    assert result.counts["users_scored"] == 5
    out = read(tmp_path / "out", "candidates")
    for user, group in some.sort_values(schema.TIMESTAMP, kind="stable").groupby(schema.USER_ID):
        expected = one_by_one(saved_models, {schema.DOMAIN: "kitchen",
                                             "history_item_ids": group[schema.ITEM_ID].tolist(),
                                             "history_domains": group[schema.DOMAIN].tolist()}, 3)
        assert out[out["user_id"] == user].sort_values("rank")["item_id"].tolist() == expected


def test_rank_top_heads_each_list_with_the_recommenders_merged_and_ranked_answer(tiny_exported, tmp_path):
    _, run, saved_models, _ = tiny_exported
    users = users_table(run, 4)
    users.to_parquet(tmp_path / "users.parquet")
    run_candidates(saved_models, tmp_path / "out", BatchRequest(users=str(tmp_path / "users.parquet"), k=6, rank_top=3))
    out = read(tmp_path / "out", "candidates")
    ranked = out[out["rank"] <= 3]
    assert set(ranked["model_name"]) == {"recommender"} and set(out[out["rank"] > 3]["model_name"]) == {"retrieval"}
    plain = users_table(run, 4).to_dict("records")
    for user in plain:
        mine = out[out["user_id"] == user[schema.USER_ID]].sort_values("rank")["item_id"].tolist()
        head = one_by_one(saved_models, user, 3, model="recommender")
        retrieved = one_by_one(saved_models, user, 6)
        assert mine[:3] == head and mine[3:] == [i for i in retrieved if i not in head][:3]


def test_feed_gives_each_user_one_list_across_domains_as_the_feed_signature_does(tiny_exported, tmp_path):
    from crossrec.cli import main
    from serving.batch_feed import FeedRequest

    _, run, saved_models, _ = tiny_exported
    users = users_table(run, 6).drop(columns=[schema.DOMAIN])
    users.to_parquet(tmp_path / "users.parquet")
    result = run_candidates(saved_models, tmp_path / "out",
                            BatchRequest(users=str(tmp_path / "users.parquet"),
                                         feed=FeedRequest(5, diversity=0.5, calibration=1.0)),
                            batch_size=4)
    out = read(tmp_path / "out", "candidates")
    assert result.counts["queries"] == result.counts["users_scored"] == len(users)  # one list per user
    assert result.counts["rows"] == len(out) and set(out["model_name"]) == {"recommender"}
    feed = tf.saved_model.load(str(saved_models / "recommender" / "1")).signatures["feed"]
    for user in users.to_dict("records"):
        answer = feed(history_item_ids=tf.constant([list(user["history_item_ids"]) or [""]]),
                      history_domains=tf.constant([list(user["history_domains"]) or [""]]),
                      n=tf.constant([5]), diversity=tf.constant([0.5]), calibration=tf.constant([1.0]),
                      target_shares=tf.zeros([1, 0]), exclude_history=tf.constant([True]))
        expected = [(d.decode(), i.decode()) for d, i in zip(answer["domains"][0].numpy(),
                                                             answer["item_ids"][0].numpy(), strict=True) if i]
        mine = out[out["user_id"] == user[schema.USER_ID]].sort_values("rank")
        assert list(zip(mine["domain"], mine["item_id"], strict=True)) == expected
    assert out["domain"].nunique() > 1  # the rows name each item's own domain
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["feed"] == {"n": 5, "diversity": 0.5, "calibration": 1.0}
    assert summary["k"] is None and summary["rank_top"] is None  # settings a feed does not use
    with pytest.raises(ConfigError, match="--rank-top and --domains do not apply"):
        run_candidates(saved_models, tmp_path / "out2",
                       BatchRequest(users=str(tmp_path / "users.parquet"), rank_top=3, feed=FeedRequest(5)))
    with pytest.raises(ConfigError, match="--diversity 2.0: must be a number from 0 to 1"):
        run_candidates(saved_models, tmp_path / "out2",
                       BatchRequest(users=str(tmp_path / "users.parquet"), feed=FeedRequest(5, diversity=2.0)))
    assert main(["candidates", "--model-dir", str(saved_models), "--input", str(tmp_path / "users.parquet"),
                 "--output", str(tmp_path / "out3"), "--diversity", "0.2"]) == 2  # a feed's weight without --feed


def test_k_beyond_the_exported_max_k_is_a_clear_error(tiny_exported, tmp_path):
    _, run, saved_models, _ = tiny_exported
    users_table(run, 1).to_parquet(tmp_path / "users.parquet")
    with pytest.raises(ConfigError, match="max_k"):
        run_candidates(saved_models, tmp_path / "out", BatchRequest(users=str(tmp_path / "users.parquet"), k=500))


def test_the_cli_runs_the_pipeline_and_passes_beam_options_through(tiny_exported, tmp_path, capsys):
    from crossrec.cli import main

    _, run, saved_models, _ = tiny_exported
    users_table(run, 3).to_parquet(tmp_path / "users.parquet")
    code = main(["candidates", "--model-dir", str(saved_models), "--input", str(tmp_path / "users.parquet"),
                 "--output", str(tmp_path / "out"), "--k", "2", "--direct_num_workers=1"])
    assert code == 0
    assert "candidates for 3 (user, domain) queries" in capsys.readouterr().out
    assert len(read(tmp_path / "out", "candidates")) == 6
    with pytest.raises(SystemExit):  # other commands still refuse unknown flags
        main(["data", "describe", "--no-such-flag"])


@pytest.fixture
def contention():
    """A process that keeps one core busy while the test runs, as a busy machine has."""
    import subprocess
    import sys

    busy = subprocess.Popen([sys.executable, "-c", "while True: sum(i * i for i in range(10**6))"])
    yield
    busy.kill()
    busy.wait()


def interactions_files(run, folder, users: int = 12):
    """The first ``users`` users' training interactions as two Parquet files of several row groups."""
    train = run.data.train
    some = train[train[schema.USER_ID].isin(train[schema.USER_ID].unique()[:users])]
    some = some[[schema.USER_ID, schema.ITEM_ID, schema.DOMAIN, schema.TIMESTAMP]].reset_index(drop=True)
    folder.mkdir()
    half = len(some) // 2
    for part, rows in enumerate((some.iloc[:half], some.iloc[half:])):
        rows.to_parquet(folder / f"part-{part}.parquet", row_group_size=7)  # users cut across row groups and files
    return some


@pytest.mark.parametrize("mode", ["rank_top", "feed", "interactions"])
def test_the_job_is_deterministic_under_contention(tiny_exported, tmp_path, mode, contention):
    """Same input, same rows, every run (two here), on a busy machine, for ``--rank-top``,
    ``--feed`` and ``--interactions`` over several files of several row groups, with the job's own
    runner settings. ``bench.batch_stress`` runs it 51 times on the quickstart's data."""
    from serving.batch_feed import FeedRequest

    _, run, saved_models, _ = tiny_exported
    users = users_table(run, 20).drop(columns=[schema.DOMAIN])  # every user asked in every domain
    users.to_parquet(tmp_path / "users.parquet", row_group_size=3)
    ask = {"rank_top": dict(users=str(tmp_path / "users.parquet"), k=5, rank_top=3),
           "feed": dict(users=str(tmp_path / "users.parquet"), feed=FeedRequest(4)),
           "interactions": dict(interactions=str(tmp_path / "inter" / "*.parquet"), k=4)}[mode]
    if mode == "interactions":
        interactions_files(run, tmp_path / "inter")
    queries = {"rank_top": 20 * 3, "feed": 20, "interactions": 12 * 3}[mode]
    first = None
    for attempt in range(2):
        out_dir = tmp_path / f"out{attempt}"
        result = run_candidates(saved_models, out_dir, BatchRequest(**ask), batch_size=3)
        rows = read(out_dir, "candidates").sort_values(["user_id", "domain", "rank"], ignore_index=True)
        assert result.counts["queries"] == result.counts["users_scored"] == queries
        assert result.counts["rows"] == len(rows) and result.counts["dead_letters"] == 0
        summary = json.loads((out_dir / "summary.json").read_text())
        assert summary["complete"] and not (out_dir / "counts.jsonl").exists()
        if first is None:
            first = rows
        else:
            pd.testing.assert_frame_equal(rows, first)


def test_the_books_close_against_what_the_input_files_hold(tiny_exported, tmp_path):
    from serving.batch_input import survey

    _, run, saved_models, _ = tiny_exported
    some = interactions_files(run, tmp_path / "inter", users=5)
    held = survey(str(tmp_path / "inter" / "*.parquet"), interactions=True)
    assert (held.files, held.rows, held.users) == (2, len(some), 5) and len(held.pieces) > 2
    result = run_candidates(saved_models, tmp_path / "out",
                            BatchRequest(interactions=str(tmp_path / "inter" / "*.parquet"), k=2, domains=["books"]))
    assert (result.counts["input_rows"], result.counts["input_users"]) == (len(some), 5)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["input_holds"] == {"files": 2, "rows": len(some), "users": 5, "row_groups": len(held.pieces)}


@pytest.mark.parametrize("table", ["users", "interactions"])
def test_rows_lost_inside_the_pipeline_fail_the_job_with_the_missing_count(tiny_exported, tmp_path, monkeypatch,
                                                                           table):
    """A read that drops rows (simulated: one user's rows vanish inside the pipeline, as the lost
    row group did) is an error naming the numbers; the run's summary says incomplete."""
    import serving.batch_input as batch_input
    from crossrec.cli import main
    from serving.batch_accounting import IncompleteOutput

    _, run, saved_models, _ = tiny_exported
    if table == "users":
        users_table(run, 4).to_parquet(tmp_path / "users.parquet")
        ask = dict(users=str(tmp_path / "users.parquet"))
    else:
        interactions_files(run, tmp_path / "inter", users=4)
        ask = dict(interactions=str(tmp_path / "inter" / "*.parquet"))
    original = batch_input.read_row_group
    victim = pd.read_parquet(ask.get("users") or tmp_path / "inter")[schema.USER_ID].iloc[0]
    lost = int((pd.read_parquet(ask.get("users") or tmp_path / "inter")[schema.USER_ID] == victim).sum())

    def lossy(piece):
        return (row for row in original(piece) if row[schema.USER_ID] != victim)

    monkeypatch.setattr(batch_input, "read_row_group", lossy)
    expected = rf"{lost} rows lost" + (".*1 users lost" if table == "interactions" else "")
    with pytest.raises(IncompleteOutput, match=expected):
        run_candidates(saved_models, tmp_path / "out", BatchRequest(k=2, **ask))
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["complete"] is False
    flag = ["--input", ask["users"]] if table == "users" else ["--interactions", ask["interactions"]]
    assert main(["candidates", "--model-dir", str(saved_models), *flag, "--output", str(tmp_path / "out2"),
                 "--k", "2"]) != 0


def test_a_count_that_does_not_add_up_fails_the_job(tiny_exported, tmp_path, monkeypatch):
    """A list lost between steps (simulated: the books count one list too many per query) is
    an error naming the numbers, never a run that exits 0."""
    import serving.batch_accounting as accounting
    from serving.batch_accounting import IncompleteOutput

    original = accounting.list_counts
    monkeypatch.setattr(accounting, "list_counts", lambda element: [*original(element), ("rows", 1)])
    _, run, saved_models, _ = tiny_exported
    users_table(run, 3).to_parquet(tmp_path / "users.parquet")
    with pytest.raises(IncompleteOutput, match=r"the lists hold 9 candidate rows but 6 were written"):
        run_candidates(saved_models, tmp_path / "out", BatchRequest(users=str(tmp_path / "users.parquet"), k=2))
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["complete"] is False
