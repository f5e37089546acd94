"""The working scale of a run: the slide is rescaled so that its nuclei have the model's trained
diameter. The diameter is the user's (`diameter` px or `diameter_um` µm), or estimated automatically
(`estimate`), kept within the range the model accepts (MIN_SCALE..MAX_SCALE) and snapped to a 2^(1/16)
grid.

The estimate (Cellpose's idea of a size guess refined by a segmentation, at a small fraction of a
run's network work):
1. blobs (runtime.run.diameter.coarse_blobs) on the central SAMPLE_SIDE px of the slide, averaged in
   2 x 2 blocks, give a first guess g (the median blob diameter) and where the nuclei are;
2. the network segments one window of the sample holding the most blobs, rescaled so that g, then 2g
   and 4g (skipped when 2g already measured less than APPARENT x 2g: it could not change the result),
   become its trained diameter, and measures the median mask diameter each time (Cellpose's
   `utils.diameters`; one tile per pass, no overlap: the window is PASS_SIDE x PASS_SIDE px at the
   scale of g, and the same slide window is 4x and 16x cheaper at 2g and 4g);
3. the guess at which the network measures APPARENT x the guess (it sees the median nucleus at
   APPARENT x its trained diameter; runtime.run.diameter.fixed_point against APPARENT x guess) gives the
   estimate, the measurement there (APPARENT x that guess), after one secant step: the network's
   response is not log-linear between guesses 2x apart (nuclei shown too large are split), so a
   crossing more than 10 % from every guess is measured once more there and the crossing is taken
   again (synthetic 40 px nuclei: -20.8 % -> -5.8 %). Without a crossing, the measurement at g when
   the network measures less than APPARENT x g there (within AGREEMENT of g), the one at 4g when it
   measures more than APPARENT x every guess, else g.
Why APPARENT = 0.9 and not 1 (the plain fixed point, measured = guess): the network measures nuclei
shown at or below its trained size faithfully, but splits and trims the larger half of a broad size
distribution once its median is shown at the trained size, so measured = guess is reached too early.
On 10 synthetic 2048^2 slides (nuclei 10-30 px, median 19.0-19.4 px, seeds 3 5 7 8 9 11 13 17 21 42;
shipped `synth`, int8) the plain fixed point measured 0.79-0.99x the truth (mean log error -0.104, 6
of 10 within 15 %); APPARENT 0.9: 0.86-1.04x (-0.048, 9 of 10), 0.85: -0.030, 0.8: +0.017. Its cost
on the 60 DSB2018 dev images (`nuclei`, int8, AMD EPYC): 48 within 15 % at 1.0 and at 0.9, 47 at 0.85
and 0.8; dev F1 (benchmarks/real_quality.py) 0.832 / 0.668 / 0.339 at 1.0, 0.843 / 0.672 / 0.335 at
0.9 (0.833 / 0.671 / 0.336 with the later blob pyramid, which moved 3 dev estimates by 2-7 %). On the
seed-11 slide the default run's estimate went from 16.0 to 17.4 px (truth 19.2): its network works on
1.2x fewer pixels and F1@0.5 rose from 0.821 to 0.850 (given 19.2: 0.863).
With a `diameter_guess` (batch mode: the first image's estimate), the image is first measured at the
guess's scale, in one pass (`_confirm`); when it agrees, that is the estimate, else the steps above run
as without a guess. Measured on the 60 dev images (benchmarks/diameter_check.py --dev --guesses;
`nuclei`, int8, AMD EPYC): its own estimate is kept on 22 (the others hold fewer than GUESS_OBJECTS
whole nuclei), another image's on 3, 0.5x, 0.7x, 1.4x and 2x its own on none; with every kind of guess
48 images lie within 15 % of the truth, as without one (worst 1.73x). On the 24 fields of
benchmarks/vs_cellpose.py's plate (Intel Xeon, APPARENT 1), the first field's estimate is kept on
all 24 (at 10 % agreement on 20).
Measurements count only the nuclei the window does not cut (the dynamics keep cut ones, which are
parts). On a small field the first pass covers at most SMALL_FIELD_SHARE of the field. Measured on the
60 DSB2018 dev images (benchmarks/diameter_check.py --dev, int8 export): with the shipped `nuclei`
model 48 within 15 % of the true median diameter, mean |log error| 0.089, worst 1.73x (AMD EPYC;
APPARENT 1: 48 / 0.090 / 1.73x); an earlier `nuclei` model gave 50 / 0.072 / 1.30x on an Intel Xeon,
an older one 45 / 0.086 / 1.41x, and 47 / 0.084 / 1.41x without the secant step (which changed dev F1
by at most 0.003: `synth` 0.823 / 0.657 / 0.337 with it, 0.824 / 0.658 / 0.340 without).
A first window of 256 instead of PASS_SIDE px (2.25x less network work) measured the synthetic 40 px
nuclei 30 % low: too few whole nuclei fit at 2g and 4g. A minus-sampling median (each whole nucleus
weighted by 1 / ((H - 1 - h)(W - 1 - w)), the window positions that hold it whole; Miles 1978) moved the
synthetic 2048^2 slide's estimate from 17.4 to 18.2 px (truth 19.1) but dev to 47 / 60 within 15 %,
mean |log error| 0.088, worst 1.84x (merged clumps gain weight): not kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from cyclepose_deploy.errors import OptionError
from cyclepose_deploy.runtime.model.artifacts import Model
from cyclepose_deploy.runtime.run import warmup
from cyclepose_deploy.runtime.run.context import RunContext
from cyclepose_deploy.runtime.run.diameter import (
    AGREEMENT,
    MAX_SCALE,
    MIN_OBJECTS,
    MIN_SCALE,
    Blobs,
    DiameterEstimate,
    coarse_blobs,
    fixed_point,
    mask_diameter,
    sample_window,
)
from cyclepose_deploy.runtime.run.worker import ChunkResult, ChunkWorker
from cyclepose_deploy.runtime.source.array import ArraySource
from cyclepose_deploy.runtime.source.normalize import noise_sigma
from cyclepose_deploy.runtime.source.slide import ScaledSource, at_scale
from cyclepose_deploy.runtime.tiling.chunks import Chunk, chunk_windows
from cyclepose_deploy.runtime.tiling.options import Tiling

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


PASS_SIDE = 384  # px per side of the first pass's window, at the scale of the blob guess
GUESS_FACTORS = (1.0, 2.0, 4.0)  # x the blob guess
APPARENT = 0.9  # the estimate: where the network sees the median nucleus at this x its trained size
REFINE_LOG = math.log(1.1)  # a crossing further than 10 % from every guess gets a fourth pass there
SMALL_FIELD_SHARE = 0.75  # the first pass covers at most this share of a small image's pixels
GUESS_AGREEMENT = 1.15  # a diameter_guess is confirmed when its pass measures within 15 % of it ...
GUESS_BLOBS = (0.6, 1.25)  # ... and the blob median lies within these factors of it (dev: 0.65-1.43
# of the estimate; at 1.5, 2 of 60 guesses 0.7x too small were kept, 1.3-1.4x off)
GUESS_OBJECTS = 20  # ... measured on this many whole nuclei at least (dev: 2 guesses 1.4x too large
# were kept on 7 and 16: a median of so few is too loose)


def estimate(ctx: RunContext) -> DiameterEstimate | None:
    """The image's median nucleus diameter in px (module docstring), or None when its sample holds no
    nucleus-like blob (an empty field: keep the model's scale)."""
    assert ctx.norm is not None and ctx.runner is not None
    norm, train = ctx.norm, ctx.model.train_diameter
    y0, y1, x0, x1 = sample_window(ctx.source.shape)
    raw = np.asarray(ctx.source.read(y0, y1, x0, x1), np.float32)
    noise = noise_sigma([raw]) / (norm.high - norm.low)
    blobs = coarse_blobs(norm.apply(raw), noise)
    if blobs.count == 0 or not math.isfinite(blobs.median):
        return None
    first = blobs.median
    warmup.join()  # the dynamics' kernels (runtime.run.warmup), loaded in a thread during the blob step
    guess = ctx.options.scale.diameter_guess
    if guess is not None:
        confirmed = _confirm(ctx, raw, blobs, guess)
        if confirmed is not None:  # snapped already: a segmentation at it may be kept (ctx.prepared)
            return confirmed
    sample = _sample(raw, blobs, _window_side(first, train, ctx.source.shape))
    points = search(first, lambda guess: _point(ctx, sample, guess))
    return _snapped(_decide(first, blobs.count, points), ctx.model)


Point = tuple[float, float, int]  # (guess px, measured px, objects)


def search(first: float, point: Callable[[float], Point | None]) -> list[Point]:
    """The passes of the estimate from the blob guess `first` (px), in ascending order of guess:
    point(guess) measures the sample with `guess` as its diameter (None: too few nuclei); g and 2g,
    then 4g unless `_settled`, then one secant pass at the crossing when it lies more than REFINE_LOG
    from every guess (the response is not log-linear)."""
    points: list[Point] = []

    def add(guess: float) -> None:
        found = point(guess)
        if found is not None:
            points.append(found)
            points.sort()

    for factor in GUESS_FACTORS[:-1]:
        add(first * factor)
    if not _settled(points):
        add(first * GUESS_FACTORS[-1])
    crossing = _crossing(points)
    if crossing is not None and min(abs(math.log(crossing / g)) for g, _, _ in points) > REFINE_LOG:
        add(crossing)
    return points


def _confirm(ctx: RunContext, raw: np.ndarray, blobs: Blobs, guess: float) -> DiameterEstimate | None:
    """The image's nuclei measured at the scale of `guess` (px; e.g. another field of the acquisition):
    one pass over the densest window; the guess is kept when the measurement lies within
    GUESS_AGREEMENT of it (at an estimate E the network sees the median nucleus at its trained size and
    measures 0.9-1x E: module docstring) and the blob median within GUESS_BLOBS of it (nuclei twice the
    guess, which the network splits into pieces of about the guess, double the blobs); None: estimate
    from scratch. A field that runs as one tile is checked on its whole segmentation at the guess:
    confirmed, that segmentation is the run's (ctx.prepared), so the check costs no pass."""
    guess = _snapped(DiameterEstimate(guess, "guess"), ctx.model).diameter
    if not GUESS_BLOBS[0] <= blobs.median / guess <= GUESS_BLOBS[1]:
        return None
    whole = _whole_field(ctx, guess)
    if whole is not None:  # the check is the segmentation itself: kept for the run when it holds
        measured, objects = mask_diameter(_interior(whole.ids))
        measured /= ctx.scale
        choose(ctx, None)
    else:
        sample = _sample(raw, blobs, _window_side(guess, ctx.model.train_diameter, ctx.source.shape))
        _, measured, objects = _point(ctx, sample, guess) or (guess, math.nan, 0)
    if objects < GUESS_OBJECTS or abs(math.log(measured / guess)) > math.log(GUESS_AGREEMENT):
        return None
    if whole is not None:
        ctx.prepared = (ctx.model.train_diameter / guess, whole)
    return DiameterEstimate(guess, "guess", blobs.median, objects)


def _whole_field(ctx: RunContext, guess: float) -> ChunkResult | None:
    """A field that runs at the scale of `guess` as one chunk of one network tile (a field of a
    plate), segmented exactly as the run would segment it (ctx left at that scale), so that a
    confirmed guess costs no second pass; None for a larger image (ctx unchanged), or on a cluster."""
    if ctx.cluster is not None:
        return None
    choose(ctx, DiameterEstimate(guess, "guess"))
    job = ctx.job()
    chunks = chunk_windows(ctx.working.shape, job.block, job.halo)
    if job.grid.total != 1 or len(chunks) != 1:
        choose(ctx, None)
        return None
    return ctx.worker().process(chunks[0])


def _sample(raw: np.ndarray, blobs: Blobs, side: int) -> ArraySource:
    """The densest window of `side` px of the estimation sample `raw`, as a source."""
    y0, y1, x0, x1 = _densest_window(blobs, raw.shape, side)
    return ArraySource(raw[y0:y1, x0:x1], filled=True)


def _point(ctx: RunContext, sample: ArraySource, guess: float) -> Point | None:
    """(guess, measured in slide px, objects): the sample measured with `guess` as its diameter; None
    when fewer than MIN_OBJECTS whole nuclei were measured."""
    scale = float(np.clip(ctx.model.train_diameter / guess, MIN_SCALE, MAX_SCALE))
    measured, objects = _measure(ctx, ScaledSource(sample, scale))
    return (guess, measured / scale, objects) if objects >= MIN_OBJECTS else None


def _crossing(points: list[Point]) -> float | None:
    """The guess (px) at which the network measures APPARENT x the guess, i.e. sees the median nucleus
    at APPARENT x its trained diameter; None without a crossing. (fixed_point against APPARENT x guess:
    its test m >= APPARENT x g is the one `_settled` and `_decide` use.)"""
    crossing = fixed_point([(APPARENT * g, m) for g, m, _ in points])
    return None if crossing is None else crossing / APPARENT


def _settled(points: list[Point]) -> bool:
    """True when the last guess (4g) cannot change the decision: the largest guess measured so far
    measured less than APPARENT x itself. A crossing needs measured >= APPARENT x guess at its lower
    end, so none can lie between that guess and 4g, and `_decide` without a crossing looks at the
    first point and at whether every guess measured more than APPARENT x itself. Saves the 4g pass on
    most images, with the same estimate."""
    return bool(points) and points[-1][1] < APPARENT * points[-1][0]


def _window_side(first: float, train: float, shape: tuple[int, int]) -> int:
    """The first pass's window side in slide px: PASS_SIDE at the guess's scale, and on a small image
    at most SMALL_FIELD_SHARE of its pixels."""
    scale = float(np.clip(train / first, MIN_SCALE, MAX_SCALE))
    side = PASS_SIDE / scale
    return max(16, int(min(side, math.sqrt(SMALL_FIELD_SHARE * shape[0] * shape[1]))))


def _densest_window(blobs: Blobs, shape: tuple[int, int], side: int) -> tuple[int, int, int, int]:
    """The (y0, y1, x0, x1) window of at most side x side px of an image of `shape` holding the most
    blob centres (candidates on a grid of side / 4; ties go to the one nearest the centre)."""
    h, w = shape
    sh, sw = min(side, h), min(side, w)
    best, best_key = (0, sh, 0, sw), (-1, 0.0)
    step = max(1, side // 4)
    for y in sorted({*range(0, h - sh + 1, step), h - sh, (h - sh) // 2}):
        for x in sorted({*range(0, w - sw + 1, step), w - sw, (w - sw) // 2}):
            inside = int(
                ((blobs.ys >= y) & (blobs.ys < y + sh) & (blobs.xs >= x) & (blobs.xs < x + sw)).sum()
            )
            key = (inside, -abs(y + sh / 2 - h / 2) - abs(x + sw / 2 - w / 2))
            if key > best_key:
                best, best_key = (y, y + sh, x, x + sw), key
    return best


def _measure(ctx: RunContext, sample: ScaledSource) -> tuple[float, int]:
    """(median mask diameter in the sample's px, objects) of the nuclei the window does not cut in the
    network's segmentation of `sample`, run as one tile (the engine profile's tiling where a tile that
    large does not fit); every pass measures the same kind of nucleus."""
    assert ctx.runner is not None
    h, w = sample.shape
    tile = max(16, -(-max(h, w) // 16) * 16)
    limits = ctx.runner.input_metadata().shape_limits
    tiling = Tiling(tile=tile, overlap=0, batch=1, chunk=max(tile, 64), whole_image=limits is None)
    if limits is not None and not (limits.min_tile[0] <= tile <= limits.max_tile[0]):
        tiling = replace(ctx.options.tiling, tta=False)
    job = replace(ctx.job(), tiling=tiling, shape=sample.shape)
    result = ChunkWorker(job, sample, ctx.runner).process(Chunk(0, (0, h, 0, w), (0, h, 0, w)))
    return mask_diameter(_interior(result.ids))


def _interior(ids: np.ndarray) -> np.ndarray:
    """The labels with the nuclei the window's edge cuts removed: a cut nucleus is a part of one, and
    since the dynamics keep edge-cut nuclei (they are exempt from the flow check), counting them pulls
    the median down by the share of the window's nuclei on its border (on a 384 px window of 33 px
    nuclei about a third)."""
    edge = np.unique(np.concatenate([ids[0], ids[-1], ids[:, 0], ids[:, -1]]))
    return np.where(np.isin(ids, edge[edge > 0]), 0, ids)


def _decide(first: float, blobs: int, points: list[Point]) -> DiameterEstimate:
    crossing = _crossing(points)
    if crossing is not None:
        nearest = min(points, key=lambda p: abs(math.log(p[0] / crossing)))
        return DiameterEstimate(APPARENT * crossing, "network", first, nearest[2])
    if points and points[0][0] == first and points[0][1] < APPARENT * first:
        measured, objects = points[0][1], points[0][2]
        if measured / first >= 1 / AGREEMENT:
            return DiameterEstimate(measured, "network", first, objects)
    elif points and all(m > APPARENT * g for g, m, _ in points):
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
