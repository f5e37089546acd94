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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cyclepose_deploy.errors import UserError

FOLDER = "bioimageio"
FORMAT_VERSION = "0.5.4"
TEST_TILE = 256
EPS = 1e-6  # scale_range's eps
IOUS = ("0.5", "0.75", "0.9")  # the evaluation's IoU thresholds

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


@dataclass
class PackageInfo:
    """What the package is made from. maintainers: "GITHUB_USER" or "GITHUB_USER:Full Name" (the zoo
    asks for at least one, with a GitHub account); evaluation: a benchmarks/real_quality.py JSON whose
    scores go into config.bioimageio.evaluations."""

    export_dir: Path
    fp32_onnx: Path
    config: dict[str, Any]
    source_sha256: str
    checkpoint_name: str
    opset: int
    channels: int
    maintainers: list[str] = field(default_factory=list)
    evaluation: Path | None = None


def write_package(info: PackageInfo) -> Path:
    """EXPORT/bioimageio/rdf.yaml and its files (weights, test tensors, cover, README); returns the rdf
    path. Raises UserError for a 2-channel model (the package describes one fluorescence channel)."""
    import yaml

    if info.channels != 1:
        raise UserError("--bioimageio packages one-channel models; this one takes 2 channels")
    folder = info.export_dir / FOLDER
    folder.mkdir()
    shutil.copyfile(info.fp32_onnx, folder / "model.onnx")
    test_input = _test_input()
    np.save(folder / "test_input.npy", test_input)
    test_output = _test_output(folder / "model.onnx", test_input)
    np.save(folder / "test_output.npy", test_output)
    _sample_tensors(folder, test_input, test_output)
    _cover(folder / "cover.png", test_input, test_output)
    diameter = float(info.config.get("diam_mean", 30.0))  # the Segmenter's default (train/checkpoint.py)
    (folder / "README.md").write_text(
        DOC.format(diameter=diameter, checkpoint=info.checkpoint_name, sha=info.source_sha256)
    )
    rdf = _rdf(folder, diameter, info)
    with open(folder / "rdf.yaml", "w") as handle:
        yaml.safe_dump(rdf, handle, sort_keys=False, allow_unicode=True)
    return folder / "rdf.yaml"


def _sample_tensors(folder: Path, test_input: np.ndarray, test_output: np.ndarray) -> None:
    """sample_input.tif / sample_output.tif: the test tensors as images viewers open (the zoo's FAIR
    checks ask for them)."""
    import tifffile

    tifffile.imwrite(folder / "sample_input.tif", test_input[0, 0])
    tifffile.imwrite(folder / "sample_output.tif", test_output[0])


def _cover(path: Path, test_input: np.ndarray, test_output: np.ndarray) -> None:
    """cover.png (2:1, as the zoo asks): the test input beside it with the outlines of the nuclei
    Cellpose's dynamics find in the test output."""
    from cyclepose_deploy.runtime.dynamics import flows_to_labels
    from cyclepose_deploy.runtime.outputs.preview import encode_png, outlined

    raw = test_input[0, 0]
    low, high = np.percentile(raw, [1.0, 99.0])
    grey = np.clip((raw - low) / (high - low + EPS) * 255, 0, 255).astype(np.uint8)
    out = test_output[0]
    labels = flows_to_labels(np.ascontiguousarray(out[:2] / 5.0), np.ascontiguousarray(out[2]))
    left = np.repeat(grey[:, :, None], 3, axis=2)
    path.write_bytes(encode_png(np.concatenate([left, outlined(grey, labels)], axis=1)))


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
    """A spatial axis in pixels: the model's scale is a nucleus diameter in px, not a pixel size (it
    was trained on images of mixed magnifications), so no physical unit is claimed."""
    return {"type": "space", "id": axis, "size": size}


def _rdf(folder: Path, diameter: float, info: PackageInfo) -> dict[str, Any]:
    from cyclepose_deploy.version import __version__

    rdf: dict[str, Any] = {
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
                "sample_tensor": {"source": "sample_input.tif", "sha256": _sha(folder / "sample_input.tif")},
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
                "sample_tensor": {
                    "source": "sample_output.tif",
                    "sha256": _sha(folder / "sample_output.tif"),
                },
                "data": {"type": "float32"},
            }
        ],
        "weights": {
            "onnx": {
                "source": "model.onnx",
                "sha256": _sha(folder / "model.onnx"),
                "opset_version": info.opset,
            }
        },
        "covers": ["cover.png"],
        "config": {"bioimageio": _bioimageio_config(info, diameter)},
    }
    maintainers = [_maintainer(text) for text in info.maintainers]
    if maintainers:
        rdf["maintainers"] = maintainers
    return rdf


def _maintainer(text: str) -> dict[str, str]:
    """'GITHUB_USER' or 'GITHUB_USER:Full Name' -> the zoo's maintainer entry."""
    user, _, name = text.partition(":")
    if not user.strip() or "/" in name:
        raise UserError(f"maintainer {text!r}: give GITHUB_USER or GITHUB_USER:Full Name")
    return {"github_user": user.strip(), **({"name": name.strip()} if name.strip() else {})}


def _bioimageio_config(info: PackageInfo, diameter: float) -> dict[str, Any]:
    """config.bioimageio: what the model is for and how it was trained, the tolerance of its test
    (export verifies the ONNX against torch within 1e-4), and the evaluation when one is given."""
    provenance = info.config.get("provenance") or {}
    seconds = provenance.get("train_seconds") if isinstance(provenance, dict) else None
    training: dict[str, Any] = {
        "training_preprocessing": f"percentiles 1 -> 0, 99 -> 1; nuclei rescaled to {diameter:g} px",
        "training_batch_size": float(info.config.get("batch", 8)),
        "loss_function": "CycleGAN (LSGAN, L1 image cycle) and Cellpose's flow loss on synthetic masks",
        "optimizer": "Adam",
    }
    if seconds:
        training["training_duration"] = float(seconds)
    out: dict[str, Any] = {
        "reproducibility_tolerance": [
            {"absolute_tolerance": 1e-4, "relative_tolerance": 1e-3, "mismatched_elements_per_million": 100}
        ],
        "architecture_type": "CNN (U-Net)",
        "architecture_description": f"Cellpose 3 CPnet layout, widths {info.config.get('widths')}",
        "modality": "fluorescence microscopy",
        "target_structure": ["nucleus"],
        "task": "instance segmentation (Cellpose flows and cell probability)",
        "training": training,
    }
    if info.evaluation is not None:
        out["evaluations"] = [_evaluation(info.evaluation)]
    return out


def _evaluation(path: Path) -> dict[str, Any]:
    """An evaluation entry from a benchmarks/real_quality.py result (F1 and AP at IoU 0.5, 0.75, 0.9
    of its first model)."""
    import json

    try:
        data = json.loads(path.read_text())
        name = next(k for k in data["results"] if k.startswith("cyclepose"))
        scores = data["results"][name]
        results = [[float(scores[f"{kind}@{t}"]) for t in IOUS] for kind in ("f1", "ap")]
        count = int(scores["images"])
    except (OSError, ValueError, KeyError, StopIteration, TypeError) as exc:
        raise UserError(
            f"--bmz-evaluation {path} is not a benchmarks/real_quality.py result ({type(exc).__name__}): "
            "pass the JSON it writes with --out"
        ) from None
    return {
        "dataset_id": "bbbc038-dsb2018-fluorescence",
        "dataset_source": "https://bbbc.broadinstitute.org/BBBC038",
        "dataset_role": "validation",
        "sample_count": count,
        "evaluation_factors": [f"IoU {t}" for t in IOUS],
        "evaluation_factors_long": [f"matches at intersection over union >= {t}" for t in IOUS],
        "metrics": ["F1", "AP"],
        "metrics_long": ["F1 of one-to-one matches", "average precision TP / (TP + FP + FN)"],
        "results": results,
        "results_summary": "dataset-level matching as StarDist's matching_dataset, default settings",
    }


def validate(rdf: Path) -> str | None:
    """None when bioimageio.spec accepts the package (or is not installed: then a note), else the
    validator's summary. The files (weights, test tensors, cover) are checked against their sha256 on a
    copy without the entries the validator looks up online (maintainers' GitHub accounts, evaluation
    dataset ids); the whole description is then checked offline, so the export works without a network."""
    try:
        from bioimageio.spec import load_description
    except ImportError:
        return "not validated here (pip install bioimageio.spec to check it)"
    import yaml

    data = yaml.safe_load(rdf.read_text())
    local = {k: v for k, v in data.items() if k != "maintainers"}
    local["config"] = {"bioimageio": {**data["config"]["bioimageio"], "evaluations": []}}
    probe = rdf.with_name(".rdf-files.yaml")
    try:
        probe.write_text(yaml.safe_dump(local, sort_keys=False, allow_unicode=True))
        files = load_description(probe, perform_io_checks=True).validation_summary
    finally:
        probe.unlink(missing_ok=True)
    if files.status not in ("passed", "valid-format"):
        return files.format()
    whole = load_description(rdf, perform_io_checks=False).validation_summary
    return None if whole.status in ("passed", "valid-format") else whole.format()
