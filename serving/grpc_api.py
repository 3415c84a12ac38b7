"""TF Serving's gRPC services over a ``Predictor``: ``tensorflow.serving.PredictionService``
(Predict, GetModelMetadata) and ``tensorflow.serving.ModelService`` (GetModelStatus)."""

from __future__ import annotations

import time

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.client import tensor_proto
from serving.errors import invalid
from serving.models import ModelManager
from serving.predictor import DEFAULT_SIGNATURE, Predictor, ServingError, version_status


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
        started, model, spec = time.perf_counter(), None, request.model_spec

        def observe(code: str):
            self.predictor.observe("grpc", spec.name, model, spec.signature_name, code, time.perf_counter() - started)

        try:
            version, label = _spec_version(request.model_spec)
            model = self.predictor.model(request.model_spec.name, version, label)
            decoding = time.perf_counter()
            inputs = {}
            for key, proto in request.inputs.items():
                if proto.tensor_shape.unknown_rank:
                    raise invalid(f"input {key!r}: the tensor's shape must be given (unknown_rank is set)")
                # before make_ndarray, which would fill a declared shape of 10^9 from one value
                self.predictor.limits.check_shape(key, [d.size for d in proto.tensor_shape.dim])
                try:
                    inputs[key] = tf.make_ndarray(proto)
                except Exception as exc:
                    raise invalid(f"input {key!r}: not a valid TensorProto ({type(exc).__name__}: {exc})") from None
            self.predictor.observe_stage(model, "decode", time.perf_counter() - decoding)
            if not context.is_active():  # the client gave up (deadline or cancel): skip the work
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "the request's deadline expired before it ran")
            outputs = self.predictor.predict(model, request.model_spec.signature_name, inputs,
                                             tuple(request.output_filter))
        except ServingError as error:
            observe(error.code.name)
            return _abort(context, error)
        except Exception:
            observe("UNKNOWN")
            raise
        encoding = time.perf_counter()
        response = predict_pb2.PredictResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tensor_proto(value))
        self.predictor.observe_stage(model, "encode", time.perf_counter() - encoding)
        observe("OK")
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        try:
            fields = list(request.metadata_field)
            if fields != ["signature_def"]:
                raise invalid(f"metadata_field must be ['signature_def'], got {fields}")
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
            version, label = _spec_version(request.model_spec)
            statuses = version_status(self.manager, request.model_spec.name, version, label)
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


class _Undecodable:
    """What a request that is not its method's message decodes to (see ``DecodeErrorsAreInvalid``)."""

    def __init__(self, error: Exception):
        self.error = error


class DecodeErrorsAreInvalid(grpc.ServerInterceptor):
    """Bytes that are not the method's request message are INVALID_ARGUMENT with the reason, not
    grpc's INTERNAL "Exception deserializing request!" (which tells a client nothing it can fix)."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        decode, behaviour = handler.request_deserializer, handler.unary_unary
        method = handler_call_details.method.rsplit("/", 1)[-1]

        def tolerant(raw: bytes):
            try:
                return decode(raw)
            except Exception as exc:  # protobuf's DecodeError and friends
                return _Undecodable(exc)

        def checked(request, context):
            if isinstance(request, _Undecodable):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"the request is not a valid {method} request message "
                              f"({type(request.error).__name__}: {str(request.error)[:200]})")
            return behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(checked, request_deserializer=tolerant,
                                                   response_serializer=handler.response_serializer)
