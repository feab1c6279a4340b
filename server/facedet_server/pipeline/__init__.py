"""The stages composed into what the service schedules: `prepare` (bytes -> tensor-ready input) and
`infer_batch` (-> faces), on the host (`host`) or with decode, letterbox and NMS on the GPU
(`gpu`).
"""
