"""Checkpoints: one dict saved by torch.save and loaded with weights_only=True (no code is ever
unpickled). `load_segmenter` also accepts a plain Cellpose 3 CPnet state dict file."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from cyclepose_deploy.atomic import atomic_path
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.nets.segmenter import Segmenter

FORMAT = "cyclepose-checkpoint"
VERSION = 1
DEFAULT_NORMALIZATION = {"lower": 1.0, "upper": 99.0}
_FIRST_PROJ = "downsample.down.res_down_{n}.proj.1.weight"


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> Path:
    """Write atomically: a crash mid-save leaves the previous checkpoint intact."""
    data = {"format": FORMAT, "version": VERSION, **checkpoint}
    with atomic_path(path) as temp:
        try:
            torch.save(data, temp)
        except RuntimeError as exc:  # torch wraps a full disk as "PytorchStreamWriter failed writing"
            detail = str(exc).splitlines()[0][:160]
            raise UserError(
                f"could not write checkpoint {path} ({detail}); free space or choose another path "
                "(the previous checkpoint, if any, is untouched)"
            ) from None
    return Path(path)


def _torch_load(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: pass a model.pt written by `cyclepose train`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"{path} holds code or objects other than tensors and plain containers; only weights-only "
            "files are loaded: re-save the state dict with torch.save(model.state_dict(), path)"
        ) from None
    except Exception as exc:  # torch raises many types for a damaged file
        raise UserError(
            f"{path} is not a readable torch checkpoint (truncated or another file type: "
            f"{type(exc).__name__}); pass a model.pt from `cyclepose train` or a Cellpose 3 model file"
        ) from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A CyclePose checkpoint dict, version-checked; anything else raises UserError."""
    data = _torch_load(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(
            f"{path} is not a CyclePose checkpoint (no format tag {FORMAT!r}); "
            "pass a model.pt written by `cyclepose train`"
        )
    if data.get("version") != VERSION:
        raise UserError(f"{path} has checkpoint version {data.get('version')}, this toolkit reads {VERSION}")
    for key in ("config", "S"):
        if key not in data:
            raise UserError(f"{path} lacks {key!r}: the checkpoint is incomplete; train again or re-save it")
    check_config(data["config"], str(path))
    for key in ("S", "G", "D_image", "D_mask", "S_train", "S_init"):
        if key in data:
            check_state(data[key], f"{path} [{key}]")
    return data


MAX_WIDTH = 1024  # channels per level: Cellpose uses 32..256


def check_config(config: Any, source: str) -> None:
    """Refuse a config that cannot build a segmenter, before any memory is allocated for it."""
    if not isinstance(config, dict):
        raise UserError(f"{source}: config is {type(config).__name__}, not a dict; train again or re-save it")
    missing = [k for k in ("in_channels", "widths") if k not in config]
    if missing:
        raise UserError(f"{source}: config lacks {', '.join(missing)}; train again or re-save it")
    channels, widths = config["in_channels"], config["widths"]
    if isinstance(channels, bool) or channels not in (1, 2):
        raise UserError(f"{source}: in_channels {channels!r} (need 1 or 2); train again or re-save it")
    if (
        not isinstance(widths, (list, tuple))
        or not 2 <= len(widths) <= 8
        or not all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_WIDTH for w in widths)
    ):
        raise UserError(
            f"{source}: widths {str(widths)[:80]} (need 2 to 8 channel counts of 1..{MAX_WIDTH}); "
            "train again or re-save it"
        )
    from cyclepose_deploy import limits

    estimate = limits.approx_weights(widths)
    if estimate > limits.MAX_WEIGHTS:
        raise UserError(f"{source}: widths {widths} would build about {estimate:,} weights; refusing")
    _check_scale(config, source)


def _check_scale(config: dict[str, Any], source: str) -> None:
    """diam_mean and the diameter range within limits.MODEL["diameter"] (what the manifest will carry
    and the runtime accepts), min <= max; UserError naming the field."""
    from cyclepose_deploy import limits
    from cyclepose_deploy.errors import OptionError

    bound = limits.MODEL["diameter"]
    try:
        bound.check("diam_mean", config.get("diam_mean", 30.0))
        if "diameter" in config:
            low, high = limits.check_pair("diameter", config["diameter"], bound, ordered=False)
            if low > high:
                raise OptionError("diameter", f"diameter {low:g}-{high:g} has MIN > MAX")
    except OptionError as exc:
        raise UserError(f"{source}: config {exc}; train again or re-save it") from None


def check_state(state: Any, source: str) -> None:
    """A state dict is a non-empty dict of finite tensors (a NaN weight would segment nothing)."""
    if not isinstance(state, dict) or not state:
        raise UserError(f"{source} holds no weights (empty or not a state dict); train again or re-save it")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise UserError(f"{source} entry {name!r} is not a named tensor; train again or re-save it")
        if value.is_floating_point() and not bool(value.isfinite().all()):
            raise UserError(
                f"{source} weight {name} holds NaN or Inf: the training diverged; use an earlier checkpoint"
            )


def segmenter_from_state(state: dict[str, torch.Tensor], config: dict[str, Any], source: str) -> Segmenter:
    check_config(config, source)
    check_state(state, source)
    net = Segmenter(int(config["in_channels"]), config["widths"], float(config.get("diam_mean", 30.0)))
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        detail = str(exc).splitlines()[0][:160]
        raise UserError(f"{source}: weights do not fit the segmenter layout ({detail})") from None
    return net.eval()


def cellpose_config(state: dict[str, Any], source: str) -> dict[str, Any]:
    """Infer channels and widths of a Cellpose 3 CPnet state dict from its tensor shapes."""
    widths: list[int] = []
    in_channels = None
    while _FIRST_PROJ.format(n=len(widths)) in state:
        weight = state[_FIRST_PROJ.format(n=len(widths))]
        if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
            break
        in_channels = in_channels if widths else int(weight.shape[1])
        widths.append(int(weight.shape[0]))
    out = state.get("output.2.weight")
    if not widths or in_channels not in (1, 2) or not isinstance(out, torch.Tensor) or out.shape[0] != 3:
        raise UserError(
            f"{source} is neither a CyclePose checkpoint nor a Cellpose 3 CPnet state dict "
            "(1 or 2 input channels, 3 outputs); pass a model.pt from `cyclepose train`"
        )
    diam = state.get("diam_mean")
    diameter = float(diam.reshape(-1)[0]) if isinstance(diam, torch.Tensor) and diam.numel() else 30.0
    return {
        "in_channels": in_channels,
        "widths": widths,
        "diameter": [diameter, diameter],
        "diam_mean": diameter,
        "normalization": dict(DEFAULT_NORMALIZATION),
        "tile": 224,
        "source": "cellpose3",
    }


def _strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_init(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """(config, nets) of a warm start: a CyclePose checkpoint's config and its S, G, D_image and D_mask
    state dicts, or a Cellpose 3 model's config and its S. Validated like load_segmenter (UserError)."""
    net, config = load_segmenter(path)
    nets: dict[str, dict[str, torch.Tensor]] = {"S": net.state_dict()}
    data = _torch_load(path)
    if isinstance(data, dict) and data.get("format") == FORMAT:
        for name in ("G", "D_image", "D_mask"):
            state = data.get(name)
            if state is not None:
                check_state(state, f"{path} ({name})")
                nets[name] = state
    return config, nets


def load_segmenter(path: str | Path) -> tuple[Segmenter, dict[str, Any]]:
    """(S in eval mode, config) from a CyclePose checkpoint or a Cellpose 3 model file."""
    data = _torch_load(path)
    source = os.fspath(path)
    if isinstance(data, dict) and data.get("format") == FORMAT:
        checkpoint = load_checkpoint(path)
        config = dict(checkpoint["config"])
        return segmenter_from_state(checkpoint["S"], config, source), config
    if not isinstance(data, dict) or not data:
        raise UserError(f"{source} is not a CyclePose checkpoint or a Cellpose 3 model file (no state dict)")
    state = _strip_prefix(data)
    config = cellpose_config(state, source)
    return segmenter_from_state(state, config, source), config
