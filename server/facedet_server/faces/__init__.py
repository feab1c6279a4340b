"""raw output -> faces: head decoding (`heads`), NMS, the map back to the client's pixels and the
request's limits (`select`), their torch version for the GPU (`gpu_select`), and the request
options.
"""
