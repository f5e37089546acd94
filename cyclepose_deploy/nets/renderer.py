"""G: renders an image from the mask-domain representation (flow dY, flow dX, probability).
A small two-level U-Net: training time on a 2-core CPU goes to S, not to G."""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.InstanceNorm2d(cout, affine=True),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.InstanceNorm2d(cout, affine=True),
        nn.LeakyReLU(0.2, inplace=True),
    )


class Renderer(nn.Module):
    """(N, 3, H, W) flows + probability -> (N, C, H, W) image in normalised intensity units."""

    def __init__(self, out_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.enc0 = _block(4, width)  # + one channel of noise, so G can render camera noise
        self.enc1 = _block(width, 2 * width)
        self.mid = _block(2 * width, 2 * width)
        self.dec1 = _block(4 * width, width)
        self.dec0 = _block(2 * width, width)
        self.head = nn.Conv2d(width, out_channels, 1)
        self.pool = nn.AvgPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(torch.cat([r, torch.randn_like(r[:, :1])], dim=1))
        e1 = self.enc1(self.pool(e0))
        m = self.mid(self.pool(e1))
        d1 = self.dec1(torch.cat([self.up(m), e1], dim=1))
        d0 = self.dec0(torch.cat([self.up(d1), e0], dim=1))
        return self.head(d0)
