"""facedet's model converter: our PyTorch YOLOv5-Face, weight import from upstream ONNX exports and
training checkpoints, ONNX export with dynamic shapes, and TensorRT engine builds.

Needs the `convert` extra (torch, onnx); the serving code never imports this package unless asked
to convert.
"""

__version__ = "0.1.0"
