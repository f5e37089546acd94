"""fp32 ONNX -> mixed-precision fp16 ONNX with fp32 inputs and outputs (what TensorRT 11 needs for FP16).

onnxruntime.transformers.float16 is used because onnxconverter-common's converter produced a model ORT
refused. The style vector (mean, sum of squares, sqrt, divide) stays fp32: its sum of squares
overflows fp16."""

from __future__ import annotations

from pathlib import Path

import onnx

from cyclepose_deploy.atomic import atomic_path

FP32_OPS = ["ReduceMean", "ReduceSum", "Pow", "Sqrt", "Div", "Clip", "Max", "Gemm", "MatMul"]


def convert_fp16(src: Path, dst: Path) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP32_OPS)
    topological_sort(half.graph)
    onnx.checker.check_model(half)
    with atomic_path(dst) as temp:
        onnx.save(half, str(temp))
    return dst


def topological_sort(graph: onnx.GraphProto) -> None:
    """The converter appends its input casts at the end; reorder nodes so every input is produced first."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise RuntimeError("fp16 graph has a dangling input; cannot order its nodes")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)
