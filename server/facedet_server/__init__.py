"""facedet server. Its subpackages follow the data flow, each importing only those below it
(held by the import-linter contracts in pyproject.toml):

model (what a model is, model files) -> image (bytes -> pixels) -> tensor (letterbox) ->
runtime (tensor -> raw output: ONNX Runtime, torch-CUDA, TensorRT) -> faces (raw output ->
faces) -> pipeline (the stages composed) -> serving (batcher, service) and engine (the model in
another process) -> transport (gRPC) -> app (settings, processes, the serve command).
"""

__version__ = "0.1.0"
