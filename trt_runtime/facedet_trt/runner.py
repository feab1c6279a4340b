"""Run a TensorRT engine from many threads: a pool of slots, each one execution context with its own
stream, event and buffers.

A slot is used by one call at a time, so nothing inside it needs a lock; the pool is the only
shared state. Buffers are allocated once, sized for the largest shape any profile admits, and
reused: per call there is no CUDA allocation, only

    batch -> pinned input (numpy copy) -> device (async) -> execute_async_v3 -> device outputs
          -> pinned outputs (async) -> event record + wait -> fresh numpy arrays

and with `cuda_graphs=True` the three middle steps become one graph launch once a shape has been
seen on a slot (one graph per slot and input shape, since a graph bakes in pointers and sizes).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facedet_trt import cuda
from facedet_trt.plan import Engine, EngineError

log = logging.getLogger("facedet.trt")

Shape = tuple[int, ...]


@dataclass
class _Captured:
    graph: cuda.CudaGraph
    output_shapes: dict[str, Shape]


@dataclass
class _Slot:
    index: int
    context: Any
    stream: cuda.Stream
    done: cuda.Event
    host_in: cuda.PinnedBuffer
    dev_in: cuda.DeviceBuffer
    host_out: dict[str, cuda.PinnedBuffer]
    dev_out: dict[str, cuda.DeviceBuffer]
    profile: int = 0
    input_shape: Shape | None = None
    output_shapes: dict[str, Shape] = field(default_factory=dict)
    graphs: dict[tuple[int, Shape], _Captured] = field(default_factory=dict)
    no_graph: set[tuple[int, Shape]] = field(default_factory=set)

    def resources(self) -> list[Any]:
        # Release order: graphs, then buffers, then the event and the stream they were used on.
        return [
            *(c.graph for c in self.graphs.values()),
            self.host_in,
            self.dev_in,
            *self.host_out.values(),
            *self.dev_out.values(),
            self.done,
            self.stream,
        ]


class TensorRTRunner:
    """Thread-safe inference on one engine with `num_streams` batches in flight at most.

    `run` blocks while every slot is busy. `close` waits for runs in flight, then frees all CUDA
    memory, streams, events, graphs and contexts; the engine itself stays the caller's.
    `num_streams` is an upper bound: `self.num_streams` says how many contexts TensorRT granted.
    """

    def __init__(
        self,
        engine: Engine,
        num_streams: int = 2,
        *,
        output_names: Sequence[str] | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        if num_streams < 1:
            raise ValueError(f"num_streams must be >= 1, got {num_streams}")
        self.engine = engine
        self.device = engine.device
        self.cuda_graphs = cuda_graphs
        self.input_name = engine.input.name
        self.input_dtype = np.dtype(engine.input.dtype)
        engine_outputs = [t.name for t in engine.outputs]
        self.output_names = list(output_names) if output_names is not None else engine_outputs
        if sorted(self.output_names) != sorted(engine_outputs):
            raise EngineError(
                f"output_names {self.output_names} are not the engine's outputs {engine_outputs}"
            )
        self.output_dtypes = {t.name: np.dtype(t.dtype) for t in engine.outputs}
        self.profiles = engine.profiles
        self.max_batch = max(p.max[0] for p in self.profiles)

        self._cond = threading.Condition()
        self._closed = False
        self._slots: list[_Slot] = []
        self._free: list[_Slot] = []
        self._busy = 0
        try:
            cuda.set_device(self.device)
            first = engine.create_context()
            in_bytes, out_bytes = self._max_sizes(first)
            self._slots.append(self._make_slot(0, first, in_bytes, out_bytes))
            for i in range(1, num_streams):
                try:
                    context = engine.create_context()
                    slot = self._make_slot(i, context, in_bytes, out_bytes)
                except EngineError as exc:
                    # Older TensorRT let only one context at a time hold a profile. Serve with the
                    # contexts we have rather than not at all; the log says why there are fewer.
                    log.warning("TensorRT runner: stopping at %d stream(s) of %d: %s", i, num_streams, exc)
                    break
                self._slots.append(slot)
        except BaseException:
            for slot in self._slots:
                self._destroy(slot)
            self._slots = []
            self._closed = True
            raise
        self._free = list(self._slots)
        self.num_streams = len(self._slots)

    # ---- setup ----

    def _max_sizes(self, context: Any) -> tuple[int, dict[str, int]]:
        """Bytes of the largest input and of each largest output over all profiles' shapes."""
        in_bytes = 0
        out_bytes = dict.fromkeys(self.output_names, 0)
        with cuda.Stream() as stream:
            for p, profile in enumerate(self.profiles):
                self._select_profile(context, p, stream)
                stream.synchronize()
                # Output sizes need not peak at the max input in every model; checking all three
                # corners costs nothing.
                for shape in (profile.min, profile.opt, profile.max):
                    in_bytes = max(in_bytes, math.prod(shape) * self.input_dtype.itemsize)
                    for name, out_shape in self._set_shape(context, shape).items():
                        n = math.prod(out_shape) * self.output_dtypes[name].itemsize
                        out_bytes[name] = max(out_bytes[name], n)
            self._select_profile(context, 0, stream)
            stream.synchronize()
        return in_bytes, out_bytes

    def _make_slot(self, index: int, context: Any, in_bytes: int, out_bytes: dict[str, int]) -> _Slot:
        owned: list[Any] = []
        try:
            stream = cuda.Stream()
            owned.append(stream)
            # Blocking sync: waiting threads sleep instead of spinning a core each.
            done = cuda.Event(blocking_sync=True)
            owned.append(done)
            host_in = cuda.PinnedBuffer(in_bytes // self.input_dtype.itemsize, self.input_dtype)
            owned.append(host_in)
            dev_in = cuda.DeviceBuffer(in_bytes)
            owned.append(dev_in)
            host_out: dict[str, cuda.PinnedBuffer] = {}
            dev_out: dict[str, cuda.DeviceBuffer] = {}
            for name in self.output_names:
                dt = self.output_dtypes[name]
                host_out[name] = cuda.PinnedBuffer(out_bytes[name] // dt.itemsize, dt)
                owned.append(host_out[name])
                dev_out[name] = cuda.DeviceBuffer(out_bytes[name])
                owned.append(dev_out[name])
        except BaseException:
            for resource in reversed(owned):
                with contextlib.suppress(Exception):
                    resource.close()
            raise
        slot = _Slot(index, context, stream, done, host_in, dev_in, host_out, dev_out)
        try:
            # Explicitly, rather than trusting the default: TensorRT refuses here, with a message,
            # if this context may not share profile 0 with another.
            self._select_profile(context, 0, stream)
            stream.synchronize()
            self._bind(slot)
        except BaseException:
            self._destroy(slot)
            raise
        return slot

    def _bind(self, slot: _Slot) -> None:
        # Addresses never change for a slot, so binding once (and after a profile switch) suffices.
        ctx = slot.context
        if not ctx.set_tensor_address(self.input_name, slot.dev_in.ptr):
            raise EngineError(f"set_tensor_address({self.input_name!r}) failed: {self.engine.last_errors()}")
        for name, buf in slot.dev_out.items():
            if not ctx.set_tensor_address(name, buf.ptr):
                raise EngineError(f"set_tensor_address({name!r}) failed: {self.engine.last_errors()}")

    def _select_profile(self, context: Any, index: int, stream: cuda.Stream) -> None:
        self.engine.select_profile(context, index, stream.ptr)

    def _set_shape(self, context: Any, shape: Shape) -> dict[str, Shape]:
        return self.engine.set_input_shape(context, shape)

    # ---- pool ----

    def _acquire(self) -> _Slot:
        with self._cond:
            while not self._free and not self._closed:
                self._cond.wait()
            if self._closed:
                raise RuntimeError("the TensorRT runner is closed")
            self._busy += 1
            return self._free.pop()

    def _release(self, slot: _Slot) -> None:
        with self._cond:
            self._busy -= 1
            if self._closed:
                # close() ran while this slot was busy: it left the slot for us to free.
                self._destroy(slot)
            else:
                self._free.append(slot)
            self._cond.notify_all()

    # ---- running ----

    def profile_for(self, shape: Shape) -> int:
        return self.engine.profile_for(shape)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Outputs for an NCHW `batch`, as new arrays in `output_names` order."""
        batch = np.asarray(batch)
        shape: Shape = tuple(int(d) for d in batch.shape)
        if batch.ndim != 4:
            raise ValueError(f"expected an NCHW batch, got shape {shape}")
        profile = self.profile_for(shape)
        slot = self._acquire()
        ok = False
        try:
            # The current device is per thread, and callers' threads may never have set it.
            cuda.set_device(self.device)
            outputs = self._run_on(slot, batch, shape, profile)
            ok = True
            return outputs
        finally:
            if not ok:
                # A free slot must be idle: wait out whatever the failed call left queued.
                with contextlib.suppress(Exception):
                    slot.stream.synchronize()
            self._release(slot)

    def _run_on(self, slot: _Slot, batch: np.ndarray, shape: Shape, profile: int) -> list[np.ndarray]:
        staged = slot.host_in.view(shape)
        # same_kind: float64 -> float32 and float32 -> float16 (an fp16-I/O engine) are fine;
        # float -> int is refused rather than silently truncated.
        np.copyto(staged, batch, casting="same_kind")
        in_bytes = staged.nbytes
        key = (profile, shape)
        captured = slot.graphs.get(key) if self.cuda_graphs else None
        if captured is not None:
            captured.graph.launch(slot.stream)
            out_shapes = captured.output_shapes
        else:
            out_shapes = self._enqueue(slot, shape, profile, in_bytes)
        slot.done.record(slot.stream)
        slot.done.synchronize()
        if self.cuda_graphs and captured is None and key not in slot.no_graph:
            # The plain run above doubles as the warm-up TensorRT needs after a shape change
            # before it may be captured; capturing executes nothing, so its outputs stay put.
            self._capture(slot, key, in_bytes, out_shapes)
        return [slot.host_out[name].view(out_shapes[name]).copy() for name in self.output_names]

    def _prepare(self, slot: _Slot, shape: Shape, profile: int) -> dict[str, Shape]:
        if slot.profile != profile:
            self._select_profile(slot.context, profile, slot.stream)
            slot.profile = profile
            slot.input_shape = None
            self._bind(slot)
            # Conservative: graphs were captured against the old profile's state.
            for captured in slot.graphs.values():
                captured.graph.close()
            slot.graphs.clear()
        if slot.input_shape != shape:
            slot.output_shapes = self._set_shape(slot.context, shape)
            slot.input_shape = shape
        return slot.output_shapes

    def _enqueue(self, slot: _Slot, shape: Shape, profile: int, in_bytes: int) -> dict[str, Shape]:
        out_shapes = self._prepare(slot, shape, profile)
        self._enqueue_work(slot, in_bytes, out_shapes)
        return out_shapes

    def _enqueue_work(self, slot: _Slot, in_bytes: int, out_shapes: dict[str, Shape]) -> None:
        cuda.memcpy_htod_async(slot.dev_in, slot.host_in, slot.stream, in_bytes)
        if not slot.context.execute_async_v3(slot.stream.ptr):
            raise EngineError(f"execute_async_v3 failed: {self.engine.last_errors()}")
        for name in self.output_names:
            nbytes = math.prod(out_shapes[name]) * self.output_dtypes[name].itemsize
            cuda.memcpy_dtoh_async(slot.host_out[name], slot.dev_out[name], slot.stream, nbytes)

    def _capture(
        self, slot: _Slot, key: tuple[int, Shape], in_bytes: int, out_shapes: dict[str, Shape]
    ) -> None:
        graph = cuda.CudaGraph()
        try:
            with graph.capture(slot.stream):
                self._enqueue_work(slot, in_bytes, out_shapes)
        except (cuda.CudaError, EngineError) as exc:
            graph.close()
            slot.no_graph.add(key)
            log.warning("CUDA graph capture failed for input %s; running it without a graph: %s", key[1], exc)
            return
        slot.graphs[key] = _Captured(graph, dict(out_shapes))

    # ---- teardown ----

    @property
    def graphs_captured(self) -> int:
        return sum(len(s.graphs) for s in self._slots)

    def _destroy(self, slot: _Slot) -> None:
        with contextlib.suppress(Exception):
            slot.stream.synchronize()
        # The context first: TensorRT may still reference the buffers through it.
        slot.context = None
        for resource in slot.resources():
            try:
                resource.close()
            except Exception as exc:
                log.warning("freeing %s of slot %d failed: %s", type(resource).__name__, slot.index, exc)
        slot.graphs.clear()

    def close(self, timeout: float | None = 60.0) -> None:
        """Free everything. Runs in flight finish first; their slots are freed as they return."""
        with self._cond:
            if not self._closed:
                self._closed = True
                idle, self._free = self._free, []
                for slot in idle:
                    self._destroy(slot)
                self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._busy == 0, timeout):
                raise TimeoutError(f"{self._busy} TensorRT run(s) still in flight after {timeout}s")

    def __enter__(self) -> TensorRTRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
