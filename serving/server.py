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

import ssl
import threading
from concurrent import futures
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving.grpc_api import ModelService, PredictionService
from serving.models import AVAILABLE, ModelManager
from serving.predictor import Predictor
from serving.rest import make_rest_handler

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024


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
