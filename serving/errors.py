"""``ServingError``: a request's failure as TF Serving reports it, a gRPC status code and a message
that names the field, with the HTTP status the REST API answers for that code."""

from __future__ import annotations

import re
from http import HTTPStatus

import grpc


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def op_error_message(error) -> str:
    """The readable part of a TF runtime error (a failed ``tf.debugging.assert_*`` in a signature)."""
    text = error.message
    match = re.search(r"assertion failed: \[([^\]]*)\]", text)
    if match:
        return match.group(1).strip()
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


HTTP_STATUS = {grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
               grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
               grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
               grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
               grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
               grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
               grpc.StatusCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR}
