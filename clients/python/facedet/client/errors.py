"""The exceptions the client raises."""

from __future__ import annotations

import grpc


class FaceDetectorError(Exception):
    """A call failed: `code` is the gRPC status name (e.g. "UNAVAILABLE", "INVALID_ARGUMENT"),
    `message` the server's (or gRPC's, or the client's own) explanation.

    The client raises it too, before any call, for an image file it cannot send (missing, empty,
    not an image): code "INVALID_ARGUMENT", a message naming the file, as the server would."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> FaceDetectorError:
        # Errors raised by calls are also grpc.Call (sync) or AioRpcError; the bare base class
        # carries neither code nor details.
        if isinstance(error, grpc.Call | grpc.aio.AioRpcError):
            code = error.code()
            return cls(code.name if code is not None else "UNKNOWN", error.details() or "")
        return cls("UNKNOWN", str(error))


class NoAnswerError(FaceDetectorError):
    """No FaceDetector answered in time: nothing became ready at the target within the connect
    timeout (code "UNAVAILABLE"), or the call's own timeout ran out first ("DEADLINE_EXCEEDED")."""

    def __init__(self, code: str, target: str, seconds: float) -> None:
        super().__init__(code, f"no FaceDetector answered at {target} within {seconds:g} s")
        self.target = target
        self.seconds = seconds


def invalid_file(path: object, problem: str) -> FaceDetectorError:
    """The error for an image file the client cannot send, worded as the server words bad bytes."""
    return FaceDetectorError("INVALID_ARGUMENT", f"{path}: {problem}")
