"""Both training domains. Mask domain: synthetic nuclei packed on canvases, turned into exact
Cellpose targets once, then sampled as random crops with flips/rot90 (a bank, refreshed in part now
and then, because packing and flows cost far more than a crop). Image domain: random crops of the
user's unlabeled images, percentile-normalised like the runtime does.

Image borders (`border`, a fraction of the crops): the runtime pads a slide with zeros (the normalised
background) beyond its edge, so a nucleus cut by the edge meets a black band. Such crops are drawn in
both domains: real crops reach past the image's edge (zeros there), synthetic ones get a black band on
one side whose masks are cut and whose targets are recomputed for the cut masks, so S learns the
convention the runtime checks against (flows of the visible part)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.source.normalize import Normalization
from cyclepose_deploy.synth.shapes import ShapePrior, pack_instances


def mask_targets(labels: np.ndarray) -> np.ndarray:
    """(3, H, W) float32: unit flow dY, unit flow dX (heat diffusion, as Cellpose) and mask > 0."""
    from cyclepose_deploy.runtime.dynamics import labels_to_flows

    flows = labels_to_flows(labels)
    return np.concatenate([flows, (labels > 0)[None].astype(np.float32)]).astype(np.float32)


def random_dihedral(rng: np.random.Generator, array: np.ndarray) -> np.ndarray:
    """Random flip/rot90 of a (C, H, W) image; plain image channels are unchanged by it."""
    k = int(rng.integers(4))
    out = np.rot90(array, k, axes=(1, 2))
    if rng.integers(2):
        out = out[:, :, ::-1]
    return out


def dihedral_flows(rng: np.random.Generator, target: np.ndarray) -> np.ndarray:
    """Flip/rot90 a (C >= 3, H, W) flow target: the flow vectors (channels 0, 1) turn with the pixels;
    the other channels (probability, masks) move as plain images."""
    dy, dx, rest = target[0], target[1], target[2:]
    for _ in range(int(rng.integers(4))):  # rot90 counter-clockwise: (y, x) -> (W-1-x, y)
        dy, dx, rest = np.rot90(-dx), np.rot90(dy), np.rot90(rest, axes=(1, 2))
    if rng.integers(2):  # horizontal flip: x -> W-1-x
        dy, dx, rest = dy[:, ::-1], -dx[:, ::-1], rest[:, :, ::-1]
    return np.concatenate([dy[None], dx[None], rest]).astype(np.float32)


def border_band(rng: np.random.Generator, tile: int) -> tuple[int, int]:
    """(side, depth): a black band of `depth` px (8..tile/2) on side 0 top, 1 bottom, 2 left, 3 right."""
    return int(rng.integers(4)), int(rng.integers(8, tile // 2 + 1))


def band_mask(side: int, depth: int, tile: int) -> np.ndarray:
    """(tile, tile) bool, True inside the band."""
    band = np.zeros((tile, tile), bool)
    if side == 0:
        band[:depth] = True
    elif side == 1:
        band[tile - depth :] = True
    elif side == 2:
        band[:, :depth] = True
    else:
        band[:, tile - depth :] = True
    return band


class MaskBank:
    """Canvases of synthetic labels and their targets (3, S, S); `sample` crops them (a `border`
    fraction with a black band whose masks are cut, see the module docstring); `refresh` replaces the
    oldest canvas."""

    def __init__(self, prior: ShapePrior, canvas: int, count: int, coverage_max: float | None = None) -> None:
        self.prior, self.canvas_size, self.count = prior, canvas, count
        self.coverage_max = coverage_max
        self.canvases: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.next_replace = 0

    def fill(self, rng: np.random.Generator) -> None:
        made = [self._make(rng) for _ in range(self.count)]
        self.labels = [labels for labels, _ in made]
        self.canvases = [target for _, target in made]

    def _make(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        prior = self.prior
        if self.coverage_max is not None:  # real fields range from sparse to crowded
            prior = replace(prior, coverage=float(rng.uniform(prior.coverage, self.coverage_max)))
        labels = pack_instances(rng, (self.canvas_size, self.canvas_size), prior).astype(np.int32)
        return labels, mask_targets(labels)

    def refresh(self, rng: np.random.Generator) -> None:
        self.labels[self.next_replace], self.canvases[self.next_replace] = self._make(rng)
        self.next_replace = (self.next_replace + 1) % self.count

    def sample(
        self, rng: np.random.Generator, batch: int, tile: int, border: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """((batch, 3, tile, tile) float32 targets, (batch, 1, tile, tile) float32 1 where the crop is
        inside the image, 0 in a black band); in a band the targets are zero and the masks are cut."""
        out = np.empty((batch, 4, tile, tile), np.float32)
        for b in range(batch):
            k = int(rng.integers(len(self.canvases)))
            y, x = rng.integers(0, self.canvas_size - tile + 1, size=2)
            target = self.canvases[k][:, y : y + tile, x : x + tile]
            inside = np.ones((1, tile, tile), np.float32)
            if border > 0 and rng.uniform() < border:
                labels = self.labels[k][y : y + tile, x : x + tile].copy()
                band = band_mask(*border_band(rng, tile), tile)
                labels[band] = 0
                target, inside[0, band] = mask_targets(labels), 0.0
            out[b] = dihedral_flows(rng, np.concatenate([target, inside]))
        return out[:, :3], out[:, 3:]

    def state_dict(self) -> dict[str, object]:
        return {
            "canvases": [c.copy() for c in self.canvases],
            "labels": [c.copy() for c in self.labels],
            "next_replace": self.next_replace,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.canvases = [np.asarray(c, np.float32) for c in state["canvases"]]  # type: ignore[attr-defined]
        self.labels = [np.asarray(c, np.int32) for c in state.get("labels", [])]  # type: ignore[attr-defined]
        if len(self.labels) != len(self.canvases):  # a checkpoint from before labels were kept
            self.labels = [_labels_of(c) for c in self.canvases]
        self.next_replace = int(state["next_replace"])  # type: ignore[call-overload]


def _labels_of(target: np.ndarray) -> np.ndarray:
    """Instance labels recovered from a (3, S, S) target's mask (connected pieces; touching nuclei merge:
    only for banks saved before the labels were kept)."""
    from scipy import ndimage

    return ndimage.label(target[2] > 0.5)[0].astype(np.int32)


def read_image(path: str | Path, in_channels: int | None = None) -> np.ndarray:
    """(C, H, W) float32 from a TIFF: 2-D -> one channel; (C, H, W) or (H, W, C) with C <= 2 kept."""
    from cyclepose_deploy.runtime.source.formats import read_tiff_whole

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise UserError(f"training image {path} not found: pass existing TIFF files to --images")
    image = read_tiff_whole(path, "training image")
    if image.dtype.kind not in "uif":
        raise UserError(f"{path} has pixel type {image.dtype}: convert it to uint8, uint16 or float32")
    if image.size == 0:
        raise UserError(f"{path} is an empty image (shape {image.shape}): remove it from --images")
    image = np.squeeze(image)
    if image.ndim == 2:
        image = image[None]
    elif image.ndim == 3 and image.shape[-1] <= 2 < image.shape[0]:
        image = np.moveaxis(image, -1, 0)
    if image.ndim != 3 or image.shape[0] > 2:
        raise UserError(f"{path} has shape {image.shape}; training takes 2-D images with 1 or 2 channels")
    if in_channels is not None and image.shape[0] != in_channels:
        raise UserError(f"{path} has {image.shape[0]} channel(s), the first image {in_channels}: mix none")
    return image


def normalise(image: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Per channel, the runtime's normalisation (runtime.normalize), from the whole image."""
    out = np.empty(image.shape, np.float32)
    for c, channel in enumerate(image):
        out[c] = Normalization.from_sample(channel, lower, upper).apply(channel)
    return out


def rescale_to_diameter(image: np.ndarray, target: float) -> tuple[np.ndarray, float]:
    """(rescaled (C, H, W) image, scale): the image resampled (linear) so that its nuclei, measured by
    the runtime's model-free blob estimate on channel 0, have diameter `target` px; scale 1.0 when no
    blob is found. The same rule the runtime applies before S, so S trains at the size it will see."""
    from scipy import ndimage

    from cyclepose_deploy.runtime.run.diameter import MAX_SCALE, coarse_blobs
    from cyclepose_deploy.runtime.source.normalize import noise_sigma

    blobs = coarse_blobs(image[0], noise_sigma([image[0]]))
    diameter, count = blobs.median, blobs.count
    if count == 0 or not np.isfinite(diameter):
        return image, 1.0
    scale = float(np.clip(target / diameter, 1.0 / MAX_SCALE, MAX_SCALE))
    if abs(scale - 1.0) < 0.05:
        return image, 1.0
    out = np.stack([ndimage.zoom(c, scale, order=1, mode="nearest", grid_mode=True) for c in image])
    return out.astype(np.float32), scale


def pad_to(image: np.ndarray, tile: int) -> np.ndarray:
    """Reflect-pad a (C, H, W) image to at least tile x tile."""
    ph, pw = max(tile - image.shape[1], 0), max(tile - image.shape[2], 0)
    if not ph and not pw:
        return image
    return np.pad(image, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="reflect")


class ImageCrops:
    """Random normalised crops of the training images, with flips/rot90; with `target_diameter`, each
    image is first rescaled so its nuclei have that diameter (see `rescale_to_diameter`)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        tile: int,
        lower: float = 1.0,
        upper: float = 99.0,
        target_diameter: float | None = None,
    ) -> None:
        if not paths:
            raise UserError("no training images: pass one or more TIFF files to --images")
        first = read_image(paths[0])
        images = [first] + [read_image(p, first.shape[0]) for p in paths[1:]]
        self.images = [normalise(im, lower, upper) for im in images]
        self.scales = [1.0] * len(self.images)
        if target_diameter is not None:
            rescaled = [rescale_to_diameter(im, target_diameter) for im in self.images]
            tiny = [
                str(p) for p, (im, _) in zip(paths, rescaled, strict=True) if min(im.shape[1:]) < tile // 2
            ]
            if tiny:
                raise UserError(
                    f"images smaller than the tile {tile} (under half of it once rescaled): "
                    f"{', '.join(tiny[:3])}; pass a smaller --tile"
                )
            self.images = [pad_to(im, tile) for im, _ in rescaled]
            self.scales = [scale for _, scale in rescaled]
        small = [str(p) for p, im in zip(paths, self.images, strict=True) if min(im.shape[1:]) < tile]
        if small:
            raise UserError(f"images smaller than the tile {tile}: {', '.join(small)}; pass a smaller --tile")
        self.channels = first.shape[0]
        self.tile = tile
        self.weights = np.array([im.shape[1] * im.shape[2] for im in self.images], float)
        self.weights /= self.weights.sum()

    def sample(
        self, rng: np.random.Generator, batch: int, border: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """((batch, C, tile, tile) float32 crops, (batch, 1, tile, tile) float32 1 inside the image):
        a `border` fraction reaches up to tile/2 past one or two image edges, zero there (the
        runtime's padding)."""
        t, c = self.tile, self.channels
        out = np.zeros((batch, c + 1, t, t), np.float32)
        for b in range(batch):
            image = self.images[int(rng.choice(len(self.images), p=self.weights))]
            reach = t // 2 if border > 0 and rng.uniform() < border else 0
            y = int(rng.integers(-reach, image.shape[1] - t + reach + 1))
            x = int(rng.integers(-reach, image.shape[2] - t + reach + 1))
            y0, y1, x0, x1 = max(y, 0), min(y + t, image.shape[1]), max(x, 0), min(x + t, image.shape[2])
            crop = np.zeros((c + 1, t, t), np.float32)
            crop[:c, y0 - y : y1 - y, x0 - x : x1 - x] = image[:, y0:y1, x0:x1]
            crop[c, y0 - y : y1 - y, x0 - x : x1 - x] = 1.0
            out[b] = random_dihedral(rng, crop)
        return out[:, :c], out[:, c:]
