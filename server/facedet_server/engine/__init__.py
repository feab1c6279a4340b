"""The model in one process, gRPC in several: an engine process owns the model (one CUDA
context, full batches from every front end) and front-end processes serve gRPC and feed it over
a unix socket. `protocol` is the socket's schema (msgspec Structs), `codec` converts the
pipeline's dataclasses to and from it, `wire` frames messages with their raw buffers, `server`
runs the engine, `client` is the front ends' side of it."""
