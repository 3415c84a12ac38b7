"""The embedded server: TF Serving's gRPC and REST APIs over a ``saved_models/`` folder.

For machines where no ``tensorflow_model_server`` binary can be installed. It speaks the same
protocol, so clients (and the official ``tensorflow-serving-api`` stubs) cannot tell the
difference:

- gRPC ``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata) and
  ``tensorflow.serving.ModelService`` (GetModelStatus); standard gRPC health checking
  (``grpc.health.v1``) and server reflection.
- REST: ``POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict`` (``instances`` or
  ``inputs``), ``GET /v1/models/<name>[/versions/<v>]`` and ``GET /v1/models/<name>/metadata``.
- Errors as TF Serving returns them: unknown model or version -> NOT_FOUND (HTTP 404); wrong
  input names, dtypes or shapes, or a value the model rejects (e.g. k beyond max_k) ->
  INVALID_ARGUMENT (HTTP 400) with a message naming the field. Nothing a client sends crashes it.
- Versions come and go while it runs (``serving.models.ModelManager``).
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
from concurrent import futures
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.models import AVAILABLE, LoadedModel, ModelManager

log = logging.getLogger("crossrec.serving")

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


HTTP_STATUS = {grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
               grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
               grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
               grpc.StatusCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR}


def _assertion_message(error: tf.errors.OpError) -> str:
    """The readable part of a TF runtime error (a failed ``tf.debugging.assert_*`` in a signature)."""
    text = error.message
    match = re.search(r"assertion failed: \[([^\]]*)\]", text)
    if match:
        return match.group(1).strip()
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


class Predictor:
    """Runs a signature of a served model on numpy inputs, checking them first."""

    def __init__(self, manager: ModelManager):
        self.manager = manager

    def model(self, name: str, version: int | None = None, label: str | None = None) -> LoadedModel:
        try:
            return self.manager.get(name, version, label)
        except KeyError as exc:
            raise ServingError(grpc.StatusCode.NOT_FOUND, exc.args[0]) from None

    def predict(self, model: LoadedModel, signature_name: str, inputs: dict, output_filter=()) -> dict:
        signature_name = signature_name or DEFAULT_SIGNATURE
        function = model.signatures.get(signature_name)
        if function is None:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f'Serving signature key "{signature_name}" not found; the model has '
                               f"{sorted(model.signatures)}")
        specs = function.structured_input_signature[1]
        missing = sorted(set(specs) - set(inputs))
        extra = sorted(set(inputs) - set(specs))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if extra:
                parts.append(f"unexpected input(s) {extra}")
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{'; '.join(parts)}; signature {signature_name!r} expects {sorted(specs)}")
        tensors = {}
        for name, spec in specs.items():
            value = inputs[name]
            dtype = value.dtype if isinstance(value, tf.Tensor) else None
            array = value if isinstance(value, np.ndarray) else np.asarray(value)
            if dtype is None:
                dtype = tf.string if array.dtype.kind in "OSU" else tf.as_dtype(array.dtype)
            if dtype != spec.dtype:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {name!r}: expects dtype {spec.dtype.name}, got {dtype.name}")
            if not spec.shape.is_compatible_with(array.shape):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {name!r}: expects shape {spec.shape.as_list()} (None = any), got "
                                   f"{list(array.shape)}")
            tensors[name] = tf.constant(array, dtype=spec.dtype)
        batch = {t.shape[0] for t in tensors.values() if t.shape.rank}
        if len(batch) > 1:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"inputs disagree on the batch size (first dimension): "
                               f"{ {k: t.shape[0] for k, t in tensors.items() if t.shape.rank} }")
        try:
            outputs = function(**tensors)
        except tf.errors.InvalidArgumentError as exc:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, _assertion_message(exc)) from None
        except tf.errors.OpError as exc:
            raise ServingError(grpc.StatusCode.INTERNAL, _assertion_message(exc)) from None
        if output_filter:
            unknown = sorted(set(output_filter) - set(outputs))
            if unknown:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"output_filter: unknown output(s) {unknown}; the signature has {sorted(outputs)}")
            outputs = {k: v for k, v in outputs.items() if k in output_filter}
        return {k: v.numpy() for k, v in outputs.items()}


def _version_status(manager: ModelManager, name: str, version: int | None):
    try:
        statuses = manager.status(name)
    except KeyError as exc:
        raise ServingError(grpc.StatusCode.NOT_FOUND, exc.args[0]) from None
    if version is not None:
        if version not in statuses:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")
        statuses = {version: statuses[version]}
    return statuses


# --- gRPC ------------------------------------------------------------------------------------------

def _spec_version(model_spec) -> tuple[int | None, str | None]:
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        return model_spec.version.value, None
    if choice == "version_label":
        return None, model_spec.version_label
    return None, None


def _abort(context, error: ServingError):
    context.abort(error.code, error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def Predict(self, request, context):  # noqa: N802 (gRPC method names)
        try:
            version, label = _spec_version(request.model_spec)
            model = self.predictor.model(request.model_spec.name, version, label)
            try:
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            except Exception as exc:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"inputs: not valid TensorProtos ({exc})") from None
            outputs = self.predictor.predict(model, request.model_spec.signature_name, inputs,
                                             tuple(request.output_filter))
        except ServingError as error:
            return _abort(context, error)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        try:
            fields = list(request.metadata_field)
            if fields != ["signature_def"]:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"metadata_field must be ['signature_def'], got {fields}")
            version, label = _spec_version(request.model_spec)
            model = self.predictor.model(request.model_spec.name, version, label)
        except ServingError as error:
            return _abort(context, error)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in model.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature)
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def GetModelStatus(self, request, context):  # noqa: N802
        try:
            version, _ = _spec_version(request.model_spec)
            statuses = _version_status(self.manager, request.model_spec.name, version)
        except ServingError as error:
            return _abort(context, error)
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, status in sorted(statuses.items()):
            entry = response.model_version_status.add()
            entry.version = number
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(status.state)
            if status.error:
                entry.status.error_code = 2  # UNKNOWN
                entry.status.error_message = status.error
        return response


# --- REST ------------------------------------------------------------------------------------------

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
                self._send(200, _status_json(_version_status(manager, name, version)))
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


# --- the server ------------------------------------------------------------------------------------

@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8500
    rest_api_port: int = 8501  # 0 = no REST (as tensorflow_model_server)
    poll_seconds: float = 1.0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    workers: int = 8
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None


class Server:
    """The gRPC + REST server over a ``ModelManager``; ``start()`` returns once both listen."""

    def __init__(self, manager: ModelManager, options: ServerOptions | None = None):
        self.manager = manager
        self.options = options or ServerOptions()
        self.predictor = Predictor(manager)
        self.grpc_server = None
        self.http_server = None
        self.health = health.HealthServicer()
        self.port = None
        self.rest_port = None
        self._health_thread = None
        self._stopping = threading.Event()

    def start(self) -> Server:
        o = self.options
        self.manager.start(o.poll_seconds)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=o.workers),
                             options=[("grpc.max_receive_message_length", o.max_request_bytes),
                                      ("grpc.max_send_message_length", 64 * 1024 * 1024)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(self.predictor), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.manager), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection([
            "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService",
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server)
        address = f"{o.host}:{o.port}"
        if o.ssl_cert_file:
            credentials = grpc.ssl_server_credentials([(Path(o.ssl_key_file).read_bytes(),
                                                        Path(o.ssl_cert_file).read_bytes())])
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot listen on {address} (in use?)")
        server.start()
        self.grpc_server = server
        if o.rest_api_port:
            self._start_rest()
        self._update_health()
        self._health_thread = threading.Thread(target=self._watch_health, daemon=True, name="health")
        self._health_thread.start()
        return self

    def _start_rest(self):
        o = self.options
        handler = make_rest_handler(self.predictor, o.max_request_bytes)
        self.http_server = ThreadingHTTPServer((o.host, o.rest_api_port), handler)
        self.http_server.daemon_threads = True
        if o.ssl_cert_file:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(o.ssl_cert_file, o.ssl_key_file)
            self.http_server.socket = context.wrap_socket(self.http_server.socket, server_side=True)
        self.rest_port = self.http_server.server_address[1]
        threading.Thread(target=self.http_server.serve_forever, daemon=True, name="rest").start()

    def _update_health(self):
        for name in self.manager.specs:
            available = any(s.state == AVAILABLE for s in self.manager.status(name).values())
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING if available
                            else health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set("", health_pb2.HealthCheckResponse.SERVING if self.manager.ready()
                        else health_pb2.HealthCheckResponse.NOT_SERVING)

    def _watch_health(self):
        while not self._stopping.wait(max(self.options.poll_seconds, 0.2)):
            self._update_health()

    def stop(self, grace: float = 2.0) -> None:
        self._stopping.set()
        self.health.enter_graceful_shutdown()
        if self.http_server is not None:
            self.http_server.shutdown()
            self.http_server.server_close()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace).wait()
        self.manager.stop()

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
