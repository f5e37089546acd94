"""S -> fp32 ONNX: named I/O, dynamic batch/height/width, BatchNorm folded where a conv precedes it."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from cyclepose_deploy.atomic import atomic_path
from cyclepose_deploy.defaults import INPUT_NAME, OUTPUT_NAME
from cyclepose_deploy.errors import UserError

DYNAMIC_AXES = {name: {0: "batch", 2: "height", 3: "width"} for name in (INPUT_NAME, OUTPUT_NAME)}
MIN_OPSET, MAX_OPSET = 13, 21


def export_fp32(
    net: torch.nn.Module, path: Path, channels: int, opset: int = 17
) -> tuple[Path, dict[str, int]]:
    """Export with the TorchScript exporter (fast; it folds conv->BN), check the model, count BNs folded."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"--opset {opset} is not supported: choose {MIN_OPSET}..{MAX_OPSET} (17 is tested)")
    net = net.eval()
    dummy = torch.zeros(1, channels, 64, 64)
    with atomic_path(path) as temp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (dummy,),
            str(temp),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=DYNAMIC_AXES,
            opset_version=opset,
            do_constant_folding=True,
        )
        model = onnx.load(str(temp))
        onnx.checker.check_model(model, full_check=True)
    return path, batchnorm_report(net, model)


def batchnorm_report(net: torch.nn.Module, model: onnx.ModelProto) -> dict[str, int]:
    """How many BatchNorms the export folded into a preceding conv; pre-activation BNs stay."""
    total = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    remaining = sum(node.op_type == "BatchNormalization" for node in model.graph.node)
    return {"batchnorm_total": total, "batchnorm_folded": total - remaining, "batchnorm_remaining": remaining}
