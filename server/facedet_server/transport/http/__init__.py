"""The HTTP transport: the 2021 TorchServe demo's API (`/predictions/{model}`, `/ping`) on the
same DetectionService, and so the same batcher, as gRPC. Independent of transport.grpc."""
