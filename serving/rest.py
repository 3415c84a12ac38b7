"""TF Serving's REST API over a ``Predictor``, as an ASGI app (Starlette) served by uvicorn:
``POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict``, ``GET /v1/models/<name>[/versions/<v>
|/labels/<l>]`` and ``GET /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata``; and, when
monitoring is on, Prometheus metrics at the configured path (``serving.monitoring``).

The HTTP stack (uvicorn + h11) owns connections, keep-alive, header limits, malformed framing and
TLS handshakes (in its event loop, so an idle client blocks nobody); this module owns the body
cap (checked on the declared length, then while streaming), a read timeout, and errors: every
failure is a JSON ``{"error": ...}`` with TF Serving's status code, never a traceback. A client
that disconnects before its body arrives is logged at debug level, without a traceback, and
counted as a request with code ``CANCELLED`` (``crossrec_serving_requests_total``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from http import HTTPStatus

import grpc
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tensorflow_serving.apis import get_model_metadata_pb2

from serving.errors import HTTP_STATUS, ServingError, invalid
from serving.models import LoadedModel
from serving.predictor import DEFAULT_SIGNATURE, Predictor, version_status
from serving.rest_json import columns_of, json_value, to_array

log = logging.getLogger("crossrec.serving")

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                   r"(?P<verb>:predict|/metadata)?$")
BODY_READ_SECONDS = 30.0


def rest_predict(predictor: Predictor, model: LoadedModel, body: dict) -> dict:
    signature_name = body.get("signature_name", "") or DEFAULT_SIGNATURE
    if not isinstance(signature_name, str):
        raise invalid(f'"signature_name" must be text, got {type(signature_name).__name__}')
    function = model.signatures.get(signature_name)
    if function is None:
        raise invalid(f'Serving signature key "{signature_name}" not found; the model has {sorted(model.signatures)}')
    specs = function.structured_input_signature[1]
    columns, rows = columns_of(body, specs)
    unknown = sorted(set(columns) - set(specs))
    if unknown:
        raise invalid(f"unexpected input(s) {unknown}; signature {signature_name!r} expects {sorted(specs)}")
    arrays = {k: to_array(v, specs[k], k) for k, v in columns.items()}
    outputs = predictor.predict(model, signature_name, arrays)
    key = "predictions" if rows else "outputs"
    if len(outputs) == 1:
        return {key: json_value(next(iter(outputs.values())))}
    if rows:
        n = len(body["instances"])
        return {key: [{k: json_value(v[i]) for k, v in outputs.items()} for i in range(n)]}
    return {key: {k: json_value(v) for k, v in outputs.items()}}


def _status_json(statuses) -> dict:
    return {"model_version_status": [
        {"version": str(v), "state": s.state,
         "status": {"error_code": "OK" if not s.error else "UNKNOWN", "error_message": s.error}}
        for v, s in sorted(statuses.items())]}


def _route(path: str):
    match = _PATH.match(path)
    if not match:
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"no such endpoint: {path[:200]}")
    version = match["version"]
    if version is not None:
        if not version.isdigit() or len(version) > 18:
            raise invalid(f"version: expected a whole number, got {version[:40]!r}")
        version = int(version)
    return match["name"], version, match["label"], match["verb"]


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > limit:  # h11 has already refused a malformed one
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"request of {declared} bytes exceeds the limit of {limit} (--max_request_bytes)")
    body = bytearray()

    async def read():
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"request body exceeds the limit of {limit} bytes (--max_request_bytes)")

    try:
        await asyncio.wait_for(read(), BODY_READ_SECONDS)
    except TimeoutError:
        raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"the request body did not arrive within {BODY_READ_SECONDS:.0f} s") from None
    return bytes(body)


HTTP_VERSIONS = ("1.0", "1.1")


def _parse(raw: bytes) -> dict:
    try:
        body = json.loads(raw.decode("utf-8") or "{}")
    except UnicodeDecodeError as exc:
        raise invalid(f"the request body is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise invalid(f"the request body is not JSON: {exc}") from None
    except RecursionError:
        raise invalid("the request body nests too deeply") from None
    except ValueError:  # an integer literal past Python's 4,300-digit conversion limit
        raise invalid("the request body holds a number too long to read (over 4,300 digits)") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    return body


def make_rest_app(predictor: Predictor, max_request_bytes: int, metrics_path: str | None = None,
                  extra_routes: list | None = None) -> Starlette:
    """The REST app; with ``metrics_path`` (and ``predictor.metrics``), Prometheus metrics there too;
    ``extra_routes`` (the explorer page) before the model API's catch-all."""
    handlers = _ModelApi(predictor, max_request_bytes)
    routes = [Route(metrics_path, handlers.metrics, methods=["GET"])] if metrics_path else []
    routes += extra_routes or []
    return Starlette(routes=[*routes, Route("/{path:path}", handlers.endpoint, methods=["GET", "POST"])],
                     exception_handlers={404: _not_found, 405: _method_not_allowed})


class _ModelApi:
    """TF Serving's REST model API over one predictor: status, metadata and predict."""

    def __init__(self, predictor: Predictor, max_request_bytes: int):
        self.predictor, self.max_request_bytes = predictor, max_request_bytes

    @staticmethod
    def metadata(model: LoadedModel) -> dict:
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in model.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature)
        return {"model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
                "metadata": {"signature_def": json_format.MessageToDict(signature_map,
                                                                         preserving_proto_field_name=True)}}

    def get(self, name, version, label, verb) -> dict:
        if verb == "/metadata":
            return self.metadata(self.predictor.model(name, version, label))
        return _status_json(version_status(self.predictor.manager, name, version, label))

    async def endpoint(self, request: Request) -> JSONResponse:
        try:
            if request.scope.get("http_version") not in HTTP_VERSIONS:
                return JSONResponse({"error": f"HTTP/{request.scope.get('http_version')} is not supported; use "
                                              "HTTP/1.1"}, status_code=505)
            name, version, label, verb = _route(request.url.path)
            if request.method in ("GET", "HEAD") and verb == ":predict":  # as TF Serving answers it
                return JSONResponse({"error": f"method {request.method} is not allowed on :predict; use POST"},
                                    status_code=405, headers={"Allow": "POST"})
            if request.method in ("GET", "HEAD"):  # HEAD: the GET answer's headers, never a prediction
                return JSONResponse(await run_in_threadpool(self.get, name, version, label, verb))
            if verb != ":predict":
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"no such endpoint: POST {request.url.path[:200]}")
            return await self.predict(request, name, version, label)
        except ServingError as error:
            return _error_response(error)
        except ClientDisconnect:  # the client's own doing: no traceback (a client could flood the log), counted
            log.debug("REST client disconnected before its request was read: %s %s", request.method,
                      request.url.path[:200])
            return Response(status_code=499)  # nobody reads it; nginx's code for a client that closed
        except Exception as exc:  # never a traceback to the client, never a dead server
            log.exception("REST request failed")
            return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    async def predict(self, request: Request, name, version, label) -> JSONResponse:
        predictor = self.predictor
        started, model, signature, code = time.perf_counter(), None, "", "UNKNOWN"
        try:
            raw = await _read_body(request, self.max_request_bytes)
            body = await run_in_threadpool(_parse, raw)
            signature = str(body.get("signature_name") or "")
            model = predictor.model(name, version, label)
            answer = JSONResponse(await run_in_threadpool(rest_predict, predictor, model, body))
            code = "OK"
            return answer
        except ServingError as error:
            code = error.code.name
            raise
        except ClientDisconnect:
            code = grpc.StatusCode.CANCELLED.name  # as gRPC names a call its client gave up on
            raise
        finally:
            predictor.observe("rest", name, model, signature, code, time.perf_counter() - started)

    async def metrics(self, request: Request) -> Response:
        content, media_type = self.predictor.metrics.exposition()
        return Response(content, media_type=media_type)


async def _not_found(request: Request, exc) -> JSONResponse:
    return JSONResponse({"error": f"no such endpoint: {request.url.path[:200]}"}, status_code=404)


async def _method_not_allowed(request: Request, exc) -> JSONResponse:
    return JSONResponse({"error": f"method {request.method} is not allowed; use GET or POST"}, status_code=405,
                        headers={"Allow": "GET, POST"})


def _error_response(error: ServingError) -> JSONResponse:
    return JSONResponse({"error": error.message},
                        status_code=HTTP_STATUS.get(error.code, HTTPStatus.INTERNAL_SERVER_ERROR))
