"""``crossrec serve`` (the embedded TF Serving-compatible server) and ``crossrec query`` (its
gRPC client)."""

from __future__ import annotations

import argparse
import sys

from crossrec.errors import ConfigError


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import signal

    import tensorflow as tf

    from crossrec.quiet import spend_onednn_note
    from serving.models import ModelManager, wait_until_ready
    from serving.monitoring import metrics_path
    from serving.server import Server, ServerOptions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    specs = _serving_specs(args)  # the folders checked first: a bad one is an error before TF is set up
    # before any model loads: TF's thread pools are fixed once they start
    tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
    spend_onednn_note()
    manager = ModelManager(specs)
    options = ServerOptions(host=args.host, port=args.port, rest_api_port=args.rest_api_port,
                            poll_seconds=args.file_system_poll_wait_seconds, max_request_bytes=args.max_request_bytes,
                            limits=_limits(args), ssl_cert_file=args.ssl_cert_file, ssl_key_file=args.ssl_key_file,
                            metrics_path=metrics_path(args.monitoring_config_file), batching=_batching(args),
                            ui=args.ui, ui_data=_ui_data(args))
    server = Server(manager, options).start()
    if not wait_until_ready(manager, timeout=args.load_timeout):
        print("warning: some models have no loadable version yet (see the log); serving the others",
              file=sys.stderr)
    print(f"serving {', '.join(manager.specs)}: gRPC {args.host}:{server.port}"
          + (f", REST http://{args.host}:{server.rest_port}" if server.rest_port else "")
          + (f", metrics http://{args.host}:{server.rest_port}{options.metrics_path}" if options.metrics_path else "")
          + (f", explorer http://{args.host}:{server.rest_port}/ui" if args.ui else "")
          + " (Ctrl-C stops)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


def _ui_data(args: argparse.Namespace):
    """The explorer's titles and users: --ui_data, or the built-in data with --ui_data builtin."""
    if not args.ui:
        if args.ui_data:
            raise ConfigError("--ui_data needs --ui")
        return None
    if not args.ui_data:
        return None
    from crossrec.config import DataConfig
    from serving.explorer import ExplorerData

    if args.ui_data == "builtin":
        return ExplorerData.load(DataConfig(), "built-in data")
    return ExplorerData.load(DataConfig(interactions=args.ui_data), args.ui_data)


def _batching(args: argparse.Namespace):
    from serving.batching import BatchingOptions

    if not args.enable_batching:
        if args.batching_parameters_file:
            raise ConfigError("--batching_parameters_file needs --enable_batching")
        return None
    return BatchingOptions.from_file(args.batching_parameters_file)


def _limits(args: argparse.Namespace):
    from serving.limits import DEFAULT_MAX_BATCH_SIZE, RequestLimits

    default, per_model = DEFAULT_MAX_BATCH_SIZE, {}
    for value in args.max_batch_size or []:
        name, _, number = value.rpartition("=")
        if not number.isdigit() or int(number) < 1:
            raise ConfigError(f"--max_batch_size {value!r}: expected N or MODEL=N with N a whole number of at least 1")
        if name:
            per_model[name] = int(number)
        else:
            default = int(number)
    for flag, value in (("--max_request_elements", args.max_request_elements),
                        ("--max_string_bytes", args.max_string_bytes)):
        if value < 1:
            raise ConfigError(f"{flag}: expected at least 1, got {value}")
    return RequestLimits(default, per_model, args.max_request_elements, args.max_string_bytes)


def _serving_specs(args: argparse.Namespace):
    from pathlib import Path

    from serving.layout import versions
    from serving.models import ModelSpec, specs_from_config_file

    if args.model_config_file:
        return specs_from_config_file(args.model_config_file)
    if not args.model_base_path:
        raise ConfigError("give --model_base_path (a model's folder, or a saved_models folder holding several) "
                          "or --model_config_file")
    base = Path(args.model_base_path).resolve()
    if not base.is_dir():
        raise ConfigError(f"--model_base_path {base}: no such folder (export models with `crossrec export` first)")
    if args.model_name or versions(base):
        return [ModelSpec(args.model_name or base.name, base)]
    models = sorted(p for p in base.iterdir() if p.is_dir() and versions(p))
    if not models:
        raise ConfigError(f"--model_base_path {base}: holds no model versions (<model>/<version>/saved_model.pb); "
                          f"export models into it first (`crossrec export --retrieval RUN --ranking RUN --out {base}`)"
                          " or point --model_base_path at the folder an export wrote (the quickstart's: "
                          ".runs/quickstart/saved_models)")
    return [ModelSpec(p.name, p) for p in models]


def register(commands) -> None:
    serve = commands.add_parser(
        "serve", help="serve saved_models/ over TF Serving's gRPC and REST APIs",
        description="An embedded server speaking TensorFlow Serving's gRPC (PredictionService, ModelService, "
                    "health, reflection) and REST APIs, for machines without tensorflow_model_server. Flags "
                    "are named like tensorflow_model_server's. Serves the latest version of each model and "
                    "switches to new versions as they appear, without failing requests in flight.")
    serve.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
    serve.add_argument("--rest_api_port", type=int, default=8501, help="REST port (default 8501; 0 = no REST)")
    serve.add_argument("--model_base_path", "--model-dir", dest="model_base_path",
                       help="a model's folder (<base>/<version>/), or a folder of model folders such as "
                            "saved_models/ (serves each); TF Serving's name, --model-dir as in every other command")
    serve.add_argument("--model_name", help="the model's name (default: the folder's name)")
    serve.add_argument("--model_config_file", help="TF Serving ModelServerConfig text proto (several models, "
                                                   "version policies and labels)")
    serve.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                       help="how often to look for new versions (default 1; 0 = load once)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--max_request_bytes", type=int, default=16 * 1024 * 1024,
                       help="largest accepted request (default 16 MiB)")
    serve.add_argument("--max_batch_size", action="append", metavar="N|MODEL=N",
                       help="most rows (queries, texts) one request may carry, for every model (N) or one "
                            "(MODEL=N; repeat the flag); default 1024. Larger requests get INVALID_ARGUMENT")
    serve.add_argument("--max_request_elements", type=int, default=1_000_000,
                       help="most values over all inputs of one request, checked on the declared shapes "
                            "before anything is allocated (default 1000000)")
    serve.add_argument("--max_string_bytes", type=int, default=64 * 1024,
                       help="longest string value (an id, a domain, an item text) in bytes (default 65536)")
    serve.add_argument("--ssl_cert_file", help="PEM certificate: serve gRPC and REST over TLS")
    serve.add_argument("--ssl_key_file", help="PEM private key for --ssl_cert_file")
    serve.add_argument("--ui", action="store_true",
                       help="also serve the explorer page at http://HOST:REST_PORT/ui: type or pick a history, see "
                            "the served list beside the two-tower order, switch versions")
    serve.add_argument("--ui_data", metavar="PATH|builtin",
                       help="data folder (or interactions file) for the explorer's titles and users; "
                            "'builtin' = the built-in data")
    serve.add_argument("--enable_batching", action="store_true",
                       help="merge concurrent Predict calls of one model, version and signature into one "
                            "signature call (server-side batching, as tensorflow_model_server's flag)")
    serve.add_argument("--batching_parameters_file",
                       help="TF Serving BatchingParameters text proto: max_batch_size, batch_timeout_micros, "
                            "num_batch_threads, max_enqueued_batches, allowed_batch_sizes, "
                            "pad_variable_length_inputs (default: TF Serving's defaults)")
    serve.add_argument("--monitoring_config_file",
                       help="TF Serving MonitoringConfig text proto; prometheus_config { enable: true path: "
                            "\"/monitoring/prometheus/metrics\" } serves Prometheus metrics on the REST port")
    serve.add_argument("--load_timeout", type=float, default=120.0, help="seconds to wait for the first load")
    serve.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                       help="threads one op may use (default 0: TensorFlow's choice)")
    serve.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                       help="ops run at once per request (default 0: TensorFlow's choice)")
    serve.set_defaults(func=cmd_serve)
