"""The gRPC transport: the thin servicer (`servicer`), the proto <-> domain mapping
(`messages`) and the health service."""
