"""The building blocks of YOLOv5-Face, written from the published architecture.

Every block is made of `Conv` units (convolution, batch norm, SiLU). `Conv.fuse()` folds the batch
norm into the convolution for inference; upstream ONNX exports carry weights in that fused form.

Attribute names (`conv`, `bn`, `cv1`, `stem_2a`, `branch2`, `m`, ...) follow the upstream state-dict
layout so that checkpoint keys map onto ours by name; the only place where the layouts differ is
inside ShuffleV2Block, where upstream uses bare Conv2d/BatchNorm2d pairs (see checkpoint.py).
"""

from __future__ import annotations

import torch
from torch import nn

# Upstream trains with these batch-norm settings (eps matters when folding BN into a conv).
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU, or after fuse(): Conv2d with bias -> SiLU."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        k: int = 1,
        s: int = 1,
        p: int | None = None,
        g: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2 if p is None else p, groups=g, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act: nn.Module = nn.SiLU() if act else nn.Identity()

    @property
    def fused(self) -> bool:
        return not isinstance(self.bn, nn.BatchNorm2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))  # type: ignore[no-any-return]

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the batch norm into the convolution: y = scale * conv(x) + shift, per channel."""
        bn = self.bn
        if not isinstance(bn, nn.BatchNorm2d):
            return
        assert bn.running_var is not None and bn.running_mean is not None
        # float64 keeps the fold exact to float32 precision even for tiny running variances.
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.double() - bn.running_mean.double() * scale
        old = self.conv
        if old.bias is not None:
            shift = shift + old.bias.double() * scale
        self.make_fused()
        assert self.conv.bias is not None
        self.conv.weight.copy_((old.weight.double() * scale.view(-1, 1, 1, 1)).to(old.weight.dtype))
        self.conv.bias.copy_(shift.to(old.weight.dtype))

    def make_fused(self) -> None:
        """Switch to the fused layout (conv with bias, no batch norm) without folding anything,
        for weights that arrive already folded."""
        old = self.conv
        self.conv = nn.Conv2d(
            old.in_channels,
            old.out_channels,
            old.kernel_size,  # type: ignore[arg-type]
            old.stride,  # type: ignore[arg-type]
            old.padding,  # type: ignore[arg-type]
            groups=old.groups,
            bias=True,
            device=old.weight.device,
            dtype=old.weight.dtype,
        )
        self.bn = nn.Identity()


class StemBlock(nn.Module):
    """Input stem, stride 4: a strided conv, then a strided-conv branch beside a 2x2 max-pool branch."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        k: int = 3,
        s: int = 2,
        p: int | None = None,
        g: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.stem_1 = Conv(c_in, c_out, k, s, p, g, act)
        self.stem_2a = Conv(c_out, c_out // 2, 1, 1, 0)
        self.stem_2b = Conv(c_out // 2, c_out, 3, 2, 1)
        self.stem_2p = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.stem_3 = Conv(c_out * 2, c_out, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_1(x)
        return self.stem_3(torch.cat((self.stem_2b(self.stem_2a(x)), self.stem_2p(x)), dim=1))  # type: ignore[no-any-return]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of `groups` groups. Only the channel axis is named, so the export
    stays free of batch and spatial constants (the upstream ONNX baked them in here)."""
    channels = x.shape[1]
    return torch.unflatten(x, 1, (groups, channels // groups)).transpose(1, 2).flatten(1, 2)


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2 unit. Stride 1: half the channels pass through, the other half go through
    pointwise -> depthwise -> pointwise. Stride 2: both halves are computed from the whole input.
    The depthwise convs have batch norm but no activation."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2, 3):
            raise ValueError(f"ShuffleV2Block stride must be 1, 2 or 3, got {stride}")
        half = c_out // 2
        if stride == 1 and c_in != c_out:
            raise ValueError(f"a stride-1 ShuffleV2Block keeps its width, got {c_in} -> {c_out}")
        self.stride = stride
        self.branch1: nn.Sequential | None = None
        if stride > 1:
            self.branch1 = nn.Sequential(
                Conv(c_in, c_in, 3, stride, 1, g=c_in, act=False),
                Conv(c_in, half, 1, 1, 0),
            )
        branch_in = c_in if stride > 1 else half
        self.branch2 = nn.Sequential(
            Conv(branch_in, half, 1, 1, 0),
            Conv(half, half, 3, stride, 1, g=half, act=False),
            Conv(half, half, 1, 1, 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1 is None:
            keep, work = x.chunk(2, dim=1)
            out = torch.cat((keep, self.branch2(work)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class Bottleneck(nn.Module):
    """1x1 conv -> 3x3 conv, with a residual add when asked for and the widths allow it."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True, g: int = 1, e: float = 0.5) -> None:
        super().__init__()
        hidden = int(c_out * e)
        self.cv1 = Conv(c_in, hidden, 1, 1)
        self.cv2 = Conv(hidden, c_out, 3, 1, g=g)
        self.add = shortcut and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y  # type: ignore[no-any-return]


class C3(nn.Module):
    """CSP bottleneck with three convs: cv3(cat(bottlenecks(cv1(x)), cv2(x)))."""

    def __init__(
        self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5
    ) -> None:
        super().__init__()
        hidden = int(c_out * e)
        self.cv1 = Conv(c_in, hidden, 1, 1)
        self.cv2 = Conv(c_in, hidden, 1, 1)
        self.cv3 = Conv(2 * hidden, c_out, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))  # type: ignore[no-any-return]


class SPP(nn.Module):
    """Spatial pyramid pooling: parallel stride-1 max-pools of several sizes, concatenated."""

    def __init__(self, c_in: int, c_out: int, k: tuple[int, ...] | list[int] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = Conv(c_in, hidden, 1, 1)
        self.cv2 = Conv(hidden * (len(k) + 1), c_out, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=size, stride=1, padding=size // 2) for size in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x, *(pool(x) for pool in self.m)], dim=1))  # type: ignore[no-any-return]


class SPPF(nn.Module):
    """SPP with one k x k pool applied three times in a row (same result as SPP(k, 2k-1, 3k-2))."""

    def __init__(self, c_in: int, c_out: int, k: int = 5) -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = Conv(c_in, hidden, 1, 1)
        self.cv2 = Conv(hidden * 4, c_out, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), dim=1))  # type: ignore[no-any-return]


class Focus(nn.Module):
    """Space-to-depth (2x2 pixels -> 4x channels) then a conv; older configs' stem."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        k: int = 1,
        s: int = 1,
        p: int | None = None,
        g: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = Conv(c_in * 4, c_out, k, s, p, g, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2])
        return self.conv(torch.cat(patches, dim=1))  # type: ignore[no-any-return]


class Concat(nn.Module):
    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.d = dim

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, self.d)


class Detect(nn.Module):
    """The head: one 1x1 conv per level giving, per anchor, 4 box + 1 objectness + 2 x landmarks
    + classes values. Output per level: (N, A, H, W, values), the upstream raw-head layout."""

    def __init__(
        self, num_classes: int, num_anchors: int, channels: list[int], num_landmarks: int = 5
    ) -> None:
        super().__init__()
        self.na = num_anchors
        self.no = 5 + 2 * num_landmarks + num_classes
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in channels)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            torch.unflatten(conv(x), 1, (self.na, self.no)).permute(0, 1, 3, 4, 2)
            for conv, x in zip(self.m, xs, strict=True)
        ]


def decode_level(
    raw: torch.Tensor, stride: int, anchors: torch.Tensor, num_landmarks: int = 5
) -> torch.Tensor:
    """One level's raw head (N, A, H, W, V) -> (N, A*H*W, 5 + 2L) rows of
    [cx, cy, w, h, score, lx0, ly0, ...] in input pixels, score = sigmoid(obj) * sigmoid(face).

    Upstream formulas: xy = (2 sigmoid - 0.5 + cell) * stride, wh = (2 sigmoid)^2 * anchor,
    landmarks = raw * anchor + cell * stride (landmarks take no sigmoid).
    Always computed in float32: in half precision a 1920-pixel coordinate is off by up to a pixel.
    """
    raw = raw.float()
    h, w = raw.shape[2], raw.shape[3]
    gy, gx = torch.meshgrid(
        torch.arange(h, device=raw.device, dtype=torch.float32),
        torch.arange(w, device=raw.device, dtype=torch.float32),
        indexing="ij",
    )
    cell = torch.stack((gx, gy), dim=-1)[None, None]  # (1, 1, H, W, 2)
    anchor = anchors.float().view(1, -1, 1, 1, 2)
    xy = (raw[..., 0:2].sigmoid() * 2.0 - 0.5 + cell) * stride
    wh = (raw[..., 2:4].sigmoid() * 2.0) ** 2 * anchor
    face = 5 + 2 * num_landmarks
    score = raw[..., 4:5].sigmoid() * raw[..., face : face + 1].sigmoid()
    points = torch.unflatten(raw[..., 5:face], -1, (num_landmarks, 2)) * anchor.unsqueeze(-2)
    points = points + (cell * stride).unsqueeze(-2)
    rows = torch.cat((xy, wh, score, points.flatten(-2)), dim=-1)
    return rows.flatten(1, 3)
