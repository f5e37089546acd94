"""fp32 ONNX -> int8 QDQ ONNX for CPU/ARM: static quantisation, per-channel weights, MinMax calibration.

ORT's histogram calibrators keep every activation of every calibration batch (15.8 GB once). MinMax keeps
only per-tensor min/max per batch, and tiles go in small groups, so peak memory is one small-batch session.
(CalibMaxIntermediateOutputs is not used: in ORT 1.32 it discards the collected ranges instead of merging.)"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cyclepose_deploy.atomic import atomic_path
from cyclepose_deploy.defaults import INPUT_NAME

GROUP = 2  # tiles per calibration batch


class TileReader:
    """CalibrationDataReader over (N, C, H, W) tiles, a few at a time."""

    def __init__(self, tiles: np.ndarray, input_name: str = INPUT_NAME, group: int = GROUP) -> None:
        self.tiles, self.input_name, self.group = tiles, input_name, group
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.tiles), self.group):
            yield {self.input_name: np.ascontiguousarray(self.tiles[start : start + self.group])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def excluded_nodes(model: onnx.ModelProto) -> list[str]:
    """Keep the output conv in fp32: it writes flows and logit directly (accuracy; negligible cost)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get(model.graph.output[0].name)
    while node is not None and node.op_type != "Conv":
        node = producers.get(node.input[0])
    return [node.name] if node is not None else []


def quantize_int8(src: Path, dst: Path, tiles: np.ndarray, group: int = GROUP) -> Path:
    """Pre-process (ORT's recommended step), then quantise with ranges from `tiles`."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = dst.with_name(f".{dst.name}.pre.onnx")
    quiet = logging.getLogger()  # ORT's quantizer logs one warning per BN weight on the root logger
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)  # folds constants, fuses
        return _quantize(prepared, dst, tiles, group)
    finally:
        quiet.setLevel(level)
        prepared.unlink(missing_ok=True)


def _quantize(src: Path, dst: Path, tiles: np.ndarray, group: int) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(src))
    options: dict[str, Any] = {"WeightSymmetric": True}
    with atomic_path(dst) as temp:
        quantize_static(
            str(src),
            str(temp),
            TileReader(tiles, model.graph.input[0].name, group),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=excluded_nodes(model),
            extra_options=options,
        )
    return dst
