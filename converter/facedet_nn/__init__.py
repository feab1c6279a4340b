"""Our PyTorch YOLOv5-Face family: the configurations (`configs`), the building blocks (`blocks`),
the network with its head decoding (`model`), and weight import from upstream ONNX exports
(`onnx_weights`) and training checkpoints (`checkpoint`).

It depends on nothing else of facedet, so the server's torch runtime and the converter both
build on it.
"""
