"""facedet server: the detection pipeline, its backends, the dynamic batcher and the gRPC service."""

__version__ = "0.1.0"
