"""What a model is (`spec`: strides, anchors, I/O, input shape), how our network describes itself
(`network`), and model files: the registry, download and sha256 checks (`files`).
"""
