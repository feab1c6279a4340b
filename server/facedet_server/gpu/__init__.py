"""The GPU data path (torch-CUDA): nvJPEG decode, letterbox on the GPU, model, batched NMS.

Imports torch, so the CPU server never imports this package.
"""
