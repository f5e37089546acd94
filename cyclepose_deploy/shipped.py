"""The shipped models by name, torch-free: the CLI and the API resolve a name without importing torch
(an export folder given to `cyclepose infer` must not pay torch's import, about 1.7 s)."""

from __future__ import annotations

from pathlib import Path

SHIPPED = {  # name -> file in cyclepose_deploy/models (see README: the shipped models)
    "nuclei": "cyclepose-nuclei.pt",  # real fluorescence nuclei (DSB2018 images, no labels)
    "synth": "cyclepose-synth.pt",  # the synthetic slides of `cyclepose synth`
}
MODELS = Path(__file__).resolve().parent / "models"


def shipped_or_path(name_or_path: str | Path) -> Path:
    """A path as given, or the file of a shipped model named in SHIPPED (when no such path exists)."""
    path = Path(name_or_path)
    if not path.exists() and str(name_or_path) in SHIPPED:
        return MODELS / SHIPPED[str(name_or_path)]
    return path
