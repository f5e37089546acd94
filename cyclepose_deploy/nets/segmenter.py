"""S: the Cellpose 3 CPnet layout, with state-dict keys identical to `cellpose.resnet_torch.CPnet`,
so a Cellpose 3 model file loads unchanged. Differences only where ONNX needs them: the style is a
plain mean over H and W (dynamic shapes), and `forward` returns the (N, 3, H, W) output alone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

CELLPOSE_WIDTHS = (32, 64, 128, 256)
BN_MOMENTUM = 0.05  # Cellpose 3's value


def batchconv(cin: int, cout: int, size: int) -> nn.Sequential:
    """BN -> ReLU -> conv (keys .0 and .2, as in Cellpose)."""
    return nn.Sequential(
        nn.BatchNorm2d(cin, eps=1e-5, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, size, padding=size // 2),
    )


def batchconv0(cin: int, cout: int, size: int) -> nn.Sequential:
    """BN -> conv, the 1x1 projection of the residual skip (keys .0 and .1)."""
    return nn.Sequential(
        nn.BatchNorm2d(cin, eps=1e-5, momentum=BN_MOMENTUM),
        nn.Conv2d(cin, cout, size, padding=size // 2),
    )


class ResDown(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential()
        self.proj = batchconv0(cin, cout, 1)
        for t in range(4):
            self.conv.add_module(f"conv_{t}", batchconv(cin if t == 0 else cout, cout, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x) + self.conv[1](self.conv[0](x))
        return x + self.conv[3](self.conv[2](x))


class Downsample(nn.Module):
    def __init__(self, nbase: Sequence[int]) -> None:
        super().__init__()
        self.down = nn.Sequential()
        self.maxpool = nn.MaxPool2d(2, stride=2)
        for n in range(len(nbase) - 1):
            self.down.add_module(f"res_down_{n}", ResDown(nbase[n], nbase[n + 1]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        xd: list[torch.Tensor] = []
        for n, block in enumerate(self.down):
            xd.append(block(self.maxpool(xd[-1]) if n > 0 else x))
        return xd


class BatchConvStyle(nn.Module):
    def __init__(self, cin: int, cout: int, style_channels: int) -> None:
        super().__init__()
        self.conv = batchconv(cin, cout, 3)
        self.full = nn.Linear(style_channels, cout)

    def forward(self, style: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is not None:
            x = x + y
        return self.conv(x + self.full(style)[:, :, None, None])


class ResUp(nn.Module):
    def __init__(self, cin: int, cout: int, style_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential()
        self.conv.add_module("conv_0", batchconv(cin, cout, 3))
        self.conv.add_module("conv_1", BatchConvStyle(cout, cout, style_channels))
        self.conv.add_module("conv_2", BatchConvStyle(cout, cout, style_channels))
        self.conv.add_module("conv_3", BatchConvStyle(cout, cout, style_channels))
        self.proj = batchconv0(cin, cout, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = self.proj(x) + self.conv[1](style, self.conv[0](x), y=y)
        return x + self.conv[3](style, self.conv[2](style, x))


class Upsample(nn.Module):
    def __init__(self, nbaseup: Sequence[int]) -> None:
        super().__init__()
        self.upsampling = nn.Upsample(scale_factor=2, mode="nearest")
        self.up = nn.Sequential()
        for n in range(1, len(nbaseup)):
            self.up.add_module(f"res_up_{n - 1}", ResUp(nbaseup[n], nbaseup[n - 1], nbaseup[-1]))

    def forward(self, style: torch.Tensor, xd: list[torch.Tensor]) -> torch.Tensor:
        x = self.up[-1](xd[-1], xd[-1], style)
        for n in range(len(self.up) - 2, -1, -1):
            x = self.up[n](self.upsampling(x), xd[n], style)
        return x


def make_style(features: torch.Tensor) -> torch.Tensor:
    """Global mean over H and W, L2-normalised (Cellpose uses avg_pool with a shape-sized kernel,
    which ONNX would freeze to one tile size)."""
    style = features.mean(dim=(2, 3))
    return style / torch.sum(style**2, dim=1, keepdim=True).clamp_min(1e-12) ** 0.5


class Segmenter(nn.Module):
    """Image (N, C, H, W), H and W multiples of 8 -> (N, 3, H, W): 5 x flow dY, 5 x flow dX, logit."""

    def __init__(
        self, in_channels: int = 1, widths: Sequence[int] = CELLPOSE_WIDTHS, diam_mean: float = 30.0
    ) -> None:
        super().__init__()
        if in_channels not in (1, 2):
            raise ValueError(f"in_channels must be 1 or 2, got {in_channels}")
        self.in_channels = in_channels
        self.widths = [int(w) for w in widths]
        nbaseup = [*self.widths, self.widths[-1]]
        self.downsample = Downsample([in_channels, *self.widths])
        self.upsample = Upsample(nbaseup)
        self.output = batchconv(nbaseup[0], 3, 1)
        self.diam_mean = nn.Parameter(torch.full((1,), float(diam_mean)), requires_grad=False)
        self.diam_labels = nn.Parameter(torch.full((1,), float(diam_mean)), requires_grad=False)

    def forward_with_style(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.downsample(x)
        style = make_style(features[-1])
        return self.output(self.upsample(style, features)), style

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_style(x)[0]
