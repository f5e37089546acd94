"""How a synthetic slide looks: nucleus brightness and chromatin texture, PSF blur, uneven
background, and camera noise, modelled on widefield DAPI/Hoechst images.

Units are photo-electrons until the camera turns them into 16-bit counts (gain 1, offset 100).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CAMERA_OFFSET = 100.0
BLUR_SIGMA_MAX = 1.5
DIM_FRACTION = 0.05


@dataclass(frozen=True)
class SlideStyle:
    """Per-slide optics and camera constants, drawn once from the seed."""

    blur_sigma: float
    brightness: float
    background: float
    gradient: tuple[float, float]
    ripple: tuple[float, float, float]
    read_noise: float

    @classmethod
    def draw(cls, seed: int) -> SlideStyle:
        rng = np.random.default_rng([seed, 0x5717E])
        return cls(
            blur_sigma=float(rng.uniform(1.0, BLUR_SIGMA_MAX)),
            brightness=float(rng.uniform(600.0, 1200.0)),
            background=float(rng.uniform(30.0, 80.0)),
            gradient=(float(rng.uniform(-0.4, 0.4)), float(rng.uniform(-0.4, 0.4))),
            ripple=(
                float(rng.uniform(0.05, 0.2)),
                float(rng.uniform(0, 2 * np.pi)),
                float(rng.uniform(0, 2 * np.pi)),
            ),
            read_noise=float(rng.uniform(3.0, 6.0)),
        )


def nucleus_brightness(rng: np.random.Generator, style: SlideStyle) -> float:
    """Mean intensity of one nucleus: a 3.5x log-uniform spread, and about 5 % dim nuclei."""
    value = style.brightness * float(np.exp(rng.uniform(np.log(0.53), np.log(1.87))))
    if rng.uniform() < DIM_FRACTION:
        value *= rng.uniform(0.12, 0.3)
    return value


def nucleus_pattern(rng: np.random.Generator, mask: np.ndarray, brightness: float) -> np.ndarray:
    """Fluorophore density over a nucleus's box: chromatin texture (smooth noise plus a few bright
    chromocentres) and, for some nuclei, a brighter rim at the nuclear envelope."""
    noise = rng.standard_normal(mask.shape).astype(np.float32)
    texture = ndimage.gaussian_filter(noise, rng.uniform(0.8, 1.6))
    texture *= rng.uniform(0.15, 0.35) / (float(texture.std()) + 1e-6)
    pattern = 1.0 + texture
    ys, xs = np.nonzero(mask)
    for k in rng.integers(0, len(ys), size=rng.integers(0, 5)):
        pattern[ys[k], xs[k]] += rng.uniform(1.0, 3.0)
    depth = ndimage.distance_transform_cdt(np.pad(mask, 1), metric="taxicab")[1:-1, 1:-1].astype(np.float32)
    rim = rng.uniform(0.0, 0.35) if rng.uniform() < 0.6 else 0.0
    pattern *= 1.0 + rim * np.exp(-(depth - 1.0) / 1.5) - 0.1 * np.exp(-(depth - 1.0))
    return np.clip(pattern, 0.2, None) * np.float32(brightness)


def paint_debris(
    rng: np.random.Generator, fluor: np.ndarray, rows: tuple[int, int], style: SlideStyle
) -> None:
    """Add small bright specks (dust, apoptotic fragments) that are not nuclei and carry no label."""
    top, bottom = rows
    width = fluor.shape[1]
    count = rng.poisson((bottom - top) * width / 60000.0)
    for _ in range(count):
        y, x = int(rng.integers(top, bottom)), int(rng.integers(0, width))
        radius = int(rng.integers(0, 3))
        y0, y1, x0, x1 = y - radius, y + radius + 1, max(x - radius, 0), min(x + radius + 1, width)
        fluor[y0:y1, x0:x1] += style.brightness * rng.uniform(0.5, 3.0)


def background(rows: np.ndarray, width: int, height: int, style: SlideStyle) -> np.ndarray:
    """Smooth uneven background: a low offset with a linear gradient and a slow ripple across the slide."""
    y = (rows.astype(np.float32)[:, None] / max(height, 1)) - 0.5
    x = (np.arange(width, dtype=np.float32)[None, :] / max(width, 1)) - 0.5
    gy, gx = style.gradient
    amp, py, px = style.ripple
    shade = 1.0 + gy * y + gx * x + amp * np.sin(2 * np.pi * y + py) * np.cos(2 * np.pi * x + px)
    return (style.background * shade).astype(np.float32)


def blur(fluor: np.ndarray, style: SlideStyle) -> np.ndarray:
    """Widefield PSF approximated by a Gaussian."""
    return ndimage.gaussian_filter(fluor, style.blur_sigma, mode="nearest", truncate=4.0)


def camera(rng: np.random.Generator, electrons: np.ndarray, style: SlideStyle) -> np.ndarray:
    """Poisson shot noise, Gaussian read noise and a camera offset, digitised to uint16."""
    counts = rng.poisson(np.clip(electrons, 0, None)).astype(np.float32)
    counts += rng.normal(CAMERA_OFFSET, style.read_noise, size=counts.shape).astype(np.float32)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def blur_context() -> int:
    """Rows of context a band needs on each side so its blur matches a whole-slide blur."""
    return int(np.ceil(4.0 * BLUR_SIGMA_MAX)) + 1
