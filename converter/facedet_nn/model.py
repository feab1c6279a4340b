"""Assemble a YOLOv5-Face network from a config (configs.py), and the inference forms of it.

    model = YoloFace(get_config("yolov5n-0.5"))   # training layout, batch norm separate
    model.fuse()                                  # inference layout, batch norm folded into convs
    heads = model(images)                         # per level (N, A, H/s, W/s, 16) raw heads
    rows = DecodedYoloFace(model)(images)         # (N, K, 15) candidates in input pixels

Channel widths, repeat counts and strides follow upstream's rules for reading a config:
widths scale by `width_multiple` and round up to a multiple of 8, repeats scale by
`depth_multiple` (a C3 takes its repeats as bottlenecks, other blocks are stacked).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from facedet_nn import blocks
from facedet_nn.configs import ModelConfig, Source

# Blocks whose first argument is an output width (scaled by width_multiple).
_WIDTH_BLOCKS: dict[str, type[nn.Module]] = {
    "Conv": blocks.Conv,
    "StemBlock": blocks.StemBlock,
    "ShuffleV2Block": blocks.ShuffleV2Block,
    "C3": blocks.C3,
    "Bottleneck": blocks.Bottleneck,
    "SPP": blocks.SPP,
    "SPPF": blocks.SPPF,
    "Focus": blocks.Focus,
}
KNOWN_BLOCKS = (*_WIDTH_BLOCKS, "nn.Upsample", "Concat", "Detect")


def make_divisible(x: float, divisor: int = 8) -> int:
    return math.ceil(x / divisor) * divisor


def _block_stride(block: str, args: tuple[Any, ...]) -> int:
    """How much a block downsamples (its input stride times this is its output stride)."""
    if block == "Conv":
        return int(args[2]) if len(args) > 2 else 1
    if block == "StemBlock":
        return (int(args[2]) if len(args) > 2 else 2) * 2  # stem_1, then stem_2b/stem_2p halve again
    if block == "ShuffleV2Block":
        return int(args[1])
    if block == "Focus":
        return 2 * (int(args[2]) if len(args) > 2 else 1)
    return 1


class YoloFace(nn.Module):
    """The network. `model.<i>` is layer i of the config, as in upstream checkpoints."""

    def __init__(self, config: ModelConfig, num_landmarks: int = 5) -> None:
        super().__init__()
        self.config = config
        self.num_landmarks = num_landmarks
        layers: list[nn.Module] = []
        self.sources: list[int | list[int]] = []
        widths: list[int] = []  # output channels per layer
        strides: list[int] = []  # output stride per layer
        gd, gw = config.depth_multiple, config.width_multiple
        detect_strides: list[int] = []
        for i, (source, repeats, block, args) in enumerate(config.layers):
            src = self._resolve(source, i)
            if block not in KNOWN_BLOCKS:
                raise ValueError(
                    f"{config.name}: layer {i} uses block {block!r}; known: {', '.join(KNOWN_BLOCKS)}"
                )
            if (block == "Detect") != (i == len(config.layers) - 1):
                raise ValueError(f"{config.name}: Detect must be the last layer and only there")
            n = max(round(repeats * gd), 1) if repeats > 1 else repeats
            first = src if isinstance(src, int) else src[0]
            c_in = widths[first] if first >= 0 else 3
            s_in = strides[first] if first >= 0 else 1
            module: nn.Module
            if block in _WIDTH_BLOCKS:
                if not isinstance(src, int):
                    raise ValueError(f"{config.name}: layer {i} ({block}) takes one input")
                c_out = make_divisible(args[0] * gw, 8)
                cls = _WIDTH_BLOCKS[block]
                if block == "C3":
                    module = cls(c_in, c_out, n, *args[1:])
                else:
                    stack = [cls(c_in, c_out, *args[1:]) for _ in range(n)]
                    module = stack[0] if n == 1 else nn.Sequential(*stack)
                stride = s_in * _block_stride(block, args) ** (1 if block == "C3" else n)
            elif block == "nn.Upsample":
                scale = int(args[1])
                module = nn.Upsample(scale_factor=float(scale), mode=str(args[2]))
                c_out, stride = c_in, s_in // scale
            elif block == "Concat":
                if isinstance(src, int):
                    raise ValueError(f"{config.name}: layer {i} (Concat) needs several inputs")
                if len({strides[j] for j in src}) != 1:
                    raise ValueError(f"{config.name}: layer {i} concatenates layers of different strides")
                module = blocks.Concat(int(args[0]) if args else 1)
                c_out, stride = sum(widths[j] for j in src), s_in
            else:  # Detect
                levels = [src] if isinstance(src, int) else src
                nc = config.num_classes if args[0] == "nc" else int(args[0])
                if len(config.anchors) != len(levels):
                    raise ValueError(
                        f"{config.name}: {len(levels)} detection levels but {len(config.anchors)} anchor sets"
                    )
                module = blocks.Detect(
                    nc, len(config.anchors[0]) // 2, [widths[j] for j in levels], num_landmarks
                )
                detect_strides = [strides[j] for j in levels]
                c_out, stride = 0, 0
            layers.append(module)
            self.sources.append(src)
            widths.append(c_out)
            strides.append(stride)
        self.model = nn.ModuleList(layers)
        self.strides: tuple[int, ...] = tuple(detect_strides)
        self.anchors: tuple[tuple[tuple[float, float], ...], ...] = tuple(
            tuple((float(level[k]), float(level[k + 1])) for k in range(0, len(level), 2))
            for level in config.anchors
        )
        # Only outputs that a later layer reads again need keeping.
        self._keep = {j for s in self.sources[1:] for j in ([s] if isinstance(s, int) else s)}

    @staticmethod
    def _resolve(source: Source, i: int) -> int | list[int]:
        def one(s: int) -> int:
            j = i + s if s < 0 else s
            if not (0 <= j < i or (i == 0 and s == -1)):
                raise ValueError(f"layer {i} reads layer {s}, which does not come before it")
            return j if i > 0 else -1

        return one(source) if isinstance(source, int) else [one(s) for s in source]

    @property
    def num_classes(self) -> int:
        return self.detect.no - 5 - 2 * self.num_landmarks

    @property
    def detect(self) -> blocks.Detect:
        head = self.model[-1]
        assert isinstance(head, blocks.Detect)
        return head

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: dict[int, Any] = {}
        y: Any = x
        for i, (layer, src) in enumerate(zip(self.model, self.sources, strict=True)):
            if isinstance(src, list):
                y = [outputs[j] for j in src]
            elif 0 <= src != i - 1:
                y = outputs[src]
            y = layer(y)
            if i in self._keep:
                outputs[i] = y
        return y  # type: ignore[no-any-return]

    def conv_units(self) -> Iterator[tuple[str, blocks.Conv]]:
        for name, module in self.named_modules():
            if isinstance(module, blocks.Conv):
                yield name, module

    def fuse(self) -> YoloFace:
        """Fold every batch norm into its convolution (the inference form). Idempotent."""
        for _, unit in self.conv_units():
            unit.fuse()
        return self

    def fuse_layout(self) -> YoloFace:
        """Switch to the fused layout without folding (for loading already-fused weights)."""
        for _, unit in self.conv_units():
            if not unit.fused:
                unit.make_fused()
        return self

    @property
    def fused(self) -> bool:
        return all(unit.fused for _, unit in self.conv_units())


class Decoder(nn.Module):
    """Raw heads -> (N, K, 15) candidate rows; see blocks.decode_level. K runs over levels, then
    anchors, then grid rows and columns, as facedet_server.faces.heads.decode_heads orders them."""

    def __init__(
        self,
        strides: tuple[int, ...],
        anchors: tuple[tuple[tuple[float, float], ...], ...],
        num_landmarks: int = 5,
    ) -> None:
        super().__init__()
        self.strides = strides
        self.num_landmarks = num_landmarks
        for i, level in enumerate(anchors):
            self.register_buffer(f"anchors_{i}", torch.tensor(level, dtype=torch.float32))

    def forward(self, heads: list[torch.Tensor]) -> torch.Tensor:
        rows = [
            blocks.decode_level(raw, stride, getattr(self, f"anchors_{i}"), self.num_landmarks)
            for i, (raw, stride) in enumerate(zip(heads, self.strides, strict=True))
        ]
        return torch.cat(rows, dim=1)


class DecodedYoloFace(nn.Module):
    """Images (N, 3, H, W), RGB scaled to 0..1, -> (N, K, 15) float32 candidates: what we export."""

    def __init__(self, model: YoloFace) -> None:
        super().__init__()
        self.model = model
        self.decoder = Decoder(model.strides, model.anchors, model.num_landmarks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.model(images))  # type: ignore[no-any-return]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(config: ModelConfig, height: int = 640, width: int = 640) -> int:
    """Multiply-accumulates of the convolutions for one image (what upstream's FLOPs column,
    measured with thop, counts); pooling, activations and upsampling are left out."""
    total = 0

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        k = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * (module.in_channels // module.groups) * k

    # Shapes are all that matter: build and run on the meta device, which allocates nothing.
    with torch.device("meta"):
        model = YoloFace(config)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, height, width, device="meta"))
    return total
