"""Backends: one Runner interface; ONNX Runtime and native TensorRT runners (torch: export/)."""

from cyclepose_deploy.runtime.backends.base import Runner, ShapeLimits

__all__ = ["Runner", "ShapeLimits"]
