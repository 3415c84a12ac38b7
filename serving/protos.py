"""TF Serving's configuration protos that the ``tensorflow-serving-api`` package does not ship:
``MonitoringConfig`` (``--monitoring_config_file``, from
``tensorflow_serving/config/monitoring_config.proto``) and ``BatchingParameters``
(``--batching_parameters_file``, from ``tensorflow_serving/servables/tensorflow/
session_bundle_config.proto``), declared here with the same package, names and field numbers, so
the very files given to ``tensorflow_model_server`` parse here, with the protobuf library's own
errors for unknown fields or wrong types.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)

from crossrec.errors import ConfigError

_FIELD = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="crossrec/tf_serving_config.proto",
                                               package="tensorflow.serving", syntax="proto3",
                                               dependency=["google/protobuf/wrappers.proto"])

    def message(name, fields):
        m = proto.message_type.add(name=name)
        for number, (field, kind, label, type_name) in enumerate(fields, 1):
            entry = m.field.add(name=field, number=number, type=kind, label=label)
            if type_name:
                entry.type_name = type_name

    optional, repeated = _FIELD.LABEL_OPTIONAL, _FIELD.LABEL_REPEATED
    message("PrometheusConfig", [("enable", _FIELD.TYPE_BOOL, optional, None),
                                 ("path", _FIELD.TYPE_STRING, optional, None)])
    message("MonitoringConfig", [("prometheus_config", _FIELD.TYPE_MESSAGE, optional,
                                  ".tensorflow.serving.PrometheusConfig")])
    int64 = (_FIELD.TYPE_MESSAGE, optional, ".google.protobuf.Int64Value")
    message("BatchingParameters", [
        ("max_batch_size", *int64), ("batch_timeout_micros", *int64), ("max_enqueued_batches", *int64),
        ("num_batch_threads", *int64),
        ("thread_pool_name", _FIELD.TYPE_MESSAGE, optional, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", _FIELD.TYPE_INT64, repeated, None),
        ("pad_variable_length_inputs", _FIELD.TYPE_BOOL, optional, None)])
    return proto


_pool = descriptor_pool.DescriptorPool()
_pool.AddSerializedFile(descriptor_pb2.FileDescriptorProto.FromString(
    wrappers_pb2.DESCRIPTOR.serialized_pb).SerializeToString())
_pool.AddSerializedFile(_file().SerializeToString())
MonitoringConfig = message_factory.GetMessageClass(_pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))
BatchingParameters = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def parse_text_file(path: str | Path, message_class, flag: str):
    """A text-format proto file, or a ConfigError naming the flag, the file and the parser's complaint."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{flag} {path}: file not found")
    try:
        return text_format.Parse(path.read_text(), message_class())
    except text_format.ParseError as exc:
        raise ConfigError(f"{flag} {path}: not a {message_class.DESCRIPTOR.name} text proto: {exc}") from None
