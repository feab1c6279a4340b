"""The one exception the client raises for a failed call."""

from __future__ import annotations

import grpc


class FaceDetectorError(Exception):
    """A call failed: `code` is the gRPC status name (e.g. "UNAVAILABLE", "INVALID_ARGUMENT"),
    `message` the server's (or gRPC's) explanation."""

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
