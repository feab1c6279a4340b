"""Test-only failure injection: make the next N model runs raise, as a crashed runtime would.

Off unless the server's environment sets FACEDET_FAULT_INJECTION to the absolute path of a
control file. It is deliberately no setting of `ServerConfig`: no flag, no config-file key, no
row in the README's table, nothing `--help` offers, so a deployment cannot switch it on by
copying a documented option. A value that is not an absolute path ("1", "true") is refused at
startup, so a boolean-looking accident fails loudly instead of arming anything, and an armed
server logs `fault_injection_enabled` at startup and `fault_injected` for every fault.

While armed, each model run (`Backend.run`, `DeviceBackend.forward`) first looks for the control
file. The file holds one line, `COUNT [KIND]`: the next COUNT runs of this process raise KIND,
`exception` (a plain RuntimeError, the default) or `cuda` (a RuntimeError worded as PyTorch
words a CUDA fault); or `COUNT slow MS`: the next COUNT runs each take MS milliseconds longer and
then succeed, a server slower than any load on any machine (a slow model alone is slow only on a
slow or busy machine). The file is consumed when read (renamed away, then removed), so writing it
again adds more faults. It is obeyed only when owned by the server's user and writable by no one
else, so another account on the host cannot inject faults into a test server either.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import structlog

from facedet_server.model.spec import ModelSpec
from facedet_server.runtime.base import Backend, DeviceBackend

if TYPE_CHECKING:
    import torch

log = structlog.get_logger("facedet.faults")

ENV = "FACEDET_FAULT_INJECTION"
KINDS = ("exception", "cuda", "slow")
GRAMMAR = "COUNT [exception|cuda] or COUNT slow MS"
MAX_SLOW_MS = 60_000.0  # a typo of a few zeros must not hang a test server for hours
_MESSAGES = {
    "exception": "injected fault ({env}): model run failed",
    # How PyTorch reports an asynchronous kernel fault; the text callers see is what matters.
    "cuda": "CUDA error: an illegal memory access was encountered (injected by {env})",
}


class FaultControl:
    """The control file and the faults it has armed in this process (shared by every backend
    this process loads, so a reloaded runtime still obeys what was armed before)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        # The faults still to come, in order: (kind, milliseconds; 0 unless kind is "slow").
        self._pending: list[tuple[str, float]] = []

    def _take_file(self) -> None:
        """Move what the control file arms into `_pending` (called under the lock)."""
        taken = self.path.with_name(f"{self.path.name}.taken.{os.getpid()}")
        try:
            os.replace(self.path, taken)
        except FileNotFoundError:
            return
        try:
            info = os.lstat(taken)
            text = taken.read_text(errors="replace").strip()
        finally:
            taken.unlink(missing_ok=True)
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            log.warning(
                "fault_control_ignored", path=str(self.path), reason="not owned by us or writable by others"
            )
            return
        try:
            count, kind, ms = parse_control(text)
        except ValueError:
            log.warning(
                "fault_control_ignored", path=str(self.path), reason=f"expected {GRAMMAR!r}, got {text!r}"
            )
            return
        self._pending.extend([(kind, ms)] * count)
        log.warning("fault_armed", count=count, kind=kind, ms=ms, pending=len(self._pending))

    def check(self, what: str) -> None:
        """Raise the next armed fault, if any; `what` names the run for the log."""
        with self._lock:
            self._take_file()
            if not self._pending:
                return
            kind, ms = self._pending.pop(0)
            left = len(self._pending)
        log.warning("fault_injected", kind=kind, run=what, pending=left)
        if kind == "slow":
            time.sleep(ms / 1000)  # outside the lock: other workers' runs are slowed, not serialised
            return
        raise RuntimeError(_MESSAGES[kind].format(env=ENV))


def parse_control(text: str) -> tuple[int, str, float]:
    """(count, kind, milliseconds) from a control file's text; ValueError if it is not GRAMMAR."""
    words = text.split()
    if not words:
        raise ValueError(text)
    count = int(words[0])
    kind = words[1] if len(words) > 1 else "exception"
    if count < 0 or kind not in KINDS:
        raise ValueError(text)
    if kind != "slow":
        if len(words) > 2:
            raise ValueError(text)
        return count, kind, 0.0
    if len(words) != 3:
        raise ValueError(text)
    ms = float(words[2])
    if not 0 < ms <= MAX_SLOW_MS:  # also refuses nan and inf
        raise ValueError(text)
    return count, kind, ms


def fault_control(environ: Mapping[str, str]) -> FaultControl | None:
    """The control `environ` arms, or None (the normal case: no fault can ever be injected)."""
    value = environ.get(ENV, "")
    if not value:
        return None
    path = Path(value)
    if not path.is_absolute():
        raise ValueError(
            f"{ENV}={value!r}: fault injection is a test-only switch that takes the absolute path of "
            "a control file (docs/reliability.md, Faults); unset it to serve normally"
        )
    log.warning("fault_injection_enabled", control=str(path), note="test-only; never set this in production")
    return FaultControl(path)


class FaultyBackend:
    """`backend`, with `control` consulted before each model run. Offers a device backend
    (wrapped the same way) exactly where `backend` does."""

    def __init__(self, backend: Backend, control: FaultControl) -> None:
        self.inner = backend
        self.control = control
        self.spec: ModelSpec = backend.spec
        self.name = backend.name
        self.device = backend.device
        self.max_batch = backend.max_batch
        self.model_sha256 = backend.model_sha256

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        self.control.check(f"run({batch.shape[0]})")
        return self.inner.run(batch)

    def device_backend(self) -> DeviceBackend | None:
        device = self.inner.device_backend()
        return None if device is None else FaultyDeviceBackend(device, self.control)

    def close(self) -> None:
        self.inner.close()


class FaultyDeviceBackend(FaultyBackend):
    """A `DeviceBackend` whose `forward` consults the control first."""

    inner: DeviceBackend

    def __init__(self, backend: DeviceBackend, control: FaultControl) -> None:
        super().__init__(backend, control)

    @property
    def torch_device(self) -> torch.device:
        return self.inner.torch_device

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    def stream(self) -> torch.cuda.Stream | None:
        return self.inner.stream()

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.control.check(f"forward({batch.shape[0]})")
        return self.inner.forward(batch)

    def warm_up(self, shapes: list[tuple[int, int]]) -> None:
        self.inner.warm_up(shapes)

    def device_settings(self) -> dict[str, object]:
        return {**self.inner.device_settings(), "fault_injection": str(self.control.path)}

    def device_backend(self) -> DeviceBackend:
        return self


def with_faults(backend: Backend, control: FaultControl | None) -> Backend:
    """`backend` itself when no control is armed (production: not even a wrapper)."""
    return backend if control is None else FaultyBackend(backend, control)
