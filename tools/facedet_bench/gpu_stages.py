"""Where a GPU batch's time goes: `python -m facedet_bench.gpu_stages --model M --image I`.

Runs each stage of `GpuPipeline.infer_batch` on its own, with a device synchronisation after
it, for one batch of copies of one JPEG: the header checks (`prepare`), wrapping the bytes for
nvJPEG, the nvJPEG batch decode, the letterbox into the model's batch, the model (CUDA graph)
and the score filter + NMS + copy back. Each figure is the median wall time of `--iters` runs,
so it includes the host-side Python and launch cost as well as the GPU time; the last row is the
whole `infer_batch` without the intermediate synchronisations. Then two throughput checks:
nvJPEG decode from 1 and 2 threads (torchvision keeps one decoder per process behind a lock),
and the whole batch from 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from facedet_server.app.config import ServerConfig
from facedet_server.app.server import limits_for
from facedet_server.faces.gpu_select import select_faces_batch
from facedet_server.faces.options import Options
from facedet_server.image.inputs import EncodedImage
from facedet_server.image.nvjpeg import jpeg_tensors
from facedet_server.pipeline.gpu import GpuPipeline
from facedet_server.runtime.torch_cuda import TorchCudaBackend
from facedet_server.tensor.gpu_letterbox import letterbox_batch


def _median_ms(step: Callable[[], Any], iters: int) -> float:
    step()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def threaded_rate(step: Callable[[], int], threads: int, seconds: float, setup: Callable[[], None]) -> float:
    """Items per second with `threads` threads each calling `step` (which returns its count)
    on its own CUDA stream, after each ran `setup` (graphs are per thread)."""
    done = [0] * threads
    ready = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def loop(slot: int) -> None:
        with torch.cuda.stream(torch.cuda.Stream()), torch.inference_mode():  # type: ignore[no-untyped-call]
            setup()
            ready.wait()
            ready.wait()
            while time.perf_counter() < stop_at[0]:
                done[slot] += step()
            torch.cuda.current_stream().synchronize()

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    ready.wait()
    start = time.perf_counter()
    stop_at[0] = start + seconds
    ready.wait()
    for w in workers:
        w.join()
    return sum(done) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--compile-mode", choices=("off", "default", "max-autotune"), default="off")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from torchvision.io import decode_jpeg

    backend = TorchCudaBackend(args.model, max_batch=args.batch, compile_mode=args.compile_mode)
    detector = GpuPipeline(backend, limits_for(ServerConfig()))
    data = args.image.read_bytes()
    image = EncodedImage(data)
    n: int = args.batch
    items = [detector.prepare(image, Options()) for _ in range(n)]
    w, h = detector.target_for(items[0].width, items[0].height)
    backend.warm_up([(w, h)])  # this shape only: every bucket is a capture

    state: dict[str, Any] = {}

    def wrap() -> None:
        state["datas"] = jpeg_tensors([it.jpeg or b"" for it in items])

    def decode() -> None:
        state["images"] = decode_jpeg(state["datas"], device=backend.torch_device)

    def letterbox() -> None:
        batch = torch.empty((n, 3, h, w), dtype=backend.dtype, device=backend.torch_device)
        state["maps"] = letterbox_batch(
            state["images"], batch, backend.spec.pad_value, backend.spec.scale, [it.scale for it in items]
        )
        state["batch"] = batch

    def model() -> None:
        state["candidates"] = backend.forward(state["batch"])

    def post() -> None:
        select_faces_batch(
            state["candidates"],
            [it.options for it in items],
            state["maps"],
            [(it.width, it.height) for it in items],
        )

    rows: list[dict[str, Any]] = []
    stages: list[tuple[str, Callable[[], Any]]] = [
        ("prepare (header check) x batch", lambda: [detector.prepare(image, Options()) for _ in range(n)]),
        ("wrap bytes for nvJPEG", wrap),
        ("nvJPEG batch decode", decode),
        ("letterbox into batch", letterbox),
        ("model (CUDA graph)", model),
        ("score filter + NMS + copy back", post),
        ("whole infer_batch", lambda: detector.infer_batch(items)),
    ]
    with torch.cuda.stream(backend.stream()), torch.inference_mode():
        for name, step in stages:
            ms = _median_ms(step, args.iters)
            rows.append({"stage": name, "batch": n, "ms": round(ms, 3), "img_per_s": round(n / ms * 1000, 1)})
            print(f"{name:<34} {ms:8.3f} ms  ({n / ms * 1000:9.1f} img/s)", flush=True)

    def decode_count() -> int:
        torch.cuda.current_stream().synchronize()
        decode_jpeg(jpeg_tensors([data] * n), device=backend.torch_device)
        return n

    def batch_count() -> int:
        detector.infer_batch([detector.prepare(image, Options()) for _ in range(n)])
        return n

    for label, step, setup in (
        ("nvJPEG decode only", decode_count, lambda: None),
        ("whole batch", batch_count, lambda: backend.warm_up([(w, h)])),
    ):
        for threads in (1, 2, 3):
            rate = threaded_rate(step, threads, args.seconds, setup)
            rows.append({"stage": f"{label}, {threads} thread(s)", "batch": n, "img_per_s": round(rate, 1)})
            print(f"{label}, {threads} thread(s): {rate:9.1f} img/s", flush=True)
    device = torch.cuda.get_device_name(backend.torch_device)
    print(f"device: {device}; {args.image.name} -> {w}x{h}, batch {n}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
