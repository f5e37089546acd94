"""fp32 ONNX -> int8 QDQ ONNX for CPU/ARM: static quantisation, per-channel weights, MinMax calibration.

S's blocks are Cellpose's pre-activation BN -> ReLU -> conv, so most BatchNormalization nodes follow an
add, not a conv, and no fusion removes them. ORT does not quantise BatchNormalization: each one became a
float island (dequantise, BN, quantise, and NHWC <-> NCHW transposes around it), which made the int8
model slower than fp32 (0.92 vs 1.05 MPix/s for 8 x 256^2 tiles on a 2-core AVX-512 Xeon). Each BN is
rewritten first as the identical depthwise 1x1 conv (weight gamma / sqrt(var + eps), bias beta - mean *
weight), which ORT quantises per channel like every other conv: the graph stays int8 end to end
(1.64 MPix/s, benchmarks/results/bench_precisions.md).

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
from onnx import helper, numpy_helper

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


def bn_as_conv(model: onnx.ModelProto) -> int:
    """Rewrite every inference BatchNormalization (NCHW, constant statistics) in `model` as the same
    per-channel affine map, a depthwise 1x1 Conv; drops the statistics it replaced. Returns how many.
    Raises ValueError for a BN whose parameters are not initializers (not an inference graph)."""
    init = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:  # torch.onnx shares equal parameters through Identity nodes
        if node.op_type == "Identity" and node.input[0] in init:
            init[node.output[0]] = init[node.input[0]]
    nodes, replaced, statistics = [], 0, set()
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            nodes.append(node)
            continue
        if len(node.output) != 1 or any(name not in init for name in node.input[1:5]):
            raise ValueError(
                f"BatchNormalization {node.name} is not an inference node with constant statistics"
            )
        statistics.update(init[name].name for name in node.input[1:5])
        gamma, beta, mean, var = (
            numpy_helper.to_array(init[name]).astype(np.float64) for name in node.input[1:5]
        )
        eps = next((attr.f for attr in node.attribute if attr.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        name = f"{node.name or 'bn'}.dw{replaced}"  # unique even for unnamed nodes
        weight, bias = f"{name}.weight", f"{name}.bias"
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(scale.astype(np.float32).reshape(-1, 1, 1, 1), weight),
                numpy_helper.from_array((beta - mean * scale).astype(np.float32), bias),
            ]
        )
        conv = helper.make_node(
            "Conv",
            [node.input[0], weight, bias],
            list(node.output),
            name=name,
            group=len(scale),
            kernel_shape=[1, 1],
        )
        nodes.append(conv)
        replaced += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in model.graph.node for name in node.input}
    used |= {value.name for value in [*model.graph.input, *model.graph.output]}
    kept = [t for t in model.graph.initializer if t.name in used or t.name not in statistics]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return replaced


def quantize_int8(src: Path, dst: Path, tiles: np.ndarray, group: int = GROUP) -> Path:
    """Pre-process (ORT's recommended step), then quantise with ranges from `tiles`."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = dst.with_name(f".{dst.name}.pre.onnx")
    quiet = logging.getLogger()  # ORT's quantizer logs one warning per BN weight on the root logger
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)  # folds constants, fuses
        model = onnx.load(str(prepared))
        bn_as_conv(model)
        onnx.save(model, str(prepared))
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
