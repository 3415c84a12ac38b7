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
- Versions come and go while it runs (``serving.models.ModelManager``); each version's warm-up
  requests are replayed before it serves (``serving.warmup``).
- Server-side batching with ``--enable_batching`` (``serving.batching``).
- The explorer page at ``/ui`` on the REST port with ``--ui`` (``serving.explorer``).
- Prometheus metrics on the REST port with ``--monitoring_config_file`` (``serving.monitoring``).
"""


from __future__ import annotations

import socket
import ssl
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from crossrec.errors import ConfigError
from serving.batching import Batcher, BatchingOptions
from serving.explorer import explorer_routes
from serving.grpc_api import DecodeErrorsAreInvalid, ModelService, PredictionService
from serving.limits import RequestLimits
from serving.models import AVAILABLE, ModelManager
from serving.monitoring import ServingMetrics
from serving.predictor import Predictor
from serving.rest import make_rest_app
from serving.rest_protocol import HeadDeadlineH11

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
KEEP_ALIVE_SECONDS = 5


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8500
    rest_api_port: int = 8501  # 0 = no REST (as tensorflow_model_server)
    poll_seconds: float = 1.0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    limits: RequestLimits = field(default_factory=RequestLimits)
    workers: int = 8
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None
    metrics_path: str | None = None  # Prometheus metrics on the REST port (--monitoring_config_file)
    batching: BatchingOptions | None = None  # server-side batching (--enable_batching), or None
    ui: bool = False  # the explorer page at /ui on the REST port (--ui)
    ui_data: object = None  # a serving.explorer.ExplorerData (titles, users), or None

    def check_tls(self) -> None:
        """Both files or neither, and both readable: never a silent plaintext fallback."""
        cert, key = self.ssl_cert_file, self.ssl_key_file
        if bool(cert) != bool(key):
            given, missing = ("--ssl_cert_file", "--ssl_key_file") if cert else ("--ssl_key_file", "--ssl_cert_file")
            raise ConfigError(f"{given} needs {missing} too (TLS needs both the certificate and its private key)")
        for flag, path in (("--ssl_cert_file", cert), ("--ssl_key_file", key)):
            if path and not Path(path).is_file():
                raise ConfigError(f"{flag} {path}: file not found")
        if cert:  # gRPC would only say the port cannot be bound: the real cause, here
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
            except (ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"--ssl_cert_file {cert} and --ssl_key_file {key} are not a certificate and its "
                                  f"private key ({getattr(exc, 'reason', None) or exc}); check that both are PEM, "
                                  "that the key is the certificate's own, and that they are not swapped") from None


def _bind(host: str, port: int, what: str) -> socket.socket:
    """A listening socket, refusing a port another process already holds (no SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{what} port {host}:{port} is not available ({exc.strerror}); "
                          "is another server running? choose another port") from None
    sock.listen(128)
    return sock


class Server:
    """The gRPC + REST server over a ``ModelManager``; ``start()`` returns once both listen."""

    def __init__(self, manager: ModelManager, options: ServerOptions | None = None):
        self.manager = manager
        self.options = options or ServerOptions()
        self.metrics = ServingMetrics(manager)
        self.batcher = None
        self.predictor = Predictor(manager, self.options.limits, self.metrics)
        self.grpc_server = None
        self.http_server: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None
        self.health = health.HealthServicer()
        self.port = None
        self.rest_port = None
        self._health_thread = None
        self._stopping = threading.Event()

    def start(self) -> Server:
        o = self.options
        o.check_tls()
        if o.metrics_path and not o.rest_api_port:
            raise ConfigError("--monitoring_config_file serves metrics on the REST port: give --rest_api_port too")
        if o.ui and not o.rest_api_port:
            raise ConfigError("--ui serves the explorer page on the REST port: give --rest_api_port too")
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=o.workers), interceptors=[DecodeErrorsAreInvalid()],
                             options=[("grpc.max_receive_message_length", o.max_request_bytes),
                                      ("grpc.max_send_message_length", 64 * 1024 * 1024),
                                      ("grpc.so_reuseport", 0)])  # a port in use is an error, not shared
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(self.predictor), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.manager), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection([
            "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService",
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server)
        address = f"{o.host}:{o.port}"
        try:
            if o.ssl_cert_file:
                credentials = grpc.ssl_server_credentials([(Path(o.ssl_key_file).read_bytes(),
                                                            Path(o.ssl_cert_file).read_bytes())])
                self.port = server.add_secure_port(address, credentials)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise ConfigError(f"gRPC port {address} is not available; is another server running? choose another port")
        try:
            rest_socket = _bind(o.host, o.rest_api_port, "REST") if o.rest_api_port else None
        except ConfigError:
            server.stop(None)
            raise
        if o.batching is not None:
            self.batcher = self.predictor.batcher = Batcher(o.batching, on_batch=self.metrics.observe_batch,
                                                             on_stage=self.metrics.observe_stage)
        self.manager.start(o.poll_seconds)
        server.start()
        self.grpc_server = server
        if rest_socket is not None:
            self._start_rest(rest_socket)
        self._update_health()
        self._health_thread = threading.Thread(target=self._watch_health, daemon=True, name="health")
        self._health_thread.start()
        return self

    def _start_rest(self, sock: socket.socket):
        o = self.options
        config = uvicorn.Config(make_rest_app(self.predictor, o.max_request_bytes, o.metrics_path,
                                              explorer_routes(o.ui_data, self.manager) if o.ui else None), log_level="warning",
                                timeout_keep_alive=KEEP_ALIVE_SECONDS, ssl_certfile=o.ssl_cert_file,
                                ssl_keyfile=o.ssl_key_file, access_log=False, lifespan="off", http=HeadDeadlineH11,
                                log_config=None)  # crossrec's logging, not handlers of uvicorn's own
        self.http_server = uvicorn.Server(config)
        self.rest_port = sock.getsockname()[1]
        self._http_thread = threading.Thread(target=self.http_server.run, kwargs={"sockets": [sock]},
                                             daemon=True, name="rest")
        self._http_thread.start()
        while not self.http_server.started and self._http_thread.is_alive():
            threading.Event().wait(0.01)
        if not self.http_server.started:
            raise ConfigError("the REST server failed to start (see the log)")

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
            self.http_server.should_exit = True
            self._http_thread.join(timeout=grace + 5)
        if self.grpc_server is not None:
            self.grpc_server.stop(grace).wait()
        if self.batcher is not None:
            self.batcher.stop()
        self.manager.stop()

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
