"""GPU JPEG decoders side by side: `python -m facedet_server.gpu.bench_jpeg --image I [--check DIR]`.

For each decoder (torchvision's nvJPEG, the hardware JPEG engines, both with threads taking
turns) and each thread count, the decode rate of batches of copies of one JPEG, every thread on
its own CUDA stream with its own decoder state where the decoder allows. With
`--check DIR`, each decoder's pixels for every JPEG in DIR against libjpeg-turbo's on the CPU
(max and mean absolute difference), the number the detector tests care about.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg
import torch

from facedet_server.gpu.jpeg import AlternatingJpeg, GpuJpegDecoder, TorchvisionJpeg
from facedet_server.gpu.nvjpeg_hw import NvJpegHardware


def decoders(device: torch.device, names: list[str]) -> list[tuple[str, Callable[[], GpuJpegDecoder]]]:
    """(label, factory) for each decoder asked for."""
    factories: dict[str, Callable[[], GpuJpegDecoder]] = {
        "torchvision": lambda: TorchvisionJpeg(device),
        "hardware": lambda: NvJpegHardware(device),
        "both": lambda: AlternatingJpeg([NvJpegHardware(device), TorchvisionJpeg(device)]),
    }
    return [(name, factories[name]) for name in names]


def rate(decoder: GpuJpegDecoder, data: bytes, batch: int, threads: int, seconds: float) -> float:
    """Images per second with `threads` threads decoding batches of `batch` copies."""
    done = [0] * threads
    ready = threading.Barrier(threads + 1)
    stop_at = [0.0]
    failed: list[str] = []

    def loop(slot: int) -> None:
        with torch.cuda.stream(torch.cuda.Stream()):  # type: ignore[no-untyped-call]
            stream = torch.cuda.current_stream()
            try:
                decoder.decode([data] * batch)  # first call per thread creates its decoder
                stream.synchronize()
            except Exception as exc:  # reported below; the barrier must still be passed
                failed.append(f"thread {slot}: {exc}")
            ready.wait()
            ready.wait()
            while time.perf_counter() < stop_at[0] and not failed:
                images = decoder.decode([data] * batch)
                stream.synchronize()
                done[slot] += sum(image is not None for image in images)

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    ready.wait()
    start = time.perf_counter()
    stop_at[0] = start + seconds
    ready.wait()
    for w in workers:
        w.join()
    if failed:
        raise RuntimeError("; ".join(failed))
    return sum(done) / (time.perf_counter() - start)


def pixel_check(decoder: GpuJpegDecoder, paths: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        data = path.read_bytes()
        (image,) = decoder.decode([data])
        if image is None:
            rows.append({"image": path.name, "decoded": False})
            continue
        got = image.cpu().numpy().astype(np.int16)
        want = np.asarray(simplejpeg.decode_jpeg(data, colorspace="RGB")).transpose(2, 0, 1).astype(np.int16)
        if got.shape[0] == 1:  # torchvision keeps grayscale as one channel
            got = np.repeat(got, 3, axis=0)
        diff = np.abs(got - want) if got.shape == want.shape else None
        rows.append(
            {
                "image": path.name,
                "decoded": True,
                "shape": list(got.shape),
                "max_abs": int(diff.max()) if diff is not None else None,
                "mean_abs": round(float(diff.mean()), 3) if diff is not None else None,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", type=Path, required=True, help="the JPEG to decode in batches")
    parser.add_argument("--check", type=Path, help="a folder of JPEGs to compare with libjpeg-turbo")
    parser.add_argument("--decoders", default="torchvision,hardware,both")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", default="1,2,3,4")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    data = args.image.read_bytes()
    checks = sorted(args.check.glob("*.jpg")) if args.check else []
    rows: list[dict[str, Any]] = []
    for label, factory in decoders(device, args.decoders.split(",")):
        try:
            decoder = factory()
        except Exception as exc:  # a backend this GPU lacks: say so, go on with the others
            print(f"{label:<22} unavailable: {exc}", flush=True)
            continue
        for threads in (int(t) for t in args.threads.split(",")):
            try:
                img_s = rate(decoder, data, args.batch, threads, args.seconds)
            except RuntimeError as exc:
                print(f"{label:<22} {threads} thread(s): failed: {exc}", flush=True)
                continue
            rows.append(
                {"decoder": label, "threads": threads, "batch": args.batch, "img_per_s": round(img_s, 1)}
            )
            print(f"{label:<22} {threads} thread(s) batch {args.batch}: {img_s:9.1f} img/s", flush=True)
        for row in pixel_check(decoder, checks):
            rows.append({"decoder": label, **row})
            print(f"{label:<22} vs libjpeg-turbo: {row}", flush=True)
    print(f"device: {torch.cuda.get_device_name(device)}; {args.image.name}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
