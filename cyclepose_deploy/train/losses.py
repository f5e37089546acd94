"""Losses of the two cycles and the conversions between S's output and the mask domain."""

from __future__ import annotations

import torch
import torch.nn.functional as F

FLOW_SCALE = 5.0  # Cellpose's convention: S predicts 5 x unit flows


def to_mask_domain(output: torch.Tensor) -> torch.Tensor:
    """S's (5 x flows, logit) -> the mask domain (unit flows, probability) that G and D_mask see."""
    return torch.cat([output[:, :2] / FLOW_SCALE, torch.sigmoid(output[:, 2:3])], dim=1)


def flow_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cellpose's loss: MSE on 5 x flows (halved) + BCE on the probability logit."""
    mse = F.mse_loss(output[:, :2], FLOW_SCALE * target[:, :2]) / 2.0
    return mse + F.binary_cross_entropy_with_logits(output[:, 2], target[:, 2])


def lsgan(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss towards 1 (real) or 0 (fake)."""
    target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
    return F.mse_loss(prediction, target)


def augment_rendering(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random gain, offset, noise and slight blur on G's images, so S learns nuclei, not G's artefacts."""
    n = images.shape[0]
    shape = (n, 1, 1, 1)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=generator).to(images.device)

    out = images * uniform(0.7, 1.3) + uniform(-0.1, 0.1)
    blur = uniform(0.0, 1.0) < 0.3
    smoothed = F.avg_pool2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    out = torch.where(blur, 0.5 * out + 0.5 * smoothed, out)
    noise = torch.randn(out.shape, generator=generator).to(images.device)
    return out + noise * uniform(0.0, 0.05)
