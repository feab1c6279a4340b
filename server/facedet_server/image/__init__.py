"""bytes -> image: JPEG (libjpeg-turbo), PNG and raw frames decoded on the CPU with every limit
checked from the header first (`decode`), and nvJPEG on the GPU (`nvjpeg`).
"""
