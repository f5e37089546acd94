"""The working scale of a run: the slide is rescaled so that its nuclei have the model's trained
diameter. The diameter is the user's (`diameter` px or `diameter_um` µm), or estimated automatically
(`estimate`: the network's fixed point on a central sample, runtime.run.diameter explains the rule);
it is kept within the range the model accepts (MIN_SCALE..MAX_SCALE) and snapped to a 2^(1/16) grid."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from cyclepose_deploy.errors import OptionError
from cyclepose_deploy.runtime.model.artifacts import Model
from cyclepose_deploy.runtime.run.context import RunContext
from cyclepose_deploy.runtime.run.diameter import (
    AGREEMENT,
    GUESS_FACTORS,
    MAX_SCALE,
    MIN_OBJECTS,
    MIN_SCALE,
    DiameterEstimate,
    area_weighted_diameter,
    blob_diameter,
    fixed_point,
    sample_window,
)
from cyclepose_deploy.runtime.run.worker import ChunkWorker
from cyclepose_deploy.runtime.source.array import ArraySource
from cyclepose_deploy.runtime.source.normalize import noise_sigma
from cyclepose_deploy.runtime.source.slide import ScaledSource, at_scale
from cyclepose_deploy.runtime.tiling.chunks import Chunk

DIAMETER_STEPS_PER_OCTAVE = 16  # estimates snap to a 4.4 % geometric grid


def diameter_range(model: Model) -> tuple[float, float]:
    """The diameters (px) this model accepts: those that rescale the slide by MIN_SCALE..MAX_SCALE."""
    return model.train_diameter / MAX_SCALE, model.train_diameter / MIN_SCALE


def given_diameter(ctx: RunContext) -> float | None:
    """The user's diameter in px (diameter, or diameter_um over the pixel size: geometric mean of y and
    x), None when neither is given; OptionError without a pixel size, and when it is outside
    diameter_range (a typo must not ask for a 50x larger slide)."""
    options = ctx.options.scale
    diameter = options.diameter
    if options.diameter_um is not None:
        pixel_size = ctx.source.pixel_size
        if pixel_size is None:
            raise OptionError(
                "diameter_um",
                "{diameter_um} needs the pixel size, and the image does not say it: give {pixel_size} "
                "(µm) or {diameter} in px",
            )
        diameter = options.diameter_um / math.sqrt(pixel_size[0] * pixel_size[1])
    if diameter is not None:
        low, high = diameter_range(ctx.model)
        if not low <= diameter <= high:
            train = ctx.model.train_diameter
            raise OptionError(
                "diameter",
                f"diameter {diameter:.3g} px would rescale the image by {train / diameter:.3g}x; this "
                f"model accepts {low:.3g}..{high:.3g} px (it was trained at {train:.3g} px): check the "
                "value and its unit ({diameter} is in px, {diameter_um} in µm)",
            )
    return diameter


def choose(ctx: RunContext, estimate: DiameterEstimate | None) -> None:
    """Set the run's diameter, scale and working source from an estimate (None: keep the model's
    scale, e.g. an empty field)."""
    ctx.diameter = estimate
    ctx.scale = ctx.model.train_diameter / estimate.diameter if estimate is not None else 1.0
    ctx.working = at_scale(ctx.source, ctx.scale)


def estimate(ctx: RunContext) -> DiameterEstimate | None:
    """The image's median nucleus diameter in px from its central sample (runtime.run.diameter), or
    None when the sample holds no nucleus-like blob. The network measures the sample rescaled so that
    each guess (the blob estimate times GUESS_FACTORS) becomes its trained size; the fixed point wins.
    Without a crossing: the measurement at the blob guess when the network measures less than it
    there (kept within AGREEMENT of the blob estimate), the measurement at the largest guess when it
    measures more than every guess, else the blob estimate. Snapped and clamped (module docstring)."""
    assert ctx.norm is not None and ctx.runner is not None
    norm, train = ctx.norm, ctx.model.train_diameter
    y0, y1, x0, x1 = sample_window(ctx.source.shape)
    raw = ArraySource(np.asarray(ctx.source.read(y0, y1, x0, x1), np.float32), filled=True)
    noise = noise_sigma([raw.array]) / (norm.high - norm.low)
    first, blobs = blob_diameter(norm.apply(raw.array), noise=noise)
    if blobs == 0 or not math.isfinite(first):
        return None
    job = ctx.job()
    points: list[tuple[float, float, int]] = []  # (guess, measured, objects), finite measurements
    for factor in GUESS_FACTORS:
        guess = first * factor
        if train / guess < MIN_SCALE:
            break
        scale = float(np.clip(train / guess, MIN_SCALE, MAX_SCALE))
        sample = ScaledSource(raw, scale)
        h, w = sample.shape
        worker = ChunkWorker(replace(job, shape=sample.shape), sample, ctx.runner)
        measured, objects = area_weighted_diameter(worker.process(Chunk(0, (0, h, 0, w), (0, h, 0, w))).ids)
        if objects >= MIN_OBJECTS:
            points.append((guess, measured / scale, objects))
    return _snapped(_decide(first, blobs, points), ctx.model)


def _decide(first: float, blobs: int, points: list[tuple[float, float, int]]) -> DiameterEstimate:
    crossing = fixed_point([(g, m) for g, m, _ in points])
    if crossing is not None:
        nearest = min(points, key=lambda p: abs(math.log(p[0] / crossing)))
        return DiameterEstimate(crossing, "network", first, nearest[2])
    if points and points[0][0] == first and points[0][1] < first:
        measured, objects = points[0][1], points[0][2]
        if measured / first >= 1 / AGREEMENT:
            return DiameterEstimate(measured, "network", first, objects)
    elif points and all(m > g for g, m, _ in points):
        return DiameterEstimate(points[-1][1], "network", first, points[-1][2])
    return DiameterEstimate(first, "blob", first, blobs)


def _snapped(estimate: DiameterEstimate, model: Model) -> DiameterEstimate:
    low, high = diameter_range(model)
    return replace(estimate, diameter=float(min(max(quantize_diameter(estimate.diameter), low), high)))


def quantize_diameter(diameter: float) -> float:
    """The estimate on a geometric grid (2^(1/16) steps): segmentation does not care about +/-2 %, but
    a grid makes the run reproducible when the estimate wobbles by a hair (one changed pixel must not
    rescale the whole slide and move every outline)."""
    steps = DIAMETER_STEPS_PER_OCTAVE
    return float(2.0 ** (round(math.log2(diameter) * steps) / steps))
