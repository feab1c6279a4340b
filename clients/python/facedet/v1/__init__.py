"""Generated protobuf and gRPC code for facedet.v1 (from proto/facedet/v1/face_detector.proto).

Do not edit the *_pb2* files: run `make proto`; a test fails when they are stale.
"""
