"""Real tiles for calibration and verification: cut from the user's --calib images or a synthetic slide."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.source.normalize import Normalization


def synthetic_slide(size: int, channels: int, seed: int = 0) -> np.ndarray:
    """A (C, size, size) fluorescence-like image of packed nuclei; the synth stage's slide when it exists."""
    rng = np.random.default_rng(seed)
    image = _make_slide_image(size, rng)
    if image is None:
        image = _blob_image(size, rng)
    image = Normalization.from_sample(image).apply(image)
    return np.repeat(image[None], channels, axis=0).astype(np.float32)


def _make_slide_image(size: int, rng: np.random.Generator) -> np.ndarray | None:
    try:
        from cyclepose_deploy.synth.slide import make_slide
    except ImportError:
        return None
    try:
        result = make_slide(size, size, seed=int(rng.integers(1 << 30)))
    except TypeError:
        return None
    image = result[0] if isinstance(result, tuple) else getattr(result, "image", result)
    image = np.asarray(image, dtype=np.float32)
    return image if image.ndim == 2 else None


def _blob_image(size: int, rng: np.random.Generator) -> np.ndarray:
    from cyclepose_deploy.synth.shapes import pack_instances

    labels = pack_instances(rng, (size, size))
    brightness = rng.uniform(0.5, 1.5, size=int(labels.max()) + 1)
    brightness[0] = 0.05
    image = ndimage.gaussian_filter(brightness[labels].astype(np.float32), 1.0)
    return image + rng.normal(0, 0.03, image.shape).astype(np.float32)


def read_images(paths: Sequence[str | Path], channels: int) -> list[np.ndarray]:
    """Each image as normalised (C, H, W) float32; 2-D images are repeated to `channels`."""
    from cyclepose_deploy.runtime.source.formats import read_tiff_whole

    images = []
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"calibration image {path} not found: fix the --calib path")
        raw = read_tiff_whole(Path(path), "calibration image")
        if raw.dtype.kind not in "uif":
            raise UserError(
                f"calibration image {path} has pixel type {raw.dtype}: pass uint8, uint16 or float32"
            )
        images.append(_to_chw(raw.astype(np.float32), channels, path))
    return images


def _to_chw(data: np.ndarray, channels: int, path: str | Path) -> np.ndarray:
    if data.ndim == 3 and data.shape[-1] <= 4 < data.shape[0]:
        data = np.moveaxis(data, -1, 0)
    if data.ndim == 2:
        data = np.repeat(data[None], channels, axis=0)
    if data.ndim != 3 or data.shape[0] < channels:
        raise UserError(f"{path} has shape {data.shape}; need 2-D or (C, H, W) with >= {channels} channels")
    data = data[:channels]
    return np.stack([Normalization.from_sample(c).apply(c) for c in data]).astype(np.float32)


def cut_tiles(images: Sequence[np.ndarray], tile: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` tiles (N, C, tile, tile) at random positions, spread over the images in turn."""
    rng = np.random.default_rng(seed)
    tiles = []
    for i in range(count):
        image = images[i % len(images)]
        _, h, w = image.shape
        if h < tile or w < tile:
            raise UserError(f"image of {h}x{w} is smaller than the {tile}px tile: use larger images or tiles")
        y, x = int(rng.integers(0, h - tile + 1)), int(rng.integers(0, w - tile + 1))
        tiles.append(image[:, y : y + tile, x : x + tile])
    return np.ascontiguousarray(np.stack(tiles), dtype=np.float32)


def grid_tiles(image: np.ndarray, tile: int) -> np.ndarray:
    """Non-overlapping tiles covering the image's top-left part, for verification."""
    _, h, w = image.shape
    corners = [(y, x) for y in range(0, h - tile + 1, tile) for x in range(0, w - tile + 1, tile)]
    tiles = [image[:, y : y + tile, x : x + tile] for y, x in corners]
    return np.ascontiguousarray(np.stack(tiles), dtype=np.float32)
