"""Models by name or checkpoint for the Python API and `cyclepose infer --model`: a shipped model name
(`nuclei`, `synth`), a CyclePose `.pt` checkpoint or a Cellpose 3 model file is exported once (verified
fp32 and int8 ONNX, `run_export`) into a cache folder keyed by the checkpoint's sha256, and that export
folder is what the runtime loads. Like Cellpose's model folder, the cache lives under XDG_CACHE_HOME
(default ~/.cache) in cyclepose-deploy/exports; CYCLEPOSE_CACHE overrides it. Exporting needs torch; on a
machine without it, export on a workstation (`cyclepose export`) and pass the folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.model.artifacts import SUFFIX_FORMATS
from cyclepose_deploy.runtime.model.manifest import MANIFEST_NAME, sha256_file

CACHE_PRECISIONS = ("fp32", "int8")  # the CPU runtime's choice (int8 where it verifies) and its source
# Part of the cache key: raise it when the exporter writes different artifacts for the same checkpoint
# (2: int8 with BatchNormalization as depthwise convs), so an older cached export is not reused.
EXPORTER_REVISION = 2


def cache_root() -> Path:
    """The folder exports are cached in (module docstring)."""
    if os.environ.get("CYCLEPOSE_CACHE"):
        return Path(os.environ["CYCLEPOSE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cyclepose-deploy" / "exports"


def needs_export(model: str | os.PathLike[str]) -> bool:
    """True for a shipped model name or a checkpoint file: what the runtime cannot load as it is (an
    export folder, .onnx or TensorRT engine it can)."""
    from cyclepose_deploy.shipped import SHIPPED

    path = Path(model)
    if not path.exists():
        return str(model) in SHIPPED
    return path.is_file() and path.suffix.lower() not in SUFFIX_FORMATS


def exported(model: str | os.PathLike[str], say: Callable[[str], None] = lambda text: None) -> Path:
    """The export folder of a shipped model name or a checkpoint file, exported on first use (about a
    minute) and reused while the checkpoint's bytes and EXPORTER_REVISION are unchanged. UserError for
    anything that is not a loadable checkpoint (train.checkpoint), or when torch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError(
            f"{model} is a checkpoint; loading it needs torch to export it once: pip install "
            "'cyclepose-deploy[torch]', or run `cyclepose export` on a machine with torch and pass the folder"
        ) from None
    from cyclepose_deploy.export.pipeline import ExportOptions, run_export
    from cyclepose_deploy.shipped import shipped_or_path

    checkpoint = shipped_or_path(model)
    if not checkpoint.is_file():
        raise UserError(f"model {model} not found: give an export folder, an .onnx, a .pt or nuclei / synth")
    folder = cache_root() / f"{sha256_file(checkpoint)[:24]}-r{EXPORTER_REVISION}"
    if (folder / MANIFEST_NAME).is_file():
        return folder
    say(f"exporting {checkpoint.name} once to {folder} (ONNX fp32 and int8, verified)")
    run_export(
        ExportOptions(checkpoint=checkpoint, out_dir=folder, precisions=CACHE_PRECISIONS, engine=False), say
    )
    return folder
