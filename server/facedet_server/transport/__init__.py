"""faces -> the wire: gRPC today (`grpc`: servicer, proto mapping, health)."""
