"""facedet's benchmarks and profilers, apart from the product: `facedet bench` (`load`: load
through gRPC or in process), the ONNX Runtime layouts (`backends`), and the GPU stages, model,
pipeline and busy-share measurements (`gpu_*`). Every figure they produce is recorded with its
command in docs/benchmarks.md."""
