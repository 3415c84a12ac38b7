"""Each defect the hardening issue found, with the test that failed before its fix: requests
bounded before any work, errors that name the field, REST on a real HTTP stack, TLS, the model
manager and the export layout."""

import json
import resource
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from crossrec import schema
from crossrec.errors import ConfigError
from serving.client import predict_request
from serving.layout import METADATA_FILE, versions
from serving.limits import RequestLimits
from serving.model_set import new_version
from serving.models import AVAILABLE, END, ModelManager, ModelSpec, wait_until_ready
from serving.predictor import version_status
from serving.server import Server, ServerOptions, free_port

MODELS = ("retrieval", "ranking", "recommender", "item_encoder")


@pytest.fixture(scope="module")
def hard(tiny_exported, tmp_path_factory):
    """A server over a copy of the tiny export, small batch limits; (server, root, a known item)."""
    root = tmp_path_factory.mktemp("hardening") / "saved_models"
    shutil.copytree(tiny_exported[2], root)
    manager = ModelManager([ModelSpec(name, root / name) for name in MODELS])
    limits = RequestLimits(max_batch_size=64, per_model={"item_encoder": 16})
    server = Server(manager, ServerOptions(port=0, rest_api_port=free_port(), poll_seconds=0.2,
                                           limits=limits)).start()
    assert wait_until_ready(manager)
    item = tiny_exported[1].data.catalogue.items.iloc[0]
    yield server, root, (str(item[schema.DOMAIN]), str(item[schema.ITEM_ID]))
    server.stop()


def retrieval_inputs(item, rows=1, k=5):
    domain, item_id = item
    return {"history_item_ids": np.array([[item_id]] * rows, object),
            "history_domains": np.array([[domain]] * rows, object),
            "target_domain": np.array([domain] * rows, object), "k": np.full(rows, k, np.int32),
            "exclude_history": np.ones(rows, bool)}


def predict(server, model, inputs, timeout=30):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(predict_request(model, inputs),
                                                                                  timeout=timeout)


def grpc_error(server, model, inputs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        predict(server, model, inputs)
    return info.value.code(), info.value.details()


# --- 1. bounded before any work ----------------------------------------------------------------------

@pytest.mark.parametrize("k", [2**31 - 1, 10**9])
def test_an_absurd_k_is_refused_by_the_server_and_the_graph_allocates_nothing_for_it(hard, k):
    server, root, item = hard
    code, message = grpc_error(server, "retrieval", retrieval_inputs(item, k=k))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "k: must be at most 20" in message
    # the signature alone (as stock TF Serving runs it): before, tf.range(k) took 8 GB
    model = tf.saved_model.load(str(root / "retrieval" / "1"))
    inputs = {key: tf.constant(v) for key, v in retrieval_inputs(item, k=k).items()}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(tf.errors.InvalidArgumentError, match="k: must be at most 20"):
        model.signatures["serving_default"](**inputs)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB


@pytest.mark.parametrize("width", [501, 100_000])
def test_ranking_candidates_are_bounded_by_the_export_before_any_work(hard, width):
    """[1, 100000] candidates (one "" value, 186 bytes) grew the server past 8 GB: the ranker's
    list ranks are candidates squared. The export fixes max_candidates (500 by default) and the
    signature refuses more before anything is computed."""
    server, root, item = hard
    inputs = {**{k: v for k, v in retrieval_inputs(item).items() if k not in ("k", "exclude_history")},
              "candidate_item_ids": np.full((1, width), "", object)}
    code, message = grpc_error(server, "ranking", inputs)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "candidate_item_ids: at most 500 candidates" in message
    metadata = json.loads((root / "ranking" / "1" / "assets" / METADATA_FILE).read_text())
    assert metadata["max_candidates"] == 500
    model = tf.saved_model.load(str(root / "ranking" / "1"))  # as stock TF Serving runs it
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(tf.errors.InvalidArgumentError, match="at most 500 candidates"):
        model.signatures["serving_default"](**{key: tf.constant(v) for key, v in inputs.items()})
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB
    ok = {**inputs, "candidate_item_ids": np.array([[item[1]] * 3], object)}
    assert predict(server, "ranking", ok).outputs["engagement"].tensor_shape.dim[1].size == 3


def test_batch_sizes_are_capped_per_model(hard):
    server, _, item = hard
    code, message = grpc_error(server, "item_encoder", {"text": np.array(["a mug"] * 17, object),
                                                        "domain": np.array([item[0]] * 17, object)})
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "batch of 17 rows exceeds the limit of 16" in message
    assert "--max_batch_size" in message
    assert predict(server, "item_encoder", {"text": np.array(["a mug"] * 16, object),
                                            "domain": np.array([item[0]] * 16, object)}).outputs["embedding"]
    code, message = grpc_error(server, "retrieval", retrieval_inputs(item, rows=65))
    assert "batch of 65 rows exceeds the limit of 64 for model 'retrieval'" in message


def _string_proto(dims, values):
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=values, tensor_shape=tensor_shape_pb2.
                                  TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]))


def test_negative_and_enormous_declared_shapes_are_refused_before_reading(hard):
    server, _, item = hard
    inputs = retrieval_inputs(item)
    code, message = grpc_error(server, "retrieval", {**inputs, "target_domain": _string_proto([-1], [b"x"])})
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "negative dimension" in message
    started = time.perf_counter()
    code, message = grpc_error(server, "retrieval", {**inputs, "history_item_ids": _string_proto([1, 10**9], [b"x"])})
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "more than the 1000000 values" in message
    assert time.perf_counter() - started < 5


def test_long_strings_are_refused(hard):
    server, _, item = hard
    inputs = {"text": np.array(["x" * 70_000], object), "domain": np.array([item[0]], object)}
    code, message = grpc_error(server, "item_encoder", inputs)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "--max_string_bytes" in message


# --- 6. errors that name the field --------------------------------------------------------------------

def test_an_empty_batch_and_mismatched_widths_name_the_field(hard):
    server, _, item = hard
    empty = {"history_item_ids": np.zeros((0, 1), object), "history_domains": np.zeros((0, 1), object),
             "target_domain": np.zeros(0, object), "k": np.zeros(0, np.int32), "exclude_history": np.zeros(0, bool)}
    code, message = grpc_error(server, "retrieval", empty)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "the batch is empty" in message
    inputs = retrieval_inputs(item)
    inputs["history_domains"] = np.array([[item[0], item[0]]], object)
    code, message = grpc_error(server, "retrieval", inputs)
    assert "history_item_ids and history_domains: must have the same shape" in message
    code, message = grpc_error(server, "item_encoder", {"text": np.zeros(0, object), "domain": np.zeros(0, object)})
    assert "the batch is empty" in message
    # a domain no model serves: item_encoder refuses it like the others (its vector could not be searched)
    code, message = grpc_error(server, "item_encoder", {"text": np.array(["a mug", "a film"], object),
                                                        "domain": np.array([item[0], "gardening"], object)})
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "domain: unknown domain; known domains:" in message
    # the signatures check it themselves, before any other op (as stock TF Serving runs them)
    model = tf.saved_model.load(str(hard[1] / "retrieval" / "1"))
    for _ in range(20):  # op order inside a graph varies: the check must come first every time
        with pytest.raises(tf.errors.InvalidArgumentError, match="target_domain: the batch is empty"):
            model.signatures["serving_default"](**{key: tf.constant(v) for key, v in empty.items()})


# --- 3. REST ------------------------------------------------------------------------------------------

def raw_http(port, head: bytes, body: bytes = b"", timeout=10.0, tls=False) -> tuple[int, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        sock = context.wrap_socket(sock)
    with sock:
        sock.sendall(head + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < _expected_length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def _expected_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return 0


def post(port, path, body: bytes, extra=b""):
    head = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + extra)
    return raw_http(port, head, body)


def rest_instance(item, **changes):
    domain, item_id = item
    return {"history_item_ids": [item_id], "history_domains": [domain], "target_domain": domain, "k": 3,
            "exclude_history": True, **changes}


@pytest.mark.parametrize("body, status, says", [
    (b"\xff\xfe{}", 400, "not UTF-8"),
    (b"[" * 100_000, 400, "nests too deeply"),
    (b'{"instances": [1, 2]}', 400, "must be objects"),
    (b'{"signature_name": ["a"], "instances": [{}]}', 400, "signature_name"),
])
def test_rest_bodies_that_are_not_requests_are_json_400s(hard, body, status, says):
    server, _, _ = hard
    code, payload = post(server.rest_port, "/v1/models/retrieval:predict", body)
    assert code == status and says in json.loads(payload)["error"]


@pytest.mark.parametrize("change, says", [
    ({"k": "5"}, "expected an integer"), ({"k": 5.5}, "expected an integer"), ({"k": True}, "expected an integer"),
    ({"k": 10**30}, "out of range"), ({"exclude_history": 1}, "expected true or false"),
    ({"history_item_ids": [{"b64": "!!!not base64"}]}, "not valid base64"),
])
def test_rest_values_must_have_their_inputs_type(hard, change, says):
    server, _, item = hard
    body = json.dumps({"instances": [rest_instance(item, **change)]}).encode()
    code, payload = post(server.rest_port, "/v1/models/retrieval:predict", body)
    assert code == 400 and says in json.loads(payload)["error"]


def test_rest_ragged_rows_and_huge_versions_are_400s_and_unknown_methods_405(hard):
    server, _, item = hard
    body = {"inputs": {**{k: [v] for k, v in rest_instance(item).items()},
                       "history_item_ids": [[item[1]], [item[1], item[1]]]}}
    code, payload = post(server.rest_port, "/v1/models/retrieval:predict", json.dumps(body).encode())
    assert code == 400 and "rows of different lengths" in json.loads(payload)["error"]
    code, payload = raw_http(server.rest_port, b"GET /v1/models/retrieval/versions/" + b"9" * 5000 +
                             b" HTTP/1.1\r\nHost: x\r\nConnection: close")
    assert code == 400 and "version" in json.loads(payload)["error"]
    for method in (b"PUT", b"DELETE", b"PATCH"):
        code, payload = raw_http(server.rest_port, method + b" /v1/models/retrieval HTTP/1.1\r\nHost: x\r\n"
                                 b"Connection: close\r\nContent-Length: 0")
        assert code == 405 and "not allowed" in json.loads(payload)["error"]


def test_rest_get_on_predict_is_405_with_allow_post(hard):
    """TF Serving and the README answer GET :predict with 405 (it once answered 400)."""
    server, _, _ = hard
    code, payload = raw_http(server.rest_port, b"GET /v1/models/retrieval:predict HTTP/1.1\r\nHost: x\r\n"
                             b"Connection: close")
    assert code == 405 and "use POST" in json.loads(payload)["error"]


def test_rest_lengths_are_checked_before_the_body_is_read(hard, monkeypatch):
    import serving.rest

    server, _, item = hard
    port = server.rest_port
    head = b"POST /v1/models/retrieval:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "
    code, payload = raw_http(port, head + b"100000000")  # 100 MB announced, nothing sent
    assert code == 413 and "exceeds the limit" in json.loads(payload)["error"]
    assert raw_http(port, head + b"-1")[0] == 400
    assert raw_http(port, head + b"twelve")[0] == 400
    # a body shorter than its Content-Length: answered when the read times out; others are served meanwhile
    monkeypatch.setattr(serving.rest, "BODY_READ_SECONDS", 1.0)
    slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    slow.sendall(head + b"1000\r\n\r\n{")
    body = json.dumps({"instances": [rest_instance(item)]}).encode()
    assert post(port, "/v1/models/retrieval:predict", body)[0] == 200
    answer = b""
    while chunk := slow.recv(65536):
        answer += chunk
    slow.close()
    assert b" 504 " in answer.split(b"\r\n")[0] and b"did not arrive" in answer


# --- 4. TLS --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")], check=True,
                   capture_output=True)
    return str(folder / "cert.pem"), str(folder / "key.pem")


def test_a_swapped_or_garbage_certificate_says_so(certificate, tmp_path):
    """It once said "gRPC port ... is not available; is another server running?"."""
    cert, key = certificate
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    for cert_file, key_file in ((key, cert), (str(garbage), key)):
        options = ServerOptions(port=0, rest_api_port=0, ssl_cert_file=cert_file, ssl_key_file=key_file)
        with pytest.raises(ConfigError, match="are not a certificate and its private key") as error:
            options.check_tls()
        assert "another server" not in str(error.value)


def test_tls_needs_both_files_and_refuses_missing_ones(certificate, tmp_path):
    cert, key = certificate
    for options, says in [(dict(ssl_cert_file=cert), "--ssl_cert_file needs --ssl_key_file"),
                          (dict(ssl_key_file=key), "--ssl_key_file needs --ssl_cert_file"),
                          (dict(ssl_cert_file=str(tmp_path / "no.pem"), ssl_key_file=key), "file not found")]:
        with pytest.raises(ConfigError, match=says):
            Server(ModelManager([]), ServerOptions(port=0, rest_api_port=free_port(), **options)).start()


def test_an_idle_connection_blocks_no_https_client(certificate):
    cert, key = certificate
    server = Server(ModelManager([]), ServerOptions(port=0, rest_api_port=free_port(), ssl_cert_file=cert,
                                                    ssl_key_file=key)).start()
    try:
        idle = socket.create_connection(("127.0.0.1", server.rest_port))  # never says hello
        started = time.perf_counter()
        code, payload = raw_http(server.rest_port, b"GET /v1/models/nope HTTP/1.1\r\nHost: x\r\nConnection: close",
                                 tls=True, timeout=5)
        assert code == 404 and time.perf_counter() - started < 5
        idle.close()
    finally:
        server.stop()


# --- 5. the model manager and the layout ---------------------------------------------------------------

def test_a_port_in_use_is_refused_loudly():
    first = Server(ModelManager([]), ServerOptions(port=0, rest_api_port=free_port())).start()
    try:
        with pytest.raises(ConfigError, match="gRPC port .* is not available"):
            Server(ModelManager([]), ServerOptions(port=first.port, rest_api_port=free_port())).start()
        with pytest.raises(ConfigError, match="REST port .* is not available"):
            Server(ModelManager([]), ServerOptions(port=0, rest_api_port=first.rest_port)).start()
    finally:
        first.stop()


def _fake_loader(name, version, path):
    text = (path / "saved_model.pb").read_text()
    if text != "complete":
        raise ValueError(f"truncated SavedModel in {path}")
    return object()


def test_a_failed_version_loads_once_completed_in_place_and_deleted_versions_leave_the_status(tmp_path):
    base = tmp_path / "m"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_text("half")
    manager = ModelManager([ModelSpec("m", base, labels={"stable": 1})], loader=_fake_loader)
    manager.poll()
    status = manager.status("m")[1]
    assert status.state == END and "truncated SavedModel" in status.error
    assert str(tmp_path) not in status.error  # no server path in what clients see
    time.sleep(0.01)
    (base / "1" / "saved_model.pb").write_text("complete")  # the folder's own mtime need not change
    manager.poll()
    assert manager.status("m")[1].state == AVAILABLE
    assert list(version_status(manager, "m", None, "stable")) == [1]
    with pytest.raises(Exception, match="Unrecognized servable version label"):
        version_status(manager, "m", None, "canary")
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_text("half")
    manager.poll()
    assert manager.status("m")[2].state == END
    shutil.rmtree(base / "2")
    manager.poll()
    assert sorted(manager.status("m")) == [1]


def test_a_failed_version_is_retried_after_the_interval(tmp_path):
    base = tmp_path / "m"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_text("half")
    calls = []

    def loader(name, version, path):
        calls.append(version)
        raise OSError("disk busy")

    manager = ModelManager([ModelSpec("m", base)], loader=loader, retry_seconds=0.0, max_load_retries=2)
    for _ in range(5):
        manager.poll()
    assert len(calls) == 3  # the first try and two retries, then it waits for a change


def test_interrupted_exports_leave_no_temporary_folder_behind(tmp_path):
    model = tmp_path / "retrieval"
    model.mkdir()
    dead = model / ".tmp-3-999999999-abc"  # an export killed mid-write (no such process)
    dead.mkdir()
    with new_version(model) as (tmp, number):
        (tmp / "saved_model.pb").write_text("x")
    assert not dead.exists() and versions(model) == [1]
    assert [p.name for p in model.iterdir()] == ["1"]


def test_models_config_is_replaced_in_one_step(tmp_path):
    from serving.export import write_model_config

    (tmp_path / "retrieval" / "1").mkdir(parents=True)
    path = write_model_config(tmp_path)
    assert 'name: "retrieval"' in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.config", "retrieval"]


def test_status_by_label_over_rest(hard):
    server, _, _ = hard
    with urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/v1/models/retrieval", timeout=10) as r:
        assert json.loads(r.read())["model_version_status"][0]["state"] == "AVAILABLE"


@pytest.mark.parametrize("body, says", [
    ('{"inputs": {"history_item_ids": [["\\ud800"]], "history_domains": [["books"]], "target_domain": ["books"], '
     '"k": [3], "exclude_history": [true]}}', "input 'history_item_ids': text that is not valid Unicode"),
    ('{"inputs": ' + "9" * 5000 + '}', "a number too long to read"),
])
def test_rest_text_that_is_not_unicode_and_endless_numbers_are_400s(hard, body, says):
    """Both were 500s (UnicodeEncodeError, ValueError)."""
    server, _, _ = hard
    code, payload = post(server.rest_port, "/v1/models/retrieval:predict", body.encode())
    assert code == 400 and says in json.loads(payload)["error"]


def test_rest_head_never_predicts_and_unknown_http_versions_are_refused(hard, monkeypatch):
    import serving.rest

    server, _, item = hard
    called = []
    monkeypatch.setattr(serving.rest, "rest_predict", lambda *a: called.append(a) or {})
    body = json.dumps({"instances": [rest_instance(item)]}).encode()
    head = (b"HEAD /v1/models/retrieval:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode())
    sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)
    with sock:
        sock.sendall(head + b"\r\n\r\n" + body)
        answer = sock.recv(65536)
    assert answer.split(b" ", 2)[1] == b"405" and not called  # only POST may predict
    code, payload = raw_http(server.rest_port, b"GET /v1/models/retrieval HTTP/9.9\r\nHost: x\r\nConnection: close")
    assert code == 505 and "HTTP/9.9 is not supported" in json.loads(payload)["error"]


def test_a_request_head_that_never_ends_is_closed(hard, monkeypatch):
    """A request line without the blank line that ends the headers held the connection for over
    60 s; the head now has a deadline (``serving.rest_protocol``)."""
    import time

    import serving.rest_protocol

    monkeypatch.setattr(serving.rest_protocol, "HEAD_READ_SECONDS", 1.0)
    server, _, _ = hard
    sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=20)
    with sock:
        started = time.perf_counter()
        sock.sendall(b"GET /v1/models/retrieval HTTP/1.1\r\nHost: x\r\n")  # no blank line, ever
        assert sock.recv(1024) == b""  # closed by the server
        assert time.perf_counter() - started < 10
    # the server still answers everyone else
    code, _ = raw_http(server.rest_port, b"GET /v1/models/retrieval HTTP/1.1\r\nHost: x\r\nConnection: close")
    assert code == 200


def test_an_export_writes_nothing_to_tmpdir(tiny_pipeline, tmp_path, monkeypatch):
    """A killed export once left tmp*/crossrec_metadata.json in TMPDIR for good: everything an
    export writes is inside the version's own temporary folder (removed by the next run)."""
    import tempfile
    from pathlib import Path

    from serving.export import export_models

    config, _, retrieval_dir, _ = tiny_pipeline
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    sources, save = [], tf.saved_model.save

    def watched_save(module, folder, **kwargs):  # where the metadata asset's source is while saving
        sources.append((Path(module.metadata.asset_path.numpy().decode()), Path(folder)))
        return save(module, folder, **kwargs)

    monkeypatch.setattr(tf.saved_model, "save", watched_save)
    export_models(retrieval_dir, tmp_path / "saved_models", models=["retrieval"], progress=False)
    (source, folder), = sources
    assert folder in source.parents and folder.name.startswith(".tmp-")  # a kill leaves it in .tmp-* only
    assert not list(scratch.rglob(METADATA_FILE))  # (TensorFlow's autograph files land there; not ours)
    version = tmp_path / "saved_models" / "retrieval" / "1"
    assert json.loads((version / "assets" / METADATA_FILE).read_text())["model"] == "retrieval"
    assert not (version / ".metadata-source").exists()
