"""Exports in TF Serving's layout, and the embedded server answering the official stubs and REST."""

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stock_tf import as_lists, stock_answers

from crossrec import schema
from crossrec.errors import ConfigError
from serving.client import CrossrecClient, _history_inputs
from serving.layout import METADATA_FILE, next_version, versions
from serving.model_set import new_version

# --- layout ----------------------------------------------------------------------------------------


def test_a_failed_write_publishes_nothing_and_versions_are_immutable(tmp_path):
    model = tmp_path / "retrieval"
    with pytest.raises(RuntimeError), new_version(model) as (tmp, number):
        (tmp / "saved_model.pb").write_text("half")
        raise RuntimeError("crash while writing")
    assert versions(model) == [] and list(model.iterdir()) == []
    with new_version(model) as (tmp, number):
        (tmp / "saved_model.pb").write_text("x")
    assert number == 1 and versions(model) == [1] and next_version(model) == 2
    with pytest.raises(FileExistsError, match="immutable"), new_version(model, 1):
        pass


# --- export ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tiny_exported):
    return tiny_exported


def history_of(run, n=3):
    """(domain, item_id) histories and target domains of a few test queries."""
    examples = run.data.test[0].examples
    items = run.data.catalogue.items.set_index("row")
    histories, domains = [], []
    for i in range(n):
        rows = examples.history[i][examples.history[i] > 0]
        histories.append([(items.loc[r, schema.DOMAIN], items.loc[r, schema.ITEM_ID]) for r in rows])
        domains.append(run.data.catalogue.domains[examples.target_domain[i]])
    return examples.subset(np.arange(n)), histories, domains


def test_export_writes_each_model_as_version_1_with_metadata_and_named_signatures(exported):
    config, _, out, result = exported
    assert result.versions == {"retrieval": 1, "ranking": 1, "recommender": 1, "item_encoder": 1}
    for name in result.versions:
        assert versions(out / name) == [1]
        metadata = json.loads((out / name / "1" / "assets" / METADATA_FILE).read_text())
        assert metadata["model"] == name and metadata["config"]["towers"]["embedding_dim"] == 16
        assert metadata["data_fingerprint"]
        # no path of the training machine in a served artifact (the data is known by its fingerprint)
        assert config.encoder.preset and str(config.encoder.preset) not in json.dumps(metadata)
        assert str(config.encoder.cache_dir) not in json.dumps(metadata)
    retrieval = json.loads((out / "retrieval" / "1" / "assets" / METADATA_FILE).read_text())
    assert set(retrieval["signature"]["inputs"]) == {"history_item_ids", "history_domains", "target_domain", "k",
                                                     "exclude_history"}
    assert set(retrieval["signature"]["outputs"]) == {"item_ids", "scores", "history_known", "history_in_domain",
                                                      "because_item_ids", "because_domains", "because_weights"}
    assert retrieval["domains"] == ["books", "kitchen", "movies"]
    assert retrieval["index"]["kind"] == "brute_force" and retrieval["index"]["recall@10"] == 1.0
    assert retrieval["retrieval_metrics"]


def test_a_second_export_takes_the_next_version(exported, tiny_pipeline, tmp_path):
    from serving.export import export_models

    _, _, retrieval_dir, _ = tiny_pipeline
    shutil.copytree(exported[2] / "retrieval", tmp_path / "retrieval")
    result = export_models(retrieval_dir, tmp_path, models=["retrieval"], progress=False)
    assert result.versions == {"retrieval": 2} and versions(tmp_path / "retrieval") == [1, 2]


def test_exporting_the_recommender_without_a_ranker_is_a_clear_error(tiny_pipeline, tmp_path):
    from serving.export import export_models

    with pytest.raises(ConfigError, match="--ranking"):
        export_models(tiny_pipeline[2], tmp_path, models=["recommender"], progress=False)


def test_retrieval_signature_returns_the_exact_top_k_of_the_target_domain(exported):
    from towers.queries import query_embeddings

    config, run, out, _ = exported
    examples, histories, domains = history_of(run, 6)
    assert sum(1 for h in histories if h) >= 3
    serve = tf.saved_model.load(str(out / "retrieval" / "1")).signatures["serving_default"]
    result = serve(**{k: tf.constant(v) for k, v in _history_inputs(histories, domains).items()},
                   k=tf.constant([5] * len(domains)), exclude_history=tf.constant([True] * len(domains)))
    catalogue = run.data.catalogue
    embeddings = run.model.all_item_embeddings()
    queries = query_embeddings(run.model, examples)
    for i, domain in enumerate(domains):
        rows = np.flatnonzero(catalogue.item_domain_name == domain)
        rows = rows[~np.isin(rows, examples.history[i])]
        best = rows[np.argsort(-(embeddings[rows] @ queries[i]))[:5]]
        expected = catalogue.items.set_index("row").loc[best, schema.ITEM_ID].tolist()
        assert [b.decode() for b in result["item_ids"][i].numpy()] == expected
        history = examples.history[i][examples.history[i] > 0]
        assert result["history_known"][i] == len(history)
        assert result["history_in_domain"][i] == (catalogue.item_domain_name[history] == domain).sum()
        np.testing.assert_allclose(result["scores"][i].numpy(), np.sort(embeddings[best] @ queries[i])[::-1],
                                   rtol=1e-4, atol=1e-5)
        # the explanation: the history item closest to each recommended one, and its softmax share
        if not len(history):
            assert set(result["because_item_ids"][i].numpy()) == {b""}
            continue
        logits = embeddings[best] @ embeddings[history].T / config.train.temperature  # (k, h)
        closest = history[logits.argmax(axis=1)]
        share = np.exp(logits - logits.max(axis=1, keepdims=True))
        share = share.max(axis=1) / share.sum(axis=1)
        items = catalogue.items.set_index("row")
        assert [b.decode() for b in result["because_item_ids"][i].numpy()] == items.loc[closest, schema.ITEM_ID].tolist()
        assert [b.decode() for b in result["because_domains"][i].numpy()] == items.loc[closest, schema.DOMAIN].tolist()
        np.testing.assert_allclose(result["because_weights"][i].numpy(), share, rtol=1e-4, atol=1e-5)
    # a history of unknown items explains nothing
    unknown = serve(**{k: tf.constant(v) for k, v in _history_inputs([[("books", "nope")]], domains[:1]).items()},
                    k=tf.constant([3]), exclude_history=tf.constant([True]))
    assert unknown["because_item_ids"].numpy().tolist() == [[b"", b"", b""]]
    assert unknown["because_weights"].numpy().tolist() == [[0.0, 0.0, 0.0]]
    # the batch jobs' signature: the same answer without the explanations
    candidates = tf.saved_model.load(str(out / "retrieval" / "1")).signatures["candidates"]
    plain = candidates(**{k: tf.constant(v) for k, v in _history_inputs(histories, domains).items()},
                       k=tf.constant([5] * len(domains)), exclude_history=tf.constant([True] * len(domains)))
    assert sorted(plain) == ["history_in_domain", "history_known", "item_ids", "scores"]
    np.testing.assert_array_equal(plain["item_ids"].numpy(), result["item_ids"].numpy())


def test_brute_force_exports_load_with_tensorflow_alone(exported, tmp_path):
    """What stock tensorflow/serving can run: no crossrec, scann or tensorflow_text import."""
    _, run, out, _ = exported
    _, histories, domains = history_of(run, 1)
    inputs = as_lists(_history_inputs(histories, domains))
    asked = {"k": [3], "exclude_history": [True]}
    report = stock_answers(out, 1, {"retrieval": {**inputs, **asked}, "ranking": {**inputs, "candidate_item_ids": [["x"]]},
                                    "recommender": {**inputs, **asked}})
    assert report["loaded"] == []
    because = ["because_domains", "because_item_ids", "because_weights"]
    counts = ["history_in_domain", "history_known"]
    assert {name: sorted(outputs) for name, outputs in report["outputs"].items()} == {
        "retrieval": [*because, *counts, "item_ids", "scores"], "ranking": ["engagement", "rating"],
        "recommender": [*because, *counts, "item_ids", "retrieval_scores", "scores"]}


def test_a_copied_version_is_served_again_without_a_load_and_a_changed_copy_is_loaded(exported, tmp_path):
    from serving.models import ModelManager, ModelSpec, load_saved_model

    model = tmp_path / "saved_models" / "item_encoder"

    def copy(version: int, source: Path, **metadata) -> Path:
        shutil.copytree(source, model / str(version))
        path = model / str(version) / "assets" / METADATA_FILE
        values = {k: v for k, v in json.loads(path.read_text()).items() if k != "set"}  # this model alone
        path.write_text(json.dumps({**values, "version": version, **metadata}))
        return model / str(version)

    copy(1, exported[2] / "item_encoder" / "1")
    loads = []
    manager = ModelManager([ModelSpec("item_encoder", model)],
                           loader=lambda name, version, path: loads.append(version) or load_saved_model(name, version,
                                                                                                         path))
    manager.poll()
    first = manager.get("item_encoder")
    copy(2, model / "1", copied_from=1)
    manager.poll()
    second = manager.get("item_encoder")
    assert second.version == 2 and second.module is first.module and loads == [1]
    assert second.metadata["copied_from"] == 1 and manager.served_versions() == {"item_encoder": [2]}
    # the metadata's word is not enough: a copy whose files differ is loaded
    (copy(3, model / "2", copied_from=2) / "assets" / "note.txt").write_text("changed")
    manager.poll()
    assert manager.get("item_encoder").version == 3 and loads == [1, 3]


# --- the embedded server -----------------------------------------------------------------------------

@pytest.fixture
def server(exported, tmp_path):
    from serving.models import ModelManager, ModelSpec
    from serving.server import Server, ServerOptions, free_port

    root = tmp_path / "saved_models"
    shutil.copytree(exported[2], root)
    manager = ModelManager([ModelSpec(name, root / name) for name in
                            ("retrieval", "ranking", "recommender", "item_encoder")])
    server = Server(manager, ServerOptions(port=0, rest_api_port=free_port(), poll_seconds=0.2)).start()
    yield server, root
    server.stop()


def rest(server, path, body=None):
    url = f"http://127.0.0.1:{server.rest_port}{path}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def assert_serves_in_order(model_dir, catalogue, lists, scores, k: int = 5) -> list:
    """Asks the ``recommender`` in ``model_dir`` each list's query and checks that it answers the
    list's candidates in the order of ``scores`` (the evaluator's served order); returns the
    signature and each answer."""
    scores = np.where(lists.candidates > 0, scores, -np.inf)
    expected = np.take_along_axis(lists.candidates, np.argsort(-scores, axis=1, kind="stable"), 1)
    items = catalogue.items.set_index("row")
    served = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    examples, answers = lists.examples, []
    for i in range(len(examples)):
        history = examples.history[i][examples.history[i] > 0]
        answer = served(history_item_ids=tf.constant([items.loc[history, schema.ITEM_ID].tolist()]),
                        history_domains=tf.constant([items.loc[history, schema.DOMAIN].tolist()]),
                        target_domain=tf.constant([catalogue.domains[examples.target_domain[i]]]),
                        k=tf.constant([k]), exclude_history=tf.constant([True]))
        got = [b.decode() for b in answer["item_ids"][0].numpy() if b]
        assert got == items.loc[expected[i, :len(got)], schema.ITEM_ID].tolist()
        answers.append(answer)
    return [served, *answers]


def test_the_recommender_merges_the_sources_and_ranks_like_the_in_process_pipeline(exported, tiny_pipeline):
    from ranking.mining import candidate_lists, text_vectors
    from ranking.run_folder import load_ranking
    from ranking.scoring import served_order
    from ranking.served_list import ServedListSpec
    from ranking.tables import build_tables

    config, run, out, _ = exported
    _, student, _ = load_ranking(tiny_pipeline[3])
    data = run.data
    tables = build_tables(data.train, data.catalogue, run.model.all_item_embeddings(), text_vectors(run.model),
                          sources=config.ranking.sources, per_domain=config.ranking.source_neighbours)
    examples = data.test[0].examples
    fresh = np.array([t not in h and (h > 0).any() for t, h in zip(examples.target, examples.history, strict=True)])
    examples = examples.subset(np.flatnonzero(fresh)[:8])
    lists = candidate_lists(run.model, examples, tables, data.catalogue, config.ranking)
    assert (lists.candidates[:, config.ranking.candidates:] > 0).any()  # the sources added candidates
    spec = ServedListSpec.stored(json.loads((tiny_pipeline[3] / "ranking_spec.json").read_text()), config)
    scores = served_order(student, lists, tables, spec)  # new items at the towers' place
    served = assert_serves_in_order(out / "recommender" / "1", data.catalogue, lists, scores)[0]
    # a brand-new user known by items the model has never seen: the towers still answer, the sources add nothing
    domain = data.catalogue.domains[examples.target_domain[0]]
    answer = served(history_item_ids=tf.constant([["never-seen-1", "never-seen-2"]]),
                    history_domains=tf.constant([[domain, domain]]), target_domain=tf.constant([domain]),
                    k=tf.constant([5]), exclude_history=tf.constant([True]))
    assert all(answer["item_ids"][0].numpy()) and answer["history_known"].numpy().tolist() == [0]


def test_grpc_answers_equal_in_process_calls_of_the_signatures(exported, server):
    _, run, out, _ = exported
    srv, _ = server
    _, histories, domains = history_of(run, 1)
    local = {name: tf.saved_model.load(str(out / name / "1")).signatures["serving_default"]
             for name in ("recommender", "ranking", "item_encoder")}
    inputs = {k: tf.constant(v) for k, v in _history_inputs(histories, domains).items()}
    with CrossrecClient(f"127.0.0.1:{srv.port}") as client:
        recommended = client.recommend(histories[0], domains[0], k=5)
        expected = local["recommender"](**inputs, k=tf.constant([5]), exclude_history=tf.constant([True]))
        assert [r["item_id"] for r in recommended] == [b.decode() for b in expected["item_ids"][0].numpy() if b]
        np.testing.assert_allclose([r["score"] for r in recommended], expected["scores"][0].numpy()[:len(recommended)],
                                   rtol=1e-5)
        retrieved = client.retrieve(histories[0], domains[0], k=7)
        assert len(retrieved) == 7 and all(a["score"] >= b["score"] for a, b in zip(retrieved, retrieved[1:], strict=False))
        candidates = [r["item_id"] for r in retrieved]
        ranked = client.rank(histories[0], domains[0], candidates)
        expected = local["ranking"](**inputs, candidate_item_ids=tf.constant([candidates]))
        np.testing.assert_allclose([r["engagement"] for r in ranked], expected["engagement"][0].numpy(), rtol=1e-5)
        vectors = client.encode_items(["a brand new kettle", "a film about comets"], ["kitchen", "movies"])
        expected = local["item_encoder"](text=tf.constant(["a brand new kettle", "a film about comets"]),
                                         domain=tf.constant(["kitchen", "movies"]))
        np.testing.assert_allclose(vectors, expected["embedding"].numpy(), rtol=1e-5, atol=1e-6)
        assert client.status("recommender") == [{"version": 1, "state": "AVAILABLE", "error": ""}]
        signatures = client.metadata("retrieval")
        assert set(signatures.signature_def["serving_default"].inputs) == {
            "history_item_ids", "history_domains", "target_domain", "k", "exclude_history"}
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


def test_grpc_errors_are_tf_serving_status_codes_naming_the_field(exported, server):
    _, run, _, _ = exported
    srv, _ = server
    _, histories, domains = history_of(run, 1)
    base = _history_inputs(histories, domains)
    good = {**base, "k": np.array([3], np.int32), "exclude_history": np.array([True])}
    cases = [
        ("nope", good, None, grpc.StatusCode.NOT_FOUND, "nope"),
        ("retrieval", good, 9, grpc.StatusCode.NOT_FOUND, "9"),
        ("retrieval", {k: v for k, v in good.items() if k != "k"}, None, grpc.StatusCode.INVALID_ARGUMENT, "'k'"),
        ("retrieval", {**good, "extra": np.array([1])}, None, grpc.StatusCode.INVALID_ARGUMENT, "extra"),
        ("retrieval", {**good, "k": np.array([3.0], np.float32)}, None, grpc.StatusCode.INVALID_ARGUMENT,
         "'k': expects dtype int32"),
        ("retrieval", {**good, "target_domain": np.array([[b"books"]], dtype=object)}, None,
         grpc.StatusCode.INVALID_ARGUMENT, "'target_domain': expects shape"),
        ("retrieval", {**good, "k": np.array([1000], np.int32)}, None, grpc.StatusCode.INVALID_ARGUMENT,
         "k: must be at most 20"),
        ("retrieval", {**good, "target_domain": np.array([b"toys"], dtype=object)}, None,
         grpc.StatusCode.INVALID_ARGUMENT, "unknown domain; known domains: books"),
        ("recommender", {**good, "target_domain": np.array([b"toys"], dtype=object)}, None,
         grpc.StatusCode.INVALID_ARGUMENT, "unknown domain; known domains: books"),
    ]
    with CrossrecClient(f"127.0.0.1:{srv.port}") as client:
        for model, inputs, version, code, message in cases:
            with pytest.raises(grpc.RpcError) as error:
                client.predict(model, inputs, version=version)
            assert error.value.code() == code, (model, message, error.value.details())
            assert message in error.value.details()
        assert client.retrieve(histories[0], domains[0], k=3)  # the server survived every bad request


def test_rest_api_on_tf_serving_paths(exported, server):
    _, run, _, _ = exported
    srv, _ = server
    _, histories, domains = history_of(run, 1)
    instance = {"history_item_ids": [item for _, item in histories[0]],
                "history_domains": [domain for domain, _ in histories[0]], "target_domain": domains[0]}
    status, body = rest(srv, "/v1/models/retrieval:predict", {"instances": [{**instance, "k": 4, "exclude_history": True}]})
    assert status == 200 and len(body["predictions"][0]["item_ids"]) == 4
    with CrossrecClient(f"127.0.0.1:{srv.port}") as client:
        assert [r["item_id"] for r in client.retrieve(histories[0], domains[0], k=4)] == \
            body["predictions"][0]["item_ids"]
    columnar = {k: [v] for k, v in instance.items()}
    status, body = rest(srv, "/v1/models/retrieval/versions/1:predict",
                        {"inputs": {**columnar, "k": [2], "exclude_history": [True]}})
    assert status == 200 and len(body["outputs"]["item_ids"][0]) == 2
    assert rest(srv, "/v1/models/retrieval") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    status, body = rest(srv, "/v1/models/retrieval/metadata")
    assert status == 200 and "serving_default" in body["metadata"]["signature_def"]["signature_def"]
    assert rest(srv, "/v1/models/nope:predict", {"instances": [instance]})[0] == 404
    status, body = rest(srv, "/v1/models/retrieval:predict", {"instances": [{**instance, "k": 500,
                                                                             "exclude_history": True}]})
    assert status == 400 and "k: must be at most" in body["error"]
    status, body = rest(srv, "/v1/models/retrieval:predict", {"instances": [instance]})
    assert status == 400 and "missing input(s) ['k']" in body["error"]  # exclude_history has a default
    # exclude_history left out: True, as CrossrecClient sends it (row and columnar formats)
    with_it = rest(srv, "/v1/models/retrieval:predict", {"instances": [{**instance, "k": 4, "exclude_history": True}]})
    without = rest(srv, "/v1/models/retrieval:predict", {"instances": [{**instance, "k": 4}]})
    assert without == with_it and without[0] == 200
    status, body = rest(srv, "/v1/models/retrieval:predict", {"inputs": {**columnar, "k": [2]}})
    assert status == 200 and len(body["outputs"]["item_ids"][0]) == 2


def test_a_new_version_switches_in_under_load_with_zero_failed_requests(exported, server):
    _, run, _, _ = exported
    srv, root = server
    _, histories, domains = history_of(run, 1)
    failures, served_versions, stop = [], set(), threading.Event()

    def hammer():
        with CrossrecClient(f"127.0.0.1:{srv.port}") as client:
            inputs = {**_history_inputs(histories, domains), "k": np.array([3], np.int32),
                      "exclude_history": np.array([True])}
            while not stop.is_set():
                try:
                    client.predict("retrieval", inputs)
                    served_versions.add(srv.manager.get("retrieval").version)
                except Exception as exc:  # any failure fails the test
                    failures.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    # publish version 2 the way `crossrec export` does: written aside, renamed into place
    with new_version(root / "retrieval") as (tmp, number):
        shutil.copytree(root / "retrieval" / "1", tmp, dirs_exist_ok=True)
    deadline = time.time() + 30
    while srv.manager.get("retrieval").version != 2 and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert number == 2 and srv.manager.get("retrieval").version == 2 and served_versions >= {2}
    states = {v: s.state for v, s in srv.manager.status("retrieval").items()}
    assert states == {1: "END", 2: "AVAILABLE"}  # the old version was unloaded after the switch


def test_a_broken_version_is_logged_and_never_replaces_the_good_one(server, caplog):
    srv, root = server
    broken = root / "retrieval" / "2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a saved model")
    srv.manager.poll()
    assert srv.manager.get("retrieval").version == 1
    status = srv.manager.status("retrieval")
    assert status[2].state == "END" and status[2].error
    assert "failed to load" in caplog.text
    with CrossrecClient(f"127.0.0.1:{srv.port}") as client:
        assert client.status("retrieval")[1]["error"]


def test_each_version_carries_tf_serving_warmup_requests_replayed_before_it_serves(exported, server):
    from tensorflow_serving.apis import prediction_log_pb2

    from serving.warmup import BATCH_SIZES, warmup_path

    _, _, out, _ = exported
    srv, root = server
    for name in ("retrieval", "ranking", "recommender", "item_encoder"):
        records = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
                   for r in tf.data.TFRecordDataset(str(warmup_path(out / name / "1")))]
        assert len(records) == 3 * len(BATCH_SIZES)  # every served domain, one row and a batch
        assert all(r.WhichOneof("log_type") == "predict_log" for r in records)
        assert srv.manager.get(name).warmup_requests == len(records)
    # a version whose warm-up request fails does not load; the good one keeps serving
    with new_version(root / "retrieval") as (tmp, number):
        shutil.copytree(root / "retrieval" / "1", tmp, dirs_exist_ok=True)
        path = warmup_path(tmp)
        request = prediction_log_pb2.PredictionLog.FromString(next(iter(tf.data.TFRecordDataset(str(path)))).numpy())
        request.predict_log.request.inputs["k"].CopyFrom(tf.make_tensor_proto(np.array([0], np.int32)))
        with tf.io.TFRecordWriter(str(path)) as writer:
            writer.write(request.SerializeToString())
    srv.manager.poll()
    status = srv.manager.status("retrieval")
    assert srv.manager.get("retrieval").version == 1 and status[number].state == "END"
    assert "k: must be at least 1" in status[number].error


def test_export_serve_and_query_from_the_command_line(tiny_pipeline, tmp_path, capsys):
    from crossrec.cli import main
    from serving.server import free_port

    config, run, retrieval_dir, ranking_dir = tiny_pipeline
    out = tmp_path / "saved_models"
    assert main(["export", "--retrieval", str(retrieval_dir), "--ranking", str(ranking_dir), "--out", str(out),
                 "--max-k", "20", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "recommender: version 1" in printed and "models.config" in printed
    assert "item_encoder" not in (out / "models.config").read_text().split("model_config_list")[1]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "crossrec", "serve", "--model_base_path", str(out),
                               "--port", str(port), "--rest_api_port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        while "Ctrl-C stops" not in line:
            line = server.stdout.readline()
            assert line or server.poll() is None, "crossrec serve exited"
        _, histories, domains = history_of(run, 6)
        history, domain = next((h, d) for h, d in zip(histories, domains, strict=True) if h)
        flags = [f"--history={d}:{i}" for d, i in history]
        assert main(["query", "--server", f"127.0.0.1:{port}", "--domain", domain, "--k", "3", *flags]) == 0
        printed = capsys.readouterr()
        lines = [x for x in printed.out.splitlines() if x.strip()]
        assert lines[0].startswith("score: the ranker's engagement logit")  # what the number means
        assert len(lines) == 4 and lines[1].strip().startswith("1.")
        assert all(" because of " in x for x in lines[1:])  # the served explanation
        assert "note:" not in printed.err  # every history item known: nothing to say
        # with the items table, titles beside the ids
        items = tmp_path / "items.csv"
        run.data.catalogue.items.assign(title=lambda f: "Title of " + f["item_id"].astype(str)).to_csv(items, index=False)
        assert main(["query", "--server", f"127.0.0.1:{port}", "--domain", domain, "--k", "3", *flags,
                     "--items", str(items)]) == 0
        assert "Title of " in capsys.readouterr().out.splitlines()[1]
        # unknown ids are said to be unknown, not served silently as if they were a history
        assert main(["query", "--server", f"127.0.0.1:{port}", "--domain", domain, "--k", "3",
                     f"--history={domain}:no-such-item", f"--history={domain}:nor-this-one"]) == 0
        assert "none of the 2 history items is known to the model" in capsys.readouterr().err
        assert main(["query", "--server", f"127.0.0.1:{port}", "--domain", "toys", "--k", "3"]) == 2
        assert "INVALID_ARGUMENT" in capsys.readouterr().err
        # one feed across every domain, over gRPC (the recommender's feed signature)
        assert main(["query", "--server", f"127.0.0.1:{port}", "--feed", "--k", "8", "--diversity", "0.3",
                     "--calibration", "1", *flags]) == 0
        lines = [x for x in capsys.readouterr().out.splitlines() if x.strip()]
        if lines[1].startswith("order: the served order"):  # the picks are not in score order: it says why
            assert "diversity and calibration" in lines.pop(1)
        assert lines[0].startswith("score: the probability") and len(lines) == 9
        assert len({x.split()[1].split(":")[0] for x in lines[1:]}) > 1  # DOMAIN:ITEM_ID from several domains
        assert main(["query", "--server", f"127.0.0.1:{port}", "--feed", "--diversity", "2", *flags]) == 2
        assert "diversity: must be a number from 0 to 1" in capsys.readouterr().err
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_scann_index_finds_nearly_the_exact_top_k(tiny_pipeline):
    from serving.index import DomainIndex

    _, run, _, _ = tiny_pipeline
    catalogue, embeddings = run.data.catalogue, run.model.all_item_embeddings()
    queries = tf.constant(embeddings[1:33] + 0.01)
    target, none = tf.constant(catalogue.item_domain[1:33]), tf.zeros([32, 1], tf.int32)
    exact = DomainIndex(catalogue, embeddings, k=5, history_length=0)
    approximate = DomainIndex(catalogue, embeddings, k=5, history_length=0, kind="scann", scann_min_items=10,
                              scann={"leaves": 4, "leaves_to_search": 4, "reorder": 40})
    assert approximate.parameters["domains"]["books"]["index"] == "scann"
    _, a = approximate.search(queries, target, none, 5)
    _, b = exact.search(queries, target, none, 5)
    recall = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(a.numpy(), b.numpy(), strict=True)])
    assert recall >= 0.95  # every leaf searched, every candidate re-scored: nearly exact
    # offline measurements ask more queries than one ScaNN request may hold: in chunks
    many = np.repeat(embeddings[1:3] + 0.01, 300, axis=0)
    assert approximate.rows_for(many, catalogue.domain_names.index("books") + 1, 5).shape == (600, 5)


def test_domains_smaller_than_max_k_export_and_return_what_they_have(tiny_pipeline, tmp_path):
    from dataclasses import replace

    from serving.export import export_models

    config, run, retrieval_dir, _ = tiny_pipeline
    big_k = replace(config, export=replace(config.export, max_k=100))  # each tiny domain has 40 items
    export_models(retrieval_dir, tmp_path, config=big_k, models=["retrieval"], progress=False)
    serve = tf.saved_model.load(str(tmp_path / "retrieval" / "1")).signatures["serving_default"]
    _, histories, domains = history_of(run, 1)
    out = serve(**{k: tf.constant(v) for k, v in _history_inputs(histories, domains).items()},
                k=tf.constant([100]), exclude_history=tf.constant([False]))
    found = [i for i in out["item_ids"][0].numpy() if i]
    assert len(found) == 40 and len(set(found)) == 40


@pytest.mark.parametrize("array", [
    np.array([[1.5, -2.0]], np.float32), np.array([3, -4], np.int32), np.array([[5]], np.int64),
    np.array([True, False]), np.array([[b"a", b""], [b"\xff", b"x" * 300]], dtype=object),
    np.array(["caf\u00e9", "b"]), np.zeros((0, 3), np.float32), np.array(7, np.int32), np.array([1, 2], np.float16)])
def test_tensor_protos_written_directly_read_back_as_tensorflow_writes_them(array):
    from serving.client import tensor_proto

    proto = tensor_proto(array)
    reference = tf.make_tensor_proto(array)
    assert proto.dtype == reference.dtype and proto.tensor_shape == reference.tensor_shape
    np.testing.assert_array_equal(tf.make_ndarray(proto), tf.make_ndarray(reference))


def test_the_served_config_withholds_every_path():
    from crossrec.config import Config, DataConfig, EncoderConfig
    from serving.export import served_config

    config = Config(data=DataConfig(interactions="/srv/private/interactions.parquet", items="/srv/private/items.csv",
                                    amazon_files={"arts": {"reviews": "/srv/a.jsonl"}}),
                    encoder=EncoderConfig(preset="/home/me/presets/minilm", cache_dir="/home/me/.cache/crossrec"))
    text = json.dumps(served_config(config))
    assert "/srv/" not in text and "/home/me" not in text
    assert served_config(config)["encoder"]["preset"] == "minilm"
    assert config.data.interactions == "/srv/private/interactions.parquet"  # the caller's config unchanged
