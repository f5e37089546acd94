"""Constants and defaults that cross stages, in one place (runtime is the base layer, so every stage,
the CLI included, can read them from here). Change a value here and every stage follows.

Network I/O: what export writes into the ONNX model and the manifest, and what the runtime expects.
Dynamics: Cellpose 3's defaults for flows -> labels. Tiling: what `cyclepose infer` and `bench` use
when not told otherwise.
"""

from __future__ import annotations

# network I/O (docs/CONTRACTS.md, Network I/O) ------------------------------------------------------
FLOW_SCALE = 5.0  # Cellpose's convention: S predicts 5 x unit flows; the runtime divides by this
PRECISIONS = ("fp32", "fp16", "int8")  # the ONNX precisions export writes (fp32 first: the others derive)
INPUT_NAME = "image"
OUTPUT_NAME = "flows"
SIZE_MULTIPLE = 16  # H and W of a network input (the network pools by 8; 16 is the safe multiple)
PERCENTILES = (1.0, 99.0)  # normalisation: these intensity percentiles map to 0 and 1

# nucleus size (pixels) ---------------------------------------------------------------------------
DIAMETER = (10.0, 30.0)  # mean-diameter range of the shape prior; a model without a manifest gets it
# A manifest without `max_extent` (exported before it existed) gets this many diameter[1] as the
# longest extent of a nucleus: above the default shape prior's bound (1.72 x, synth/shapes.py).
EXTENT_PER_DIAMETER = 2.0

# tiling and chunks (`cyclepose infer`, `cyclepose bench`) -------------------------------------------
TILE = 256
OVERLAP = 32
BATCH = 8
CHUNK = 2048

# flow dynamics (Cellpose 3's compute_masks defaults) ---------------------------------------------
CELLPROB_THRESHOLD = 0.0
FLOW_THRESHOLD = 0.4
NITER = 200
MIN_SIZE = 15
# An object must be brighter than the ring around it by this much (normalised units, 1 = a bright
# nucleus; runtime.normalize keeps noise far below it): fluorescent nuclei are never darker than
# their surroundings, and a network can see "nuclei" in empty background (dynamics/masks.py).
MIN_CONTRAST = 0.1
CONTRAST_RING = 3  # px around an object that define its local background
# ... and significantly so: (inside - ring) / (noise sigma x sqrt(1/n_inside + 1/n_ring)) must reach
# this many sigmas, with the slide's noise sigma from runtime.normalize. Camera noise can make a few
# small blobs 0.1 brighter than their ring by chance; a real nucleus is tens of sigmas above it.
CONTRAST_SIGMAS = 6.0
OUTLINE_SHELL = 2  # px an outline may move to its half-maximum edge (dynamics/masks.refine_outlines)
OUTLINE_LEVEL = 0.5  # where between background (0) and the object's mean (1) the outline sits
OUTLINE_GAP = 0  # px skipped beyond the object before the background ring is measured
MAX_SIZE_FRACTION = 0.4


def extent_for(diameter_max: float, max_extent: float | None = None) -> float:
    """The longest extent of a nucleus in pixels: the manifest's `max_extent` when it has one, else a
    conservative multiple of the largest mean diameter."""
    return float(max_extent) if max_extent else EXTENT_PER_DIAMETER * float(diameter_max)
