"""A bounded, seeded fuzz suite: malformed gRPC and REST requests built from each served model's
real signature, and broken data files. Whatever comes in: no INTERNAL/UNKNOWN status or 5xx, no
crash, the server's memory stays within a fixed budget, and a valid request's answer is the same
afterwards."""

import json
import random
import shutil
import socket

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from crossrec import schema
from crossrec.config import DataConfig
from crossrec.data.loaders import load_dataset
from crossrec.errors import CrossrecInputError
from serving.client import predict_request
from serving.models import ModelManager, ModelSpec, wait_until_ready
from serving.server import Server, ServerOptions, free_port

from conftest import GOOD_INTERACTIONS, GOOD_ITEMS

MODELS = ("retrieval", "ranking", "recommender", "item_encoder")
GRPC_CASES = 240
REST_CASES = 160
DATA_CASES = 60
RSS_BUDGET_MB = 400
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def fuzz_server(tiny_exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "saved_models"
    shutil.copytree(tiny_exported[2], root)
    manager = ModelManager([ModelSpec(name, root / name) for name in MODELS])
    server = Server(manager, ServerOptions(port=0, rest_api_port=free_port(), poll_seconds=0)).start()
    assert wait_until_ready(manager)
    items = tiny_exported[1].data.catalogue.items
    yield server, manager, items
    server.stop()


def valid_inputs(model: str, items, rng: random.Random, rows: int = 2) -> dict[str, np.ndarray]:
    picked = items.sample(3, random_state=rng.randrange(10**6))
    ids, domains = picked[schema.ITEM_ID].astype(str).tolist(), picked[schema.DOMAIN].astype(str).tolist()
    history = {"history_item_ids": np.array([ids] * rows, object), "history_domains": np.array([domains] * rows, object),
               "target_domain": np.array([domains[0]] * rows, object)}
    if model in ("retrieval", "recommender"):
        return {**history, "k": np.full(rows, 3, np.int32), "exclude_history": np.ones(rows, bool)}
    if model == "ranking":
        return {**history, "candidate_item_ids": np.array([ids[:2]] * rows, object)}
    return {"text": np.array(["a blue mug"] * rows, object), "domain": np.array([domains[0]] * rows, object)}


STRINGS = ["", "\x00", "é" * 10, "x" * 5000, "<unseen>", "books\x1fB1", "💥", "-1", "null"]


def mutate(inputs: dict, rng: random.Random):
    """One malformed variant of a valid request: a dict of arrays or raw TensorProtos."""
    inputs = dict(inputs)
    key = rng.choice(sorted(inputs))
    value = inputs[key]
    kind = rng.randrange(14)
    if kind == 0:
        del inputs[key]
    elif kind == 1:
        inputs[rng.choice(["extra", "K", "history"])] = value
    elif kind == 2:  # wrong dtype
        inputs[key] = (np.ones(value.shape, np.float32) if value.dtype == object
                       else np.array(["7"] * value.size, object).reshape(value.shape))
    elif kind == 3:  # wrong rank
        inputs[key] = value.reshape(-1)[:1].reshape(()) if value.ndim else np.array([[value]])
    elif kind == 4:  # empty
        inputs[key] = value[:0]
    elif kind == 5:  # another batch size
        inputs[key] = np.concatenate([value, value])
    elif kind == 6 and "k" in inputs:
        inputs["k"] = np.array([rng.choice([0, -1, -2**31, 2**31 - 1, 101, 10**9 % 2**31])] * len(inputs["k"]),
                               np.int32)
    elif kind == 7 and value.dtype == object:
        inputs[key] = np.array([rng.choice(STRINGS).encode() for _ in range(value.size)], object).reshape(value.shape)
    elif kind == 8 and value.dtype == object:  # bytes that are not UTF-8
        inputs[key] = np.array([bytes(rng.randrange(256) for _ in range(8)) for _ in range(value.size)],
                               object).reshape(value.shape)
    elif kind == 9:  # a declared shape that lies about its values
        dims = [rng.choice([-1, 0, 3, 10**7, 2**40])] + list(value.shape[1:])
        inputs[key] = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING if value.dtype == object else types_pb2.DT_INT32, string_val=[b"x"],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d)
                                                                for d in dims]))
    elif kind == 10:  # unknown rank
        inputs[key] = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"x"],
                                             tensor_shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True))
    elif kind == 11 and value.ndim == 2:  # wider or zero-width rows
        inputs[key] = value[:, :0] if rng.random() < 0.5 else np.concatenate([value, value], axis=1)
    elif kind == 12:  # a TensorProto whose content does not match its dtype
        inputs[key] = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, tensor_content=b"\x01\x02\x03",
                                             tensor_shape=tensor_shape_pb2.TensorShapeProto(
                                                 dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2)]))
    else:  # many rows
        inputs[key] = np.repeat(value, 3000, axis=0)
    return inputs


def grpc_predict(stub, model, inputs, version=None, signature=""):
    return stub.Predict(predict_request(model, inputs, version, signature), timeout=30)


def test_malformed_grpc_requests_never_fail_inside_the_server(fuzz_server):
    server, _, items = fuzz_server
    rng = random.Random(15)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    reference = {m: grpc_predict(stub, m, valid_inputs(m, items, random.Random(0))) for m in MODELS}
    start_rss = rss_mb()
    codes: dict[str, int] = {}
    for case in range(GRPC_CASES):
        model = rng.choice(MODELS)
        inputs = mutate(valid_inputs(model, items, rng), rng)
        version, signature = None, ""
        if case % 17 == 0:
            version = rng.choice([0, 2, 2**62])
        if case % 23 == 0:
            signature = rng.choice(["nope", "\x00", "serving_default" * 50])
        if case % 29 == 0:
            model = rng.choice(["", "nope", "../retrieval", "retrieval/1"])
        try:
            grpc_predict(stub, model, inputs, version, signature)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            assert code not in BAD_CODES, (case, model, sorted(inputs), error.details())
            assert error.details(), (case, model)
        codes[code.name] = codes.get(code.name, 0) + 1
    growth = rss_mb() - start_rss
    assert growth < RSS_BUDGET_MB, f"server memory grew by {growth:.0f} MB over {GRPC_CASES} malformed requests"
    for m in MODELS:  # the same answer as before
        again = grpc_predict(stub, m, valid_inputs(m, items, random.Random(0)))
        for key, proto in reference[m].outputs.items():
            np.testing.assert_array_equal(tf.make_ndarray(again.outputs[key]), tf.make_ndarray(proto))
    channel.close()
    assert codes.get("INVALID_ARGUMENT", 0) > GRPC_CASES // 3, codes  # the cases did reach the checks


def _json_of(inputs: dict) -> dict:
    return {k: (v.astype(str).tolist() if v.dtype == object else v.tolist()) for k, v in inputs.items()}


def rest_body(model, items, rng: random.Random) -> bytes:
    valid = _json_of(valid_inputs(model, items, rng))
    kind = rng.randrange(12)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 1:
        return json.dumps(rng.choice([[], 7, "x", None, {"instances": []}, {"inputs": 3}])).encode()
    if kind == 2:
        return json.dumps({"instances": [dict(zip(valid, row, strict=True)) for row in zip(*valid.values(),
                                                                                            strict=True)],
                           "inputs": valid}).encode()
    if kind == 3:
        key = rng.choice(sorted(valid))
        valid[key] = rng.choice([None, {}, "5", 5.5, True, [[[]]], 10**40, -10**40, float("nan"),
                                 {"b64": "%%%"}, [{"b64": 3}]])
        return json.dumps({"inputs": valid}, allow_nan=True).encode()
    if kind == 4:
        return b'{"inputs": ' + b"[" * rng.randrange(1000, 50000) + b"]" * 3 + b"}"
    if kind == 5:
        return json.dumps({"signature_name": rng.choice([3, [], {}, "nope", None]), "inputs": valid}).encode()
    if kind == 6:
        key = rng.choice(sorted(valid))
        valid[key] = valid[key] * 400  # more rows than one batch may hold, or ragged against the others
        return json.dumps({"inputs": valid}).encode()
    if kind == 7:
        return json.dumps({"inputs": valid}).encode()[: rng.randrange(1, 60)]
    if kind == 8:
        return json.dumps({"inputs": {**valid, "surprise": [1]}}).encode()
    if kind == 9:
        return json.dumps({"instances": [{**{k: v[0] for k, v in valid.items()}, "k": "3"}]}).encode()
    if kind == 10:
        return "{\"inputs\": \"\ud800\"}".encode("utf-8", "surrogatepass")
    return json.dumps({"inputs": valid}).encode()


PATHS = ["/v1/models/{m}:predict", "/v1/models/{m}/versions/1:predict", "/v1/models/{m}/versions/99999999999999999999:predict",
         "/v1/models/{m}/labels/nope:predict", "/v1/models/{m}/metadata", "/v1/models/{m}", "/v1/models/{m}:classify",
         "/v2/models/{m}:predict", "/", "/v1/models/%00:predict", "/v1/models/{m}/versions/-1"]


def http(port: int, method: str, path: str, body: bytes, headers: dict | None = None) -> int:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    for key, value in (headers if headers is not None else {"Content-Length": str(len(body))}).items():
        head += f"{key}: {value}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_malformed_rest_requests_are_never_5xx(fuzz_server):
    server, _, items = fuzz_server
    rng = random.Random(16)
    port = server.rest_port
    valid = json.dumps({"inputs": _json_of(valid_inputs("retrieval", items, random.Random(0)))}).encode()
    reference = http(port, "POST", "/v1/models/retrieval:predict", valid)
    assert reference == 200
    start_rss = rss_mb()
    statuses: dict[int, int] = {}
    for case in range(REST_CASES):
        model = rng.choice(MODELS)
        method = rng.choice(["POST"] * 6 + ["GET", "PUT", "DELETE", "OPTIONS"])
        path = rng.choice(PATHS).format(m=model)
        body = rest_body(model, items, rng)
        headers = None
        if case % 13 == 0:
            headers = {"Content-Length": rng.choice(["-1", "abc", "99999999999", str(len(body) + 5)[:0] or "0"])}
        status = http(port, method, path, body, headers)
        assert status < 500, (case, method, path, body[:200], headers)
        statuses[status] = statuses.get(status, 0) + 1
    growth = rss_mb() - start_rss
    assert growth < RSS_BUDGET_MB, f"server memory grew by {growth:.0f} MB over {REST_CASES} malformed requests"
    assert http(port, "POST", "/v1/models/retrieval:predict", valid) == 200
    assert statuses.get(400, 0) > REST_CASES // 4, statuses  # the cases did reach the checks


def _corrupt(text: str, rng: random.Random) -> bytes:
    data = text.encode()
    kind = rng.randrange(9)
    if kind == 0:
        return data[: rng.randrange(1, len(data))]
    if kind == 1:
        raw = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    if kind == 2:
        lines = text.splitlines()
        header = lines[0].split(",")
        drop = rng.randrange(len(header))
        return "\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != drop) for line in lines).encode()
    if kind == 3:
        return (text + rng.choice(["u9,b1,books,inf,4", "u9,b1,books,1,nan", "u9,b1,books,1e300,1e300",
                                   "u9,,books,1,4", "u9,b1,books", "u9,b1,books,1,4,extra,extra",
                                   '"unterminated,b1,books,1,4']) + "\n").encode()
    if kind == 4:
        return b"\x00" * rng.randrange(1, 100)
    if kind == 5:
        return (text.splitlines()[0] + "\n").encode()
    if kind == 6:
        return text.replace(",", ";").encode()
    if kind == 7:
        return (text.splitlines()[0] + "," + text.splitlines()[0] + "\n" + text).encode()
    return (text * 3).encode()


def test_broken_data_files_fail_with_input_errors_only(tmp_path):
    rng = random.Random(17)
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(DATA_CASES):
        inter, items = tmp_path / f"i{case}.csv", tmp_path / f"t{case}.csv"
        broken_items = case % 3 == 2
        inter.write_bytes(GOOD_INTERACTIONS.encode() if broken_items else _corrupt(GOOD_INTERACTIONS, rng))
        items.write_bytes(_corrupt(GOOD_ITEMS, rng) if broken_items else GOOD_ITEMS.encode())
        try:
            load_dataset(DataConfig(interactions=str(inter), items=str(items)))
            outcomes["loaded"] += 1
        except CrossrecInputError as error:
            assert str(error).strip(), case
            outcomes["refused"] += 1
    assert outcomes["refused"] > DATA_CASES // 2, outcomes


@pytest.mark.parametrize("raw", [b"\x05\x01\xff\x00\x13", b"\xff" * 64, b"\x0a\x05hello"[:4]])
def test_bytes_that_are_not_a_request_are_invalid_argument(fuzz_server, raw):
    """Random bytes once gave INTERNAL "Exception deserializing request!"."""
    server, _, _ = fuzz_server
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    for method in ("Predict", "GetModelMetadata"):
        call = channel.unary_unary(f"/tensorflow.serving.PredictionService/{method}")  # raw bytes in and out
        with pytest.raises(grpc.RpcError) as error:
            call(raw, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"not a valid {method} request message" in error.value.details()
    channel.close()
