"""Test-time augmentation as Cellpose's `augment`: a network's output averaged over the input and its
flips, each output flipped back with the flow component along a flipped axis turned around. Shared by
the runtime (`--tta`) and the training's pseudo-labels (`--refine-tta`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

FLIPS = ((2,), (3,), (2, 3))  # y, x, both, as axes of an (N, C, H, W) batch


def flip_mean(infer: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) float32: the mean of infer(images) (float32 (N, C, H, W) -> (N, 3, H, W): flows dY,
    dX, cellprob) and of infer on the images flipped in y, in x and in both, each flipped back, dY
    negated after a flip in y and dX after a flip in x. Summed in float64."""
    out = infer(images).astype(np.float64)
    for axes in FLIPS:
        flipped = np.flip(infer(np.ascontiguousarray(np.flip(images, axes))), axes)
        sign = np.ones((1, 3, 1, 1))
        for axis in axes:
            sign[0, axis - 2] = -1.0  # a flip along y turns dY around, along x dX
        out += flipped * sign
    return (out / (1 + len(FLIPS))).astype(np.float32)
