"""`cyclepose export`, wired: checkpoint -> fp32 ONNX -> fp16 / int8 -> (engine), every artifact verified
against torch on synthetic-slide tiles, then the manifest. A failed check fails the export, naming it."""

from __future__ import annotations

import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cyclepose_deploy import limits
from cyclepose_deploy.atomic import _publish_mode, owner_tag, swap_folder
from cyclepose_deploy.defaults import DIAMETER, FLOW_SCALE, PERCENTILES, PRECISIONS
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.export import engine_step, tiles
from cyclepose_deploy.export.loaders import OnnxFromTorch, SegmenterFromCheckpoint
from cyclepose_deploy.export.profiles import DEFAULT, Profile
from cyclepose_deploy.export.verify import Reference, Thresholds, make_reference, verify_runner
from cyclepose_deploy.runtime.backends.base import Runner
from cyclepose_deploy.runtime.model.artifacts import model_from_file
from cyclepose_deploy.runtime.model.manifest import Artifact, Manifest, TensorRTInfo, sha256_file
from cyclepose_deploy.synth.shapes import ShapePrior

MIN_CALIB_TILE = 64  # px: smaller calibration tiles see no whole nucleus
ONNX_NAMES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


@dataclass
class ExportOptions:
    checkpoint: Path
    out_dir: Path
    precisions: tuple[str, ...] = PRECISIONS
    calib: list[Path] = field(default_factory=list)
    profile: Profile = DEFAULT
    engine: bool | None = None  # None: build when TensorRT and a GPU are present
    opset: int = 17
    verify_size: int = 512
    verify_tile: int = 256
    calib_tiles: int = 16
    batch: int = 4
    threads: int | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    bioimageio: bool = False  # also write a BioImage Model Zoo package (export/bioimageio.py)
    bmz_maintainers: tuple[str, ...] = ()  # GITHUB_USER[:Name] (bioimageio.PackageInfo)
    bmz_evaluation: Path | None = None  # a benchmarks/real_quality.py JSON for config.bioimageio.evaluations


@dataclass
class ExportContext:
    options: ExportOptions
    net: Any
    config: dict[str, Any]
    channels: int
    tiles: np.ndarray
    reference: Reference
    report: Callable[[str], None]
    bn: dict[str, int] = field(default_factory=dict)
    final_dir: Path | None = None  # where the export lands (options.out_dir is the staging folder)


def run_export(options: ExportOptions, report: Callable[[str], None] = print) -> Manifest:
    """Write DIR/model*.onnx (+ engine) and DIR/manifest.json; raise UserError when a check fails.

    Transactional: everything is built in a hidden staging folder beside DIR and swapped in only once
    every artifact passed its checks, so a failed or killed re-export leaves the previous export
    working (and a first export that fails leaves nothing)."""
    check_options(options)
    final = options.out_dir.resolve()  # "-o ." must name the folder, not the cwd entry
    check_export_folder(final)
    net, config = SegmenterFromCheckpoint(options.checkpoint)()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{final.name}.{owner_tag()}.", suffix=".partial", dir=final.parent)
        )
    except OSError as exc:
        raise UserError(f"cannot create {final}: {exc.strerror or exc}; choose a writable folder") from None
    try:
        manifest = _export(replace(options, out_dir=staging), net, config, report, final)
        swap_in(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest.root = final
    return manifest


EXPORT_FILES = {*ONNX_NAMES.values(), engine_step.ENGINE_NAME, "manifest.json", "bioimageio"}


def check_export_folder(final: Path) -> None:
    """-o must be new, empty, or an earlier export (its files are replaced as a whole)."""
    if final.exists() and not final.is_dir():
        raise UserError(f"{final} is a file: -o needs a folder")
    if final.is_dir():
        other = sorted(p.name for p in final.iterdir() if p.name not in EXPORT_FILES and not _ours(p.name))
        if other:
            raise UserError(
                f"{final} holds files that are not part of an export ({', '.join(other[:3])}): "
                "choose a new or empty folder"
            )


def _ours(name: str) -> bool:
    """Temporary files of earlier (killed) exports, which the swap may remove."""
    return name.startswith(".") and (name.endswith(".partial") or ".partial-" in name)


def swap_in(staging: Path, final: Path) -> None:
    """Replace `final` by `staging` (runtime.atomic.swap_folder: the old export goes only once the new
    one is in place)."""
    _publish_mode(staging, folder=True)
    swap_folder(staging, final)


def _export(
    options: ExportOptions, net: Any, config: dict[str, Any], report: Callable[[str], None], final: Path
) -> Manifest:
    channels = int(config["in_channels"])
    fp32_path, bn = OnnxFromTorch(net, options.out_dir / ONNX_NAMES["fp32"], channels, options.opset)()
    report(
        f"fp32 ONNX: BatchNorm folded into convs: {bn['batchnorm_folded']} of {bn['batchnorm_total']} "
        f"({bn['batchnorm_remaining']} pre-activation BNs cannot be folded)"
    )
    ctx = make_context(options, net, config, channels, report)
    ctx.bn = bn
    ctx.final_dir = final
    artifacts = [
        verify_onnx(ctx, p, build_onnx(ctx, p, fp32_path)) for p in PRECISIONS if p in options.precisions
    ]
    trt_info = engine_artifact(ctx, artifacts)
    manifest = make_manifest(ctx, artifacts, trt_info)
    manifest.save(options.out_dir)
    fail_on_errors(artifacts)
    if options.bioimageio:
        _bioimageio(options, config, manifest, fp32_path, channels, report)
    return manifest


def _bioimageio(
    options: ExportOptions,
    config: dict[str, Any],
    manifest: Manifest,
    fp32_path: Path,
    channels: int,
    report: Callable[[str], None],
) -> None:
    from cyclepose_deploy.export import bioimageio

    info = bioimageio.PackageInfo(
        options.out_dir,
        fp32_path,
        config,
        manifest.source_sha256,
        options.checkpoint.name,
        options.opset,
        channels,
        list(options.bmz_maintainers),
        options.bmz_evaluation,
    )
    rdf = bioimageio.write_package(info)
    problem = bioimageio.validate(rdf)
    if problem is not None and not problem.startswith("not validated"):
        raise UserError(f"the bioimage.io package does not validate: {problem.splitlines()[0][:300]}")
    report(f"bioimage.io package: {bioimageio.FOLDER}/rdf.yaml ({problem or 'bioimageio.spec: valid'})")


def check_options(options: ExportOptions) -> None:
    unknown = [p for p in options.precisions if p not in PRECISIONS]
    if unknown or not options.precisions:
        raise UserError(
            f"--precision {','.join(options.precisions)} is invalid: choose from fp32, fp16, int8"
        )
    if options.verify_tile % 16 or options.verify_size < options.verify_tile:
        raise UserError("verification tile must be a multiple of 16 and no larger than the slide")
    missing = [str(p) for p in options.calib if not Path(p).is_file()]
    if missing:
        raise UserError(f"calibration image {missing[0]} not found: fix the --calib path")
    if options.engine and "fp16" not in options.precisions:
        raise UserError("--engine is built from the fp16 ONNX: add fp16 to --precision")
    limits.EXPORT["opset"].check("opset", options.opset)
    if options.threads is not None:
        limits.threads().check("threads", options.threads)


def make_context(
    options: ExportOptions, net: Any, config: dict[str, Any], channels: int, report: Callable[[str], None]
) -> ExportContext:
    from cyclepose_deploy.export.torch_runner import TorchRunner

    slide = tiles.synthetic_slide(options.verify_size, channels, seed=1)
    verify_tiles = tiles.grid_tiles(slide, options.verify_tile)
    reference = make_reference(
        TorchRunner(net, channels, options.threads), verify_tiles, options.batch, FLOW_SCALE
    )
    report(
        f"verification: {len(verify_tiles)} tiles of {options.verify_tile}px from a synthetic slide, "
        f"{sum(int(lab.max()) for lab in reference.labels)} reference objects"
    )
    return ExportContext(options, net, config, channels, verify_tiles, reference, report)


def build_onnx(ctx: ExportContext, precision: str, fp32_path: Path) -> Path:
    dst = ctx.options.out_dir / ONNX_NAMES[precision]
    if precision == "fp16":
        from cyclepose_deploy.export.fp16 import convert_fp16

        return convert_fp16(fp32_path, dst)
    if precision == "int8":
        from cyclepose_deploy.export.int8 import quantize_int8

        return quantize_int8(fp32_path, dst, calibration_tiles(ctx))
    return fp32_path


def calibration_tiles(ctx: ExportContext) -> np.ndarray:
    opts = ctx.options
    if opts.calib:
        images = tiles.read_images(opts.calib, ctx.channels)
        source = f"{len(images)} --calib image(s)"
    else:
        images = [tiles.synthetic_slide(max(opts.verify_size, 2 * opts.profile.tile), ctx.channels, seed=7)]
        source = "a synthetic slide (pass --calib IMAGE to use your own)"
    tile = min(opts.profile.tile, min(min(i.shape[1:]) for i in images)) // 16 * 16
    if tile < MIN_CALIB_TILE:
        small = min(images, key=lambda i: min(i.shape[1:]))
        raise UserError(
            f"--calib images must be at least {MIN_CALIB_TILE}x{MIN_CALIB_TILE} px for int8 calibration; "
            f"one is {small.shape[1]}x{small.shape[2]}: it is smaller than a useful tile, pass larger images"
        )
    ctx.report(f"int8: calibrating on {opts.calib_tiles} tiles of {tile}px from {source}")
    return tiles.cut_tiles(images, tile, opts.calib_tiles, seed=3)


def verify_onnx(ctx: ExportContext, precision: str, path: Path) -> Artifact:
    runner = model_from_file(path, precision=precision).runner(threads=ctx.options.threads)
    return verified_artifact(ctx, runner, path, "onnx", precision)


def verified_artifact(ctx: ExportContext, runner: Runner, path: Path, fmt: str, precision: str) -> Artifact:
    opts = ctx.options
    result = verify_runner(runner, ctx.reference, ctx.tiles, opts.batch, FLOW_SCALE, opts.thresholds)
    ctx.report(result.summary())
    return Artifact(path.name, fmt, precision, sha256_file(path), result.to_dict(), result.passed)


def engine_artifact(ctx: ExportContext, artifacts: list[Artifact]) -> TensorRTInfo | None:
    opts = ctx.options
    fp16 = opts.out_dir / ONNX_NAMES["fp16"]
    target = engine_step.EngineTarget(opts.checkpoint, opts.out_dir, fp16, opts.profile, ctx.channels)
    shown = ctx.final_dir or opts.out_dir  # what the printed commands name
    shown_target = replace(target, out_dir=shown, fp16_onnx=shown / ONNX_NAMES["fp16"])
    if opts.engine is False:
        return None
    reason = engine_step.tensorrt_unavailable_reason()
    if reason is None and "fp16" not in opts.precisions:
        reason = "the fp16 ONNX was not requested (add fp16 to --precision)"
    if reason is not None:
        if opts.engine:
            raise UserError(f"--engine: {reason}; run the export on the target GPU machine")
        for line in engine_step.engine_instructions(shown_target, reason, "fp16" in opts.precisions):
            ctx.report(line)
        return None
    path, info = engine_step.build_engine(target)
    engine = model_from_file(path, channels=ctx.channels, tensorrt=info)
    artifacts.append(verified_artifact(ctx, engine.runner(), path, engine.format, engine.precision))
    return info


def make_manifest(ctx: ExportContext, artifacts: list[Artifact], trt: TensorRTInfo | None) -> Manifest:
    norm = ctx.config.get("normalization") or {"lower": PERCENTILES[0], "upper": PERCENTILES[1]}
    diameter = [float(d) for d in ctx.config.get("diameter") or DIAMETER]
    return Manifest(
        channels=ctx.channels,
        diameter=diameter,
        normalization={k: float(v) for k, v in norm.items()},
        source_sha256=sha256_file(ctx.options.checkpoint),
        artifacts=artifacts,
        flow_scale=FLOW_SCALE,
        max_extent=round(max_extent(ctx.config, diameter), 2),
        tensorrt=trt,
        tools=tool_versions(trt),
        export={"opset": ctx.options.opset, "profile": ctx.options.profile.name, **ctx.bn},
    )


def max_extent(config: dict[str, Any], diameter: list[float]) -> float:
    """The longest nucleus (px) of the shape prior the model was trained with: its diameter range and,
    where the checkpoint records them, its elongation and deformation (else the prior's defaults)."""
    shape = {k: float(config[k]) for k in ("max_aspect", "deformation") if k in config}
    return ShapePrior(diameter_min=diameter[0], diameter_max=diameter[1], **shape).max_extent()


def tool_versions(trt: TensorRTInfo | None) -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    from cyclepose_deploy.version import __version__ as own

    tools = {
        "cyclepose_deploy": own,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
    if trt is not None:
        tools["tensorrt"] = trt.version
    return tools


def fail_on_errors(artifacts: list[Artifact]) -> None:
    failed = [a for a in artifacts if not a.passed]
    if failed:
        details = "; ".join(failure_text(a) for a in failed)
        raise UserError(
            f"verification failed: {details}. The manifest marks them failed; retrain or export "
            "fewer precisions (--precision)"
        )


def failure_text(art: Artifact) -> str:
    v = art.verification
    import math

    values = [v.get(key) for key in ("f1", "max_abs") if key in v]
    if any(not isinstance(x, (int, float)) or not math.isfinite(x) for x in values):
        return f"{art.file} gives NaN or infinite outputs (broken weights or BatchNorm statistics)"
    if v.get("kind") == "labels":
        return f"{art.file} mask F1 {v['f1']:.4f} < {v['min_f1']} (short by {v['min_f1'] - v['f1']:.4f})"
    ratio = v["max_abs"] / v["atol"]
    return f"{art.file} max abs diff {v['max_abs']:.3g} > {v['atol']} ({ratio:.1f}x the limit)"
