"""facedet's converter: our network (`facedet_nn`) exported as ONNX with dynamic shapes and the
model's description in its metadata, TensorRT engine builds, and the `facedet convert` command.

Needs the `convert` extra (torch, onnx). It sits above the server (it reads the model description,
the image decoder and the letterbox from `facedet_server`); nothing in the server imports it.
"""

__version__ = "0.1.0"
