"""The 2021 demo's answer format, and the HTTP status of each failure, in one place.

A face is `{"xywh_ratio": [cx, cy, w, h], "conf": c, "landmarks_ratio": [x1, y1, ..., x5, y5]}`:
the box's centre and size and the five landmarks (left eye, right eye, nose, mouth left, mouth
right, as the gRPC API orders them) as fractions of the image's width and height. Errors have
TorchServe's shape, `{"code": HTTP status, "type": ..., "message": ...}`, so a client of the demo
that reads TorchServe errors reads ours.
"""

from __future__ import annotations

import math
from http import HTTPStatus

import msgspec

from facedet_server.errors import Code, DetectError, Overloaded
from facedet_server.pipeline.base import Detection

_ENCODER = msgspec.json.Encoder()

# What each service error becomes over HTTP. A full queue is 503, as TorchServe answers it (its
# clients retry 503s), not 429: the server is out of capacity, not the client over a quota. A
# deadline that passed before the answer is 504, the status proxies give a call that timed out.
HTTP_STATUS = {
    Code.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    Code.RESOURCE_EXHAUSTED: HTTPStatus.SERVICE_UNAVAILABLE,
    Code.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    Code.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    Code.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
}


class BodyTooLarge(DetectError):
    """The request body is over --max-message-bytes (413, not a service error: HTTP's own)."""

    code = Code.RESOURCE_EXHAUSTED


class BadRequest(DetectError):
    """The request is not one this API takes (no body, a form in place of image bytes)."""

    code = Code.INVALID_ARGUMENT


def http_status(error: DetectError) -> HTTPStatus:
    if isinstance(error, BodyTooLarge):
        return HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    return HTTP_STATUS[error.code]


def retry_after(error: DetectError) -> str | None:
    """The `Retry-After` header of a refusal that carries a retry hint: whole seconds (the header
    takes no fractions), rounded up and at least 1, so a client that obeys it never comes back
    before the server said it could; None for any other error."""
    if not isinstance(error, Overloaded) or error.retry_after_ms is None:
        return None
    return str(max(1, math.ceil(error.retry_after_ms / 1000)))


def error_body(error: DetectError) -> bytes:
    return error_json(http_status(error), type(error).__name__, error.message)


def error_json(status: HTTPStatus, kind: str, message: str) -> bytes:
    return _ENCODER.encode({"code": int(status), "type": kind, "message": message})


def faces_body(detection: Detection) -> bytes:
    """The demo's JSON list for `detection`, faces in the order the gRPC response lists them."""
    width, height = float(detection.width), float(detection.height)
    faces = []
    for row in detection.faces.tolist():
        x_min, y_min, x_max, y_max, conf = row[:5]
        landmarks = [value / (width if i % 2 == 0 else height) for i, value in enumerate(row[5:15])]
        faces.append(
            {
                "xywh_ratio": [
                    (x_min + x_max) / 2 / width,
                    (y_min + y_max) / 2 / height,
                    (x_max - x_min) / width,
                    (y_max - y_min) / height,
                ],
                "conf": conf,
                "landmarks_ratio": landmarks,
            }
        )
    return _ENCODER.encode(faces)


def ping_body(serving: bool) -> tuple[HTTPStatus, bytes]:
    """TorchServe's /ping: `{"status": "Healthy"}` with 200 once the model answers, else
    `{"status": "Unhealthy"}` with 500 (while loading and draining)."""
    if serving:
        return HTTPStatus.OK, _ENCODER.encode({"status": "Healthy"})
    return HTTPStatus.INTERNAL_SERVER_ERROR, _ENCODER.encode({"status": "Unhealthy"})
