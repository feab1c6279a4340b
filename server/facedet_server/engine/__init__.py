"""The model in one process, gRPC in several: an engine process owns the model (one CUDA
context, full batches from every front end) and front-end processes serve gRPC and feed it over
a unix socket. `wire` frames messages, `server` runs the engine, `pipeline` is the front ends'
side of it."""
