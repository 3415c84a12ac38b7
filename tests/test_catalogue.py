"""`crossrec catalogue add / retire`: new items served from their text without retraining, items
taken off sale never returned, nothing else moved, bad input and kills publishing nothing."""

import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from set_watch import SetWatcher, run_killed
from stock_tf import as_lists, stock_answers

from crossrec import schema
from crossrec.errors import ConfigError, DataError
from crossrec.features import Catalogue
from crossrec.pipelines.catalogue import add_items, retire_items
from crossrec.pipelines.served_data import read_training_data, served_state
from serving.client import _history_inputs
from serving.layout import versions
from serving.lookups import UNKNOWN_SCORE
from serving.model_set import is_complete
from serving.training_state import state_root

MODELS = ("retrieval", "ranking", "recommender", "item_encoder")


@pytest.fixture
def served(tiny_exported, tmp_path):
    """A private copy of the exported tiny pipeline (version 1 of every model) and its state."""
    base = tmp_path / "saved_models"
    shutil.copytree(tiny_exported[2], base)
    shutil.copytree(state_root(tiny_exported[2]), state_root(base))
    return base


def _items(base: Path) -> pd.DataFrame:
    return read_training_data(served_state(base).towers_dir).items


def _new_items(base: Path, n: int = 4) -> pd.DataFrame:
    """New books and kitchen items whose text is like existing ones' (so queries reach them)."""
    old = _items(base)
    rows = []
    for domain in ("books", "kitchen"):
        for i, (_, item) in enumerate(old[old[schema.DOMAIN] == domain].head(n // 2).iterrows()):
            rows.append({"item_id": f"NEW-{domain}-{i}", "domain": domain, "title": f"{item['title']} (New Edition)",
                         "categories": item["categories"]})
    return pd.DataFrame(rows)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _signature(base: Path, model: str, version: int):
    return tf.saved_model.load(str(base / model / str(version))).signatures["serving_default"]


def _queries(base: Path, n: int = 40):
    """(history, domain) pairs: each user's first items of the training data, asked in every domain."""
    data = read_training_data(served_state(base).towers_dir).interactions
    out = []
    for _, group in list(data.groupby(schema.USER_ID))[:n]:
        history = list(zip(group[schema.DOMAIN], group[schema.ITEM_ID], strict=True))[:6]
        out += [(history, domain) for domain in ("books", "kitchen", "movies")]
    return out


def _ask(signature, history, domain, k=20, exclude=True):
    inputs = {key: tf.constant(v) for key, v in _history_inputs([history], [domain]).items()}
    out = signature(**inputs, k=tf.constant([k]), exclude_history=tf.constant([exclude]))
    return {key: value.numpy()[0] for key, value in out.items()}


class _UnderLoad:
    """``with _UnderLoad(base, history, probe) as load``: the embedded server (gRPC and the explorer
    page) over ``base``, asked without pause by two clients: the recommender for ``history``, and the
    ranker for the ``probe`` item (scored UNKNOWN_SCORE by every version that does not know it)."""

    def __init__(self, base: Path, history, probe: tuple[str, str]):
        from serving.models import ModelManager, ModelSpec

        self.manager = ModelManager([ModelSpec(m, base / m) for m in MODELS])
        self.history, self.probe = history, probe
        self.errors: list[str] = []
        self.asked = 0
        self.knows: list[bool] = []  # per probe answer: whether the served ranker knew the probe item
        self._stop = threading.Event()

    def __enter__(self):
        from serving.models import wait_until_ready
        from serving.server import Server, ServerOptions, free_port

        self.server = Server(self.manager, ServerOptions(port=0, rest_api_port=free_port(), poll_seconds=0.2,
                                                         ui=True)).start()
        assert wait_until_ready(self.manager)
        self._threads = [threading.Thread(target=self._ask, args=(probe,), daemon=True) for probe in (False, True)]
        for thread in self._threads:
            thread.start()
        return self

    def _ask(self, probe: bool) -> None:
        from serving.client import CrossrecClient

        domain, item = self.probe
        with CrossrecClient(f"127.0.0.1:{self.server.port}", timeout=60) as client:
            while not self._stop.wait(0.02):
                try:
                    if probe:
                        score = client.rank(self.history, domain, [item])[0]["engagement"]
                        self.knows.append(score > UNKNOWN_SCORE / 2)
                    else:
                        assert client.recommend(self.history, domain, k=10)
                        self.asked += 1
                except Exception as error:  # noqa: BLE001  (every failed request is recorded)
                    self.errors.append(repr(error))

    def rest(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.server.rest_port}{path}", timeout=30) as response:
            return json.loads(response.read())

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        self.server.stop()


def test_added_items_are_placed_from_their_text_and_nothing_else_moves(served, tmp_path):
    new = _new_items(served)
    probe = (new["domain"].iat[0], new["item_id"].iat[0])
    with _UnderLoad(served, _queries(served)[0][0], probe) as load:
        encoder = load.manager.get("item_encoder").module
        result = add_items(_write(new, tmp_path / "new.csv"), served, work_dir=tmp_path / "runs", progress=False)
        deadline = time.monotonic() + 60
        while load.manager.get("ranking").version != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        # the item encoder's version 2 is version 1's files: served again, not loaded twice
        assert load.manager.get("item_encoder").version == 2 and load.manager.get("item_encoder").module is encoder
        time.sleep(1.0)  # answers from version 2 under the same load
        # the explorer marks the added items (and only them) in the version it serves
        keys = ",".join(f"{d}:{i}" for d, i in [probe, ("books", _items(served)[schema.ITEM_ID].iat[0])])
        added = load.rest(f"/ui/api/added?keys={keys}")
        assert load.rest("/ui/api/info")["added"] == len(new)
    assert result.published == dict.fromkeys(MODELS, 2) and result.added == len(new)
    assert all(is_complete(served / m, 2) for m in MODELS)
    # no request failed while version 2 was published and loaded; the probe's answers switched once
    assert load.errors == [] and load.asked > 10, load.errors[:3]
    switch = load.knows.index(True)
    assert switch > 0 and all(load.knows[switch:]), load.knows
    assert added == {"version": 2, "count": len(new),
                     "items": {f"{probe[0]}:{probe[1]}": {"title": new["title"].iat[0], "after_version": 1}}}
    # each added item's vector is what the served item encoder gives its text: the towers' text path
    encoder = _signature(served, "item_encoder", 1)
    texts = (new["title"] + ". " + new["categories"]).tolist()
    expected = encoder(text=tf.constant(texts), domain=tf.constant(new["domain"].tolist()))["embedding"].numpy()
    stored = pd.read_parquet(served_state(served).towers_dir / "item_embeddings.parquet")
    added = stored.set_index("item_id").loc[new["item_id"], "embedding"]
    np.testing.assert_allclose(np.stack(added.to_numpy()), expected, atol=1e-5)
    # every answer that holds no added item is the one version 1 gave, scores included; the added
    # items reach answers, and the ranker scores them (no interactions, no UNKNOWN_SCORE)
    before, after = _signature(served, "retrieval", 1), _signature(served, "retrieval", 2)
    unchanged = reached = 0
    for history, domain in _queries(served):
        old, fresh = _ask(before, history, domain), _ask(after, history, domain)
        if any(i.startswith(b"NEW-") for i in fresh["item_ids"]):
            reached += 1
            continue
        np.testing.assert_array_equal(fresh["item_ids"], old["item_ids"])
        np.testing.assert_array_equal(fresh["scores"], old["scores"])
        unchanged += 1
    assert unchanged > 20 and reached > 0
    ranking = tf.saved_model.load(str(served / "ranking" / "2")).signatures["serving_default"]
    inputs = {key: tf.constant(v) for key, v in _history_inputs([_queries(served)[0][0]], ["books"]).items()}
    scores = ranking(**inputs, candidate_item_ids=tf.constant([["NEW-books-0", "NEW-books-1"]]))["engagement"]
    assert (scores.numpy() > UNKNOWN_SCORE / 2).all()
    # stock TensorFlow (as stock TF Serving) serves the refreshed version alike
    history = _queries(served)[0][0]
    asked = {**as_lists(_history_inputs([history], ["books"])), "k": [10], "exclude_history": [True]}
    stock = stock_answers(served, 2, {"recommender": asked, "ranking": {
        **as_lists(_history_inputs([history], ["books"])), "candidate_item_ids": [["NEW-books-0", "NEW-books-1"]]}})
    assert stock["loaded"] == []
    assert stock["outputs"]["recommender"]["item_ids"][0] == [
        i.decode() for i in _ask(_signature(served, "recommender", 2), history, "books", k=10)["item_ids"]]
    np.testing.assert_allclose(stock["outputs"]["ranking"]["engagement"], scores.numpy(), rtol=1e-5)
    # the next retrain starts from the changed catalogue: the items are in its data, unseen
    items = _items(served)
    assert set(new["item_id"]) <= set(items[schema.ITEM_ID])
    # the same command again: already published, nothing added twice
    again = add_items(tmp_path / "new.csv", served, work_dir=tmp_path / "runs", progress=False)
    assert again.published == dict.fromkeys(MODELS, 2) and "already published" in again.reason
    assert versions(served / "retrieval") == [1, 2]
    # the weekly retrain starts from the changed version: the added items' first clicks train them
    _retrain_with_clicks_on(new, served, tmp_path)


def _retrain_with_clicks_on(new: pd.DataFrame, served: Path, tmp_path: Path) -> None:
    from test_retrain import small_config

    from crossrec.pipelines.retrain import retrain
    from towers.train import load_trained

    old = read_training_data(served_state(served).towers_dir).interactions
    start = int(old[schema.TIMESTAMP].max()) + 100
    users = sorted(old[schema.USER_ID].unique())[:24]
    week = tmp_path / "week"
    week.mkdir()
    rows = []
    # each user clicks an added item, then two older ones of its domain (which leave-last-out holds out)
    for j, user in enumerate(users):
        item, domain = new["item_id"].iat[j % len(new)], new["domain"].iat[j % len(new)]
        later = old.loc[old[schema.DOMAIN] == domain, schema.ITEM_ID].unique()[j % 5:j % 5 + 2]
        rows += [{"user_id": user, "item_id": i, "domain": domain, "timestamp": start + 10 * j + n}
                 for n, i in enumerate([item, *later])]
    pd.DataFrame(rows).to_csv(week / "interactions.csv", index=False)
    result = retrain(week, served, config=small_config(served), work_dir=tmp_path / "retrain", progress=False)
    assert result.published == dict.fromkeys(MODELS, 3), result.reason
    model, catalogue, _ = load_trained(served_state(served).towers_dir)
    rows = catalogue.rows(new["domain"], new["item_id"])
    # clicked, so they train ID embeddings of their own (unless the retrain's evaluation split holds
    # one out as a new item of its test slice)
    assert (rows > 0).all() and np.asarray(model.id_known)[rows].sum() >= len(rows) - 1


def test_retired_items_are_never_returned_and_still_count_in_histories(served, tmp_path):
    before = _signature(served, "recommender", 1)
    queries = _queries(served)
    counts = {}
    for history, domain in queries:
        for item in _ask(before, history, domain, k=10)["item_ids"]:
            counts[(domain, item.decode())] = counts.get((domain, item.decode()), 0) + 1
    retire = [key for key, _ in sorted(counts.items(), key=lambda kv: -kv[1])[:3] if key[1]]
    listed = pd.DataFrame({"domain": [d for d, _ in retire], "item_id": [i for _, i in retire]})
    result = retire_items(_write(listed, tmp_path / "retire.csv"), served, work_dir=tmp_path / "runs", progress=False)
    assert result.published == dict.fromkeys(MODELS, 2) and result.retired == 3
    gone = {i.encode() for _, i in retire}
    retrieval, recommender = _signature(served, "retrieval", 2), _signature(served, "recommender", 2)
    for history, domain in queries:
        for signature, k in ((retrieval, 20), (recommender, 10)):
            assert not gone & set(_ask(signature, history, domain, k=k)["item_ids"])
    # the Beam batch job reads the changed version like any other: no retired item among its
    # candidates (version 1's top 10 held them)
    before_retrieval = _signature(served, "retrieval", 1)
    assert any(gone & set(_ask(before_retrieval, h, d, k=10)["item_ids"]) for h, d in queries)
    from serving.batch import BatchRequest, run_candidates

    users = pd.DataFrame([{"user_id": f"u{i}", "domain": domain, "history_item_ids": [i for _, i in history],
                           "history_domains": [d for d, _ in history]} for i, (history, domain) in enumerate(queries)])
    users.to_parquet(tmp_path / "users.parquet")
    batch = run_candidates(served, tmp_path / "batch", BatchRequest(users=str(tmp_path / "users.parquet"), k=10))
    assert batch.counts["users_scored"] == len(queries)
    candidates = pd.concat(pd.read_parquet(f) for f in (tmp_path / "batch").glob("candidates-*.parquet"))
    assert len(candidates) and not set(zip(candidates["domain"], candidates["item_id"], strict=True)) & set(retire)
    ranking = _signature(served, "ranking", 2)
    history = [(retire[0][0], retire[0][1])] + queries[0][0]
    inputs = {key: tf.constant(v) for key, v in _history_inputs([history], [retire[0][0]]).items()}
    out = ranking(**inputs, candidate_item_ids=tf.constant([[retire[0][1]]]))
    assert out["engagement"].numpy()[0, 0] == UNKNOWN_SCORE
    # a retired item in a history is still a known item of it
    old = _ask(_signature(served, "retrieval", 1), history, retire[0][0])
    assert _ask(retrieval, history, retire[0][0])["history_known"] == old["history_known"] == len(history)
    # retraining keeps them retired: its catalogue searches them in no domain
    catalogue = Catalogue.build(_items(served), ["books", "kitchen", "movies"])
    rows = catalogue.rows([d for d, _ in retire], [i for _, i in retire])
    assert (catalogue.served_domain[rows] == 0).all() and catalogue.retired[rows].all()
    # retiring them again publishes nothing
    again = retire_items(tmp_path / "retire.csv", served, work_dir=tmp_path / "runs2", progress=False)
    assert again.published == dict.fromkeys(MODELS, 2)  # this very command published version 2


@pytest.mark.parametrize("case", ["duplicate", "unknown_domain", "empty_text", "huge_title", "already_served"])
def test_bad_new_items_are_clear_errors_and_publish_nothing(served, tmp_path, case):
    new = _new_items(served)
    expected = {
        "duplicate": r"'NEW-books-0' \(books\) is listed more than once",
        "unknown_domain": r"domain 'garden' is not served \(served domains: books, kitchen, movies\)",
        "empty_text": r"has no text",
        "huge_title": r"has a text of 10,485,\d+ characters",
        "already_served": r"is in the served catalogue already",
    }[case]
    if case == "duplicate":
        new = pd.concat([new, new.head(1)], ignore_index=True)  # the same row twice (other text: validate's rule)
    elif case == "unknown_domain":
        new.loc[1, "domain"] = "garden"
    elif case == "empty_text":
        new.loc[2, ["title", "categories"]] = ""
    elif case == "huge_title":
        new.loc[0, "title"] = "x" * (10 << 20)
    else:
        new.loc[3, ["item_id", "domain"]] = _items(served)[[schema.ITEM_ID, schema.DOMAIN]].iloc[0].to_list()
    path = _write(new, tmp_path / "new.csv")
    with pytest.raises(DataError, match=expected) as error:
        add_items(path, served, work_dir=tmp_path / "runs", progress=False)
    assert "new.csv" in str(error.value) and "row" in str(error.value)
    assert versions(served / "retrieval") == [1]


def test_retiring_an_unknown_item_names_it_and_publishes_nothing(served, tmp_path):
    listed = _write(pd.DataFrame({"domain": ["books"], "item_id": ["NOPE"]}), tmp_path / "retire.csv")
    with pytest.raises(DataError, match=r"item 'NOPE' \(books\) is not in the served catalogue"):
        retire_items(listed, served, work_dir=tmp_path / "runs", progress=False)
    with pytest.raises(DataError, match="missing column"):
        retire_items(_write(pd.DataFrame({"item_id": ["x"]}), tmp_path / "ids.csv"), served, progress=False)
    assert versions(served / "retrieval") == [1]


def test_towers_that_cannot_place_an_item_from_their_text_are_refused():
    from dataclasses import replace

    from crossrec.config import Config
    from crossrec.pipelines.catalogue_state import check_servable

    summary = {"text_encoder": {"fingerprint": "abc"}}
    config = Config()
    check_servable(config, summary)
    with pytest.raises(ConfigError, match="ID-only"):
        check_servable(replace(config, towers=replace(config.towers, use_text=False)), summary)
    with pytest.raises(ConfigError, match="does not record its text encoder's fingerprint"):
        check_servable(config, {})


def test_an_add_killed_at_any_step_leaves_the_old_set_serving_and_the_same_command_finishes_it(served, tmp_path):
    path = _write(_new_items(served), tmp_path / "new.csv")
    args = ["catalogue", "add", "--items", str(path), "--model_base_path", str(served),
            "--work-dir", str(tmp_path / "runs"), "--quiet"]
    with SetWatcher(served, MODELS) as watch:
        watch.wait_for(1)
        # each run killed one step further (see kill_at.py; a step counts in its own run): the changed
        # towers written, two models written aside, one renamed into place, two more (three of four),
        # the whole set in place
        for step in ("state:1", "save:2", "rename:1", "rename:2", "published:1"):
            killed = run_killed(step, args)
            assert killed.returncode == -9, (step, killed.stdout + killed.stderr)
            assert served_state(served).version == (2 if step == "published:1" else 1), step
        finished = run_killed(None, args)
        assert finished.returncode == 0, finished.stderr
        watch.wait_for(2)
    assert watch.mixes == []
    assert [set(seen.values()) for seen in watch.seen] == [{1}, {2}]
    assert "already published" in json.loads(finished.stdout.strip().splitlines()[-1])["reason"]
    assert all(is_complete(served / m, 2) for m in MODELS) and versions(served / "retrieval") == [1, 2]
    assert not list(served.glob("*/.tmp-*"))
