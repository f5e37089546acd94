"""PatchGAN discriminators (LSGAN targets): one per domain. Image domain: 1-2 channels;
mask domain: the 3-channel flows + probability."""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """Strided convs -> a map of real/fake scores, one per ~(2^layers * 4)-pixel patch."""

    def __init__(self, in_channels: int, base: int = 32, layers: int = 3) -> None:
        super().__init__()
        modules: list[nn.Module] = [nn.Conv2d(in_channels, base, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        width = base
        for n in range(1, layers):
            out = base * min(2**n, 8)
            modules += [
                nn.Conv2d(width, out, 4, 2 if n < layers - 1 else 1, 1),
                nn.InstanceNorm2d(out, affine=True),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width = out
        modules.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
