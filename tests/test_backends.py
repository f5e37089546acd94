"""Runner base (validation once for all backends) and the ONNX Runtime backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.runtime.backends.base import Runner, ShapeLimits
from cyclepose_deploy.runtime.backends.ort import OrtRunner, precision_from_path, resolve_providers


class EchoRunner(Runner):
    """Returns the first channel three times: enough to test the base class."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("echo", channels=1, **kwargs)  # type: ignore[arg-type]
        self.calls = 0

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.repeat(batch[:, :1], 3, axis=1)


def test_runner_lifecycle_and_timing() -> None:
    runner = EchoRunner()
    batch = np.ones((2, 1, 32, 48), np.float32)
    with pytest.raises(RuntimeError, match="activated"):
        runner.infer(batch)
    with runner:
        assert runner.is_active
        out = runner.infer(batch)
    assert not runner.is_active
    assert out.shape == (2, 3, 32, 48) and out.dtype == np.float32
    assert runner.last_inference_time is not None and runner.last_inference_time >= 0


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (np.ones((1, 1, 32, 32), np.float64), "float32"),
        (np.ones((1, 32, 32), np.float32), r"\(N, C, H, W\)"),
        (np.ones((1, 2, 32, 32), np.float32), "1 input channel"),
        (np.ones((1, 1, 24, 32), np.float32), "multiples of 16"),
        (np.ones((0, 1, 32, 32), np.float32), "non-empty"),
    ],
)
def test_runner_rejects_bad_batches(batch: np.ndarray, message: str) -> None:
    with EchoRunner() as runner, pytest.raises(UserError, match=message):
        runner.infer(batch)
    assert runner.calls == 1  # only the zero-tile probe at activation: the bad batch never ran


def test_input_metadata_says_what_the_runner_accepts() -> None:
    limits = ShapeLimits(1, 4, 8, (64, 64), (256, 256), (512, 512))
    meta = EchoRunner(shape_limits=limits).input_metadata()
    assert (meta.name, meta.channels, meta.dtype, meta.shape_limits) == ("image", 1, np.float32, limits)
    meta.check(8, 64, 512)
    with pytest.raises(UserError, match="multiples of 16"):
        meta.check(1, 64, 72)
    with pytest.raises(UserError, match=r"batch 9 is outside"):
        meta.check(9, 64, 64)
    assert EchoRunner().info() == {} and EchoRunner().last_timings == {}


def test_shape_limits_are_enforced() -> None:
    limits = ShapeLimits(1, 4, 8, (64, 64), (256, 256), (512, 512))
    with EchoRunner(shape_limits=limits) as runner:
        runner.infer(np.zeros((8, 1, 64, 512), np.float32))
        with pytest.raises(UserError, match=r"batch 9 is outside .*\[1, 8\]"):
            runner.infer(np.zeros((9, 1, 64, 64), np.float32))
        with pytest.raises(UserError, match=r"tile width 528 is outside .*\[64, 512\]"):
            runner.infer(np.zeros((1, 1, 64, 528), np.float32))


def test_provider_resolution() -> None:
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(None, available) == ["CPUExecutionProvider"]
    assert resolve_providers(["cuda"], available) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(["tensorrt", "cuda"], available)[0] == "CUDAExecutionProvider"
    with pytest.raises(UserError, match="not available here"):
        resolve_providers(["tensorrt"], ["CPUExecutionProvider"])


def test_precision_from_file_name() -> None:
    assert precision_from_path(Path("model.int8.onnx")) == "int8"
    assert precision_from_path(Path("model.fp16.onnx")) == "fp16"
    assert precision_from_path(Path("model.onnx")) == "fp32"


def test_ort_runner_runs_any_size_on_cpu(tmp_path: Path, tiny_onnx: Callable) -> None:
    runner = OrtRunner(tiny_onnx(tmp_path / "model.onnx"), threads=1)
    x = np.random.default_rng(0).random((3, 1, 48, 80), dtype=np.float32)
    assert runner.input_metadata().channels is None  # known once the session is loaded
    with runner:
        out = runner.infer(x)
        assert runner.provider == "CPUExecutionProvider" and runner.device == "cpu"
        assert runner.channels == 1 and runner.precision == "fp32" and runner.last_timings == {}
        meta = runner.input_metadata()
        assert (meta.name, meta.channels, meta.dtype, meta.size_multiple) == ("image", 1, np.float32, 16)
        info = runner.info()
        assert info["threads"] == 1 and info["providers"] == ["CPUExecutionProvider"]
        assert info["session_options"]["intra_op_num_threads"] == 1
        assert runner.infer(x[:1, :, :16, :32]).shape == (1, 3, 16, 32)
    np.testing.assert_allclose(out[:, 1], 2 * x[:, 0], rtol=1e-6)
    np.testing.assert_allclose(out[:, 2], -x[:, 0], rtol=1e-6)


def test_ort_runner_errors_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        OrtRunner(tmp_path / "absent.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"garbage")
    with pytest.raises(UserError, match="could not load"), OrtRunner(broken):
        pass


@pytest.mark.parametrize(
    "device, limits", [("cuda", None), ("cpu", ShapeLimits(1, 2, 4, (64, 64), (256, 256), (256, 256)))]
)
def test_gpu_runners_and_engine_profiles_get_square_tiles(device: str, limits: ShapeLimits | None) -> None:
    """run.infer._runner: a GPU runner (shapes tuned or built per input shape) and an engine profile
    turn the tiling fitted to the image off; the profile also fits the batch (8 -> its max, 4)."""
    from types import SimpleNamespace

    from cyclepose_deploy.runtime.run.infer import _runner
    from cyclepose_deploy.runtime.run.options import InferOptions

    said: list[str] = []
    ctx = SimpleNamespace(
        runner=EchoRunner(device=device, shape_limits=limits),
        options=InferOptions(),
        model=SimpleNamespace(diameter=(10.0, 30.0)),
        say=said.append,
    )
    assert ctx.options.tiling.whole_image
    _runner(ctx)  # type: ignore[arg-type]
    assert not ctx.options.tiling.whole_image and not said
    assert ctx.options.tiling.batch == (4 if limits is not None else 8)
