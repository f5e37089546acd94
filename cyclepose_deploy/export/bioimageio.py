"""`cyclepose export ... --bioimageio`: a BioImage Model Zoo package of S (rdf.yaml, format 0.5) in
EXPORT/bioimageio/: the verified fp32 ONNX weights, a test input and its output, and the pre- and
post-processing described, so the model can be uploaded to the zoo and run by its consumers.

Pre-processing is the spec's `scale_range` with Cellpose's 1st/99th percentiles (the runtime adds
guards for sparse and empty fields on top; see runtime/source/normalize.py). The output is Cellpose's: flows
(y, x, times 5) and the cell-probability logit; turning them into instance labels is Cellpose's flow
dynamics, which the spec cannot express as a post-processing step, so the documentation names it and
`cyclepose infer` runs it. The package is validated with `bioimageio.spec` when it is installed.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cyclepose_deploy.errors import UserError

FOLDER = "bioimageio"
FORMAT_VERSION = "0.5.4"
TEST_TILE = 256
EPS = 1e-6  # scale_range's eps

DOC = """# CyclePose nuclei segmenter (S)

Annotation-free nuclei segmentation for fluorescence microscopy: the image-to-mask generator S of a
CycleGAN trained between unlabeled images and synthetic masks (CyclePose, Utz et al., 2025), a
Cellpose-style network.

## Input
One fluorescence channel, float32, (batch, 1, y, x) with y and x multiples of 16 (at least 64).
Pre-processing: percentile normalisation, the 1st percentile to 0 and the 99th to 1 (`scale_range`).
The network was trained at a median nucleus diameter of {diameter:g} px: rescale images so nuclei have
about that size.

## Output
(batch, 3, y, x): flow_y and flow_x (Cellpose's convention, 5 x unit flows towards each nucleus
centre) and the cell-probability logit. Instance labels come from Cellpose's flow dynamics (follow
the flows from pixels with logit > 0 for 200 steps, group pixels that meet at a centre, drop masks
whose flows disagree by more than flow_threshold 0.4), as `cellpose.dynamics.compute_masks` and
`cyclepose infer` do.

## Provenance
Exported by cyclepose-deploy from `{checkpoint}` (sha256 {sha}).
"""


def write_package(
    export_dir: Path,
    fp32_onnx: Path,
    config: dict[str, Any],
    source_sha256: str,
    checkpoint_name: str,
    opset: int,
    channels: int,
) -> Path:
    """EXPORT/bioimageio/rdf.yaml and its files; returns the rdf path. Raises UserError for a
    2-channel model (the package describes one fluorescence channel)."""
    import yaml

    if channels != 1:
        raise UserError("--bioimageio packages one-channel models; this one takes 2 channels")
    folder = export_dir / FOLDER
    folder.mkdir()
    shutil.copyfile(fp32_onnx, folder / "model.onnx")
    test_input = _test_input()
    np.save(folder / "test_input.npy", test_input)
    np.save(folder / "test_output.npy", _test_output(folder / "model.onnx", test_input))
    diameter = float(config.get("diam_mean", 30.0))  # the Segmenter's default, as in train/checkpoint.py
    (folder / "README.md").write_text(
        DOC.format(diameter=diameter, checkpoint=checkpoint_name, sha=source_sha256)
    )
    rdf = _rdf(folder, diameter, opset)
    with open(folder / "rdf.yaml", "w") as handle:
        yaml.safe_dump(rdf, handle, sort_keys=False, allow_unicode=True)
    return folder / "rdf.yaml"


def _test_input() -> np.ndarray:
    from cyclepose_deploy.synth.slide import make_slide

    image, _ = make_slide(TEST_TILE, TEST_TILE, 11)
    return image.astype(np.float32)[None, None]


def _test_output(model: Path, raw: np.ndarray) -> np.ndarray:
    """The ONNX output for the test input pre-processed exactly as the spec's scale_range does."""
    from cyclepose_deploy.runtime.backends.ort import OrtRunner

    low, high = np.percentile(raw, [1.0, 99.0])
    normalised = ((raw - low) / (high - low + EPS)).astype(np.float32)
    with OrtRunner(model, threads=1) as runner:
        return runner.infer(normalised)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _space(axis: str, size: Any) -> dict[str, Any]:
    return {"type": "space", "id": axis, "size": size, "unit": "micrometer", "scale": 1.0}


def _rdf(folder: Path, diameter: float, opset: int) -> dict[str, Any]:
    from cyclepose_deploy.version import __version__

    return {
        "type": "model",
        "format_version": FORMAT_VERSION,
        "name": "CyclePose nuclei",
        "description": "Annotation-free fluorescence nuclei segmentation: Cellpose-style flows and "
        "cell probability from CyclePose's image-to-mask generator.",
        "authors": [{"name": "cyclepose-deploy contributors"}],
        "cite": [
            {
                "text": "Utz et al. CyclePose: annotation-free nuclei segmentation with a CycleGAN (2025)",
                "url": "https://github.com/cyclepose/cyclepose-deploy",
            },
            {
                "text": "Stringer et al. Cellpose: a generalist algorithm for cellular segmentation (2021)",
                "doi": "10.1038/s41592-020-01018-x",
            },
        ],
        "license": "MIT",
        "documentation": "README.md",
        "tags": ["nuclei", "fluorescence", "instance-segmentation", "cellpose", "2d", "onnx"],
        "version": __version__,
        "inputs": [
            {
                "id": "image",
                "description": f"one fluorescence channel; nuclei of about {diameter:g} px",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": ["fluorescence"]},
                    _space("y", {"min": 64, "step": 16}),
                    _space("x", {"min": 64, "step": 16}),
                ],
                "test_tensor": {"source": "test_input.npy", "sha256": _sha(folder / "test_input.npy")},
                "data": {"type": "float32"},
                "preprocessing": [
                    {
                        "id": "scale_range",
                        "kwargs": {
                            "axes": ["y", "x"],
                            "min_percentile": 1.0,
                            "max_percentile": 99.0,
                            "eps": EPS,
                        },
                    }
                ],
            }
        ],
        "outputs": [
            {
                "id": "flows",
                "description": "flow_y, flow_x (5 x unit flows) and the cell-probability logit; labels "
                "come from Cellpose's flow dynamics (see README.md)",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": ["flow_y", "flow_x", "cellprob"]},
                    _space("y", {"tensor_id": "image", "axis_id": "y"}),
                    _space("x", {"tensor_id": "image", "axis_id": "x"}),
                ],
                "test_tensor": {"source": "test_output.npy", "sha256": _sha(folder / "test_output.npy")},
                "data": {"type": "float32"},
            }
        ],
        "weights": {
            "onnx": {"source": "model.onnx", "sha256": _sha(folder / "model.onnx"), "opset_version": opset}
        },
    }


def validate(rdf: Path) -> str | None:
    """None when bioimageio.spec accepts the package (or is not installed: then a note), else the
    validator's summary."""
    try:
        from bioimageio.spec import load_description
    except ImportError:
        return "not validated here (pip install bioimageio.spec to check it)"
    descr = load_description(rdf, perform_io_checks=True)
    summary = descr.validation_summary
    if summary.status in ("passed", "valid-format"):
        return None
    return summary.format()
