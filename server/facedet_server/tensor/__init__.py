"""image -> tensor: the letterbox on the CPU (`letterbox`, with the exact map back to client
pixels) and on the GPU (`gpu_letterbox`).
"""
