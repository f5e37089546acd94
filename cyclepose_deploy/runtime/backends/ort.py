"""ONNX Runtime backend: CPU by default, CUDA / TensorRT execution providers where the install has them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cyclepose_deploy import optional
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.backends.base import Runner

PROVIDER_DEVICES = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "tensorrt",
}
ALIASES = {device: provider for provider, device in PROVIDER_DEVICES.items()}
SESSION_OPTIONS = (  # recorded with benchmark results: they change the numbers
    "intra_op_num_threads",
    "inter_op_num_threads",
    "execution_mode",
    "graph_optimization_level",
    "enable_cpu_mem_arena",
    "enable_mem_pattern",
)


def resolve_providers(requested: list[str] | None, available: list[str]) -> list[str]:
    """Map short names (cpu/cuda/tensorrt) to ORT providers; keep the available ones; CPU is the fallback."""
    if not requested:
        return ["CPUExecutionProvider"]
    names = [ALIASES.get(p.lower(), p) for p in requested]
    unknown = [n for n in names if n not in available]
    if unknown and all(n in unknown for n in names):
        raise UserError(
            f"ONNX Runtime providers {unknown} are not available here (available: {available}): "
            "install onnxruntime-gpu or choose cpu"
        )
    chosen = [n for n in names if n in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: taskset, cgroups), not the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def precision_from_path(path: Path) -> str:
    """model.fp16.onnx -> fp16, model.int8.onnx -> int8, else fp32."""
    for tag in ("fp16", "int8"):
        if f".{tag}." in path.name:
            return tag
    return "fp32"


class OrtRunner(Runner):
    """Runs an ONNX model with ONNX Runtime; `provider` says which execution provider actually ran it."""

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        threads: int | None = None,
        precision: str | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"ONNX model {self.path} not found: run `cyclepose export` first or fix the path")
        super().__init__(f"ort:{self.path.name}", precision=precision or precision_from_path(self.path))
        self.requested = providers
        self.threads = threads
        self.session: Any = None
        self.provider: str | None = None

    def session_options(self, ort: Any) -> Any:
        opts = ort.SessionOptions()
        opts.enable_cpu_mem_arena = False  # the arena doubled peak RSS in an earlier attempt
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = self.threads or usable_cores()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # idle threads sleep instead of spinning: the reader and dynamics threads need the cores between
        # network calls (2 cores: CPU time -15 %, whole run up to 4 % faster)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    def activate_impl(self) -> None:
        ort = optional.onnxruntime()
        providers = resolve_providers(self.requested, list(ort.get_available_providers()))
        # From the bytes, not the path: what runs is exactly what was hashed, and weights kept in external
        # data files (which no manifest hash covers) cannot be pulled in.
        try:
            model = self.path.read_bytes()
        except OSError as exc:
            raise UserError(
                f"cannot read {self.path}: {exc.strerror or exc}; check the permissions"
            ) from None
        try:
            self.session = ort.InferenceSession(
                model, sess_options=self.session_options(ort), providers=providers
            )
        except Exception as exc:  # ORT raises its own exception types for unreadable models
            text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            if "external" in text.lower() or "model_path" in text.lower():
                raise UserError(
                    f"{self.path.name} keeps weights in external data files, which the runtime refuses "
                    "(no export hash covers them): re-export it as one .onnx file"
                ) from None
            raise UserError(f"ONNX Runtime could not load {self.path}: {text}; re-export the model") from None
        self.provider = self.session.get_providers()[0]
        self.device = PROVIDER_DEVICES.get(self.provider, self.provider)
        inp = self.session.get_inputs()[0]
        if inp.type != "tensor(float)":
            raise UserError(
                f"{self.path.name} takes {inp.type} input; the runtime feeds float32 tiles: "
                "re-export it with float32 inputs and outputs"
            )
        outputs = self.session.get_outputs()
        if len(inp.shape) != 4 or len(outputs) < 1 or len(outputs[0].shape) != 4:
            raise UserError(
                f"{self.path.name} has input shape {inp.shape} and outputs "
                f"{[o.shape for o in outputs]}; the runtime needs (N, C, H, W) -> (N, 3, H, W): re-export it"
            )
        if any(isinstance(d, int) for d in inp.shape[2:]):
            raise UserError(
                f"{self.path.name} has a fixed input size {inp.shape[2:]}; the runtime tiles slides at any "
                "size: re-export it with dynamic H and W"
            )
        if isinstance(outputs[0].shape[1], int) and outputs[0].shape[1] != 3:
            raise UserError(
                f"{self.path.name} outputs {outputs[0].shape[1]} channels; the runtime needs 3 (flows y, x "
                "and cellprob): export a CyclePose/Cellpose-style network"
            )
        self.input_name = inp.name
        self.output_name = outputs[0].name
        if isinstance(inp.shape[1], int):
            self.channels = inp.shape[1]

    def info(self) -> dict[str, Any]:
        """Threads and providers asked for; once active, what ORT chose and its session options."""
        info: dict[str, Any] = {"threads": self.threads, "requested": self.requested}
        if self.session is None:
            return {k: v for k, v in info.items() if v is not None}
        opts = self.session.get_session_options()
        info.update(provider=self.provider, providers=list(self.session.get_providers()))
        info["session_options"] = {name: _plain(getattr(opts, name, None)) for name in SESSION_OPTIONS}
        return {k: v for k, v in info.items() if v is not None}

    def deactivate_impl(self) -> None:
        self.session = None

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        return np.asarray(out, dtype=np.float32)


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
