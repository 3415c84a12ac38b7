"""TF Serving's REST API over a ``Predictor``: ``POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict``
(``instances`` or ``inputs``), ``GET /v1/models/<name>[/versions/<v>]`` and
``GET /v1/models/<name>/metadata``, with TF Serving's JSON encodings and error bodies."""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from serving.models import LoadedModel
from serving.predictor import (
    DEFAULT_SIGNATURE,
    HTTP_STATUS,
    Predictor,
    ServingError,
    version_status,
)

log = logging.getLogger("crossrec.serving")


_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                   r"(?P<verb>:predict|/metadata)?$")


def _json_value(value):
    if isinstance(value, np.ndarray):
        return [_json_value(v) for v in value] if value.ndim else _json_value(value.item())
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def _to_array(value, spec: tf.TensorSpec, name: str) -> np.ndarray:
    try:
        if spec.dtype == tf.string:
            def encode(v):
                if isinstance(v, list):
                    return [encode(x) for x in v]
                if isinstance(v, dict) and "b64" in v:
                    import base64

                    return base64.b64decode(v["b64"])
                if not isinstance(v, str):
                    raise TypeError(f"expected text, got {v!r}")
                return v.encode("utf-8")
            array = np.array(encode(value), dtype=object)
        elif spec.dtype == tf.bool:
            array = np.asarray(value)
            if array.dtype != np.bool_:
                raise TypeError(f"expected true/false, got {value!r}")
        else:
            array = np.asarray(value, dtype=spec.dtype.as_numpy_dtype)
    except (TypeError, ValueError) as exc:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name!r}: cannot be read as {spec.dtype.name} ({exc})") from None
    if array.dtype == object and array.ndim and array.size and isinstance(array.flat[0], list):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r}: rows of different lengths")
    return array


def rest_predict(predictor: Predictor, model: LoadedModel, body: dict) -> dict:
    signature_name = body.get("signature_name") or DEFAULT_SIGNATURE
    function = model.signatures.get(signature_name)
    if function is None:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f'Serving signature key "{signature_name}" not found')
    specs = function.structured_input_signature[1]
    if ("instances" in body) == ("inputs" in body):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           'the request body needs exactly one of "instances" (row format) or "inputs" (columnar)')
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, '"instances" must be a non-empty list')
        if len(specs) == 1 and not isinstance(instances[0], dict):
            columns = {next(iter(specs)): instances}
        else:
            if not all(isinstance(i, dict) for i in instances):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   '"instances" must be objects naming each input, e.g. {"target_domain": "books", ...}')
            names = set().union(*instances)
            columns = {}
            for name in names:
                missing = [i for i, row in enumerate(instances) if name not in row]
                if missing:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"input {name!r} is missing from instance(s) {missing[:5]}")
                columns[name] = [row[name] for row in instances]
    else:
        columns = body["inputs"]
        if not isinstance(columns, dict):
            columns = {next(iter(specs)): columns} if len(specs) == 1 else None
        if columns is None:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, '"inputs" must be an object naming each input')
    arrays = {k: _to_array(v, specs[k], k) if k in specs else np.asarray(v, dtype=object) for k, v in columns.items()}
    outputs = predictor.predict(model, signature_name, arrays)
    if "instances" in body:
        n = len(body["instances"])
        if len(outputs) == 1:
            return {"predictions": _json_value(next(iter(outputs.values())))}
        return {"predictions": [{k: _json_value(v[i]) for k, v in outputs.items()} for i in range(n)]}
    if len(outputs) == 1:
        return {"outputs": _json_value(next(iter(outputs.values())))}
    return {"outputs": {k: _json_value(v) for k, v in outputs.items()}}


def _status_json(statuses) -> dict:
    return {"model_version_status": [
        {"version": str(v), "state": s.state,
         "status": {"error_code": "OK" if not s.error else "UNKNOWN", "error_message": s.error}}
        for v, s in sorted(statuses.items())]}


def make_rest_handler(predictor: Predictor, max_request_bytes: int):
    manager = predictor.manager

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # route through logging, not stderr
            log.debug("rest: " + fmt, *args)

        def _send(self, status: int, payload: dict):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, error: ServingError):
            self._send(HTTP_STATUS.get(error.code, HTTPStatus.INTERNAL_SERVER_ERROR), {"error": error.message})

        def _route(self):
            match = _PATH.match(self.path.split("?")[0])
            if not match:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"no such endpoint: {self.path}")
            version = int(match["version"]) if match["version"] else None
            return match["name"], version, match["label"], match["verb"]

        def do_GET(self):  # noqa: N802
            try:
                name, version, label, verb = self._route()
                if verb == ":predict":
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "predict needs POST")
                if verb == "/metadata":
                    model = predictor.model(name, version, label)
                    signature_map = get_model_metadata_pb2.SignatureDefMap()
                    for key, signature in model.signature_defs.items():
                        signature_map.signature_def[key].CopyFrom(signature)
                    self._send(200, {"model_spec": {"name": name, "signature_name": "", "version": str(model.version)},
                                     "metadata": {"signature_def": json_format.MessageToDict(
                                         signature_map, preserving_proto_field_name=True)}})
                    return
                self._send(200, _status_json(version_status(manager, name, version)))
            except ServingError as error:
                self._error(error)

        def do_POST(self):  # noqa: N802
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > max_request_bytes:
                    self.rfile.read(length)
                    raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"request of {length} bytes exceeds the limit of {max_request_bytes}")
                raw = self.rfile.read(length)
                name, version, label, verb = self._route()
                if verb != ":predict":
                    raise ServingError(grpc.StatusCode.NOT_FOUND, f"no such endpoint: POST {self.path}")
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError as exc:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"the request body is not JSON: {exc}") from None
                if not isinstance(body, dict):
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "the request body must be a JSON object")
                model = predictor.model(name, version, label)
                self._send(200, rest_predict(predictor, model, body))
            except ServingError as error:
                self._error(error)
            except Exception as exc:  # never let a request take the server down
                log.exception("REST request failed")
                self._error(ServingError(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"))

    return Handler
