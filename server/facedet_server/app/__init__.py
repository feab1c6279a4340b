"""Process wiring: settings (`config`), the serve and models commands, the gRPC server's lifecycle
(`server`), the supervisor of several processes, the engine process's entry point, logging and
memory trimming.
"""
