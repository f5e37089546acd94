"""TensorRT: builder logic against a fake tensorrt module (profile shapes, TensorRT 10 vs 11 typing,
timing cache), runner host logic (compatibility, profile limits, buffers), mypy on the GPU modules, and a
real-GPU test that runs only where TensorRT and a GPU exist."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.export import tensorrt_build
from cyclepose_deploy.export.profiles import DEFAULT, load_profile
from cyclepose_deploy.runtime.backends.base import ShapeLimits
from cyclepose_deploy.runtime.backends.tensorrt import buffer_bytes, check_compatible, limits_from_profile
from cyclepose_deploy.runtime.model.manifest import TensorRTInfo

REPO = Path(__file__).resolve().parents[1]


class FakeTrt:
    """Records what the builder asks of TensorRT."""

    def __init__(self, version: str) -> None:
        self.__version__ = version
        self.log: list[tuple[Any, ...]] = []
        self.Logger = _logger_class()
        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
        self.BuilderFlag = SimpleNamespace(FP16="FP16")
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
        fake = self

        class Builder:
            def __init__(self, logger: Any) -> None:
                pass

            def create_network(self, flags: int) -> Any:
                fake.log.append(("create_network", flags))
                return SimpleNamespace(get_input=lambda i: SimpleNamespace(name="image"))

            def create_builder_config(self) -> Any:
                return FakeConfig(fake.log)

            def create_optimization_profile(self) -> Any:
                return SimpleNamespace(set_shape=lambda *a: fake.log.append(("set_shape", *a)))

            def build_serialized_network(self, network: Any, config: Any) -> bytes:
                return b"ENGINE"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network: Any, logger: Any) -> None:
                pass

            def parse_from_file(self, path: str) -> bool:
                fake.log.append(("parse", path))
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser


def _logger_class() -> Any:
    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    return Logger


class FakeConfig:
    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log

    def set_flag(self, flag: str) -> None:
        self.log.append(("flag", flag))

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.log.append(("workspace", size))

    def add_optimization_profile(self, profile: Any) -> int:
        return 0

    def create_timing_cache(self, data: bytes) -> bytes:
        self.log.append(("timing_cache_in", data))
        return data

    def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
        return True

    def get_timing_cache(self) -> Any:
        return SimpleNamespace(serialize=lambda: b"CACHE")


@pytest.mark.parametrize(("version", "strong"), [("10.3.0", False), ("11.1.0", True)])
def test_builder_branches_on_tensorrt_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version: str, strong: bool
) -> None:
    fake = FakeTrt(version)
    monkeypatch.setattr(tensorrt_build, "trt", fake)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"OLD")
    network = tensorrt_build.NetworkFromOnnx(tmp_path / "model.fp16.onnx")
    profile = load_profile("jetson-orin-nano")
    engine = tensorrt_build.EngineBytesFromNetwork(network, profile, 1, cache)
    assert fake.log == []  # lazy: nothing happens until called
    assert engine() == b"ENGINE"
    assert ("create_network", 2 if strong else 0) in fake.log
    assert (("flag", "FP16") in fake.log) is not strong
    assert ("set_shape", "image", (1, 1, 64, 64), (4, 1, 256, 256), (8, 1, 512, 512)) in fake.log
    assert ("workspace", 1024 << 20) in fake.log
    assert ("timing_cache_in", b"OLD") in fake.log and cache.read_bytes() == b"CACHE"


def test_parse_failure_names_the_file(monkeypatch, tmp_path: Path) -> None:
    fake = FakeTrt("10.3.0")
    fake.OnnxParser.parse_from_file = lambda self, path: False  # type: ignore[method-assign]
    fake.OnnxParser.get_error = lambda self, i: "bad node"  # type: ignore[attr-defined]
    fake.OnnxParser.num_errors = 1
    monkeypatch.setattr(tensorrt_build, "trt", fake)
    with pytest.raises(UserError, match="could not parse .*model.onnx: bad node"):
        tensorrt_build.NetworkFromOnnx(tmp_path / "model.onnx")()


def test_trtexec_line_matches_the_profile() -> None:
    onnx, engine = Path("out/model.fp16.onnx"), Path("out/model.engine")
    line = tensorrt_build.trtexec_command(onnx, engine, DEFAULT, 2, "11.0.0")
    assert "--minShapes=image:1x2x64x64" in line and "--optShapes=image:8x2x256x256" in line
    assert "--maxShapes=image:16x2x512x512" in line and "--stronglyTyped" in line
    assert "--fp16" in tensorrt_build.trtexec_command(onnx, engine, DEFAULT, 2, "10.3.0")


def test_every_shipped_profile_loads() -> None:
    names = sorted(p.stem for p in (REPO / "cyclepose_deploy" / "profiles").glob("*.toml"))
    assert names == ["cpu", "jetson-agx-orin", "jetson-orin-nano", "server-gpu"]
    for name in names:
        profile = load_profile(REPO / "cyclepose_deploy" / "profiles" / f"{name}.toml")
        assert profile.batch[0] <= profile.batch[1] <= profile.batch[2]
        assert profile == load_profile(name)


def test_bad_profiles_are_user_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("batch = { min = 4, opt = 2, max = 8 }\ntile_range = { min = 64, opt = 256, max = 512 }\n")
    with pytest.raises(UserError, match="min <= opt <= max"):
        load_profile(bad)
    with pytest.raises(UserError, match="not found"):
        load_profile(tmp_path / "absent.toml")


def test_engine_compatibility_is_checked() -> None:
    info = TensorRTInfo("10.3.0", "Orin", "8.7")
    check_compatible(info, "10.3.0", "Orin", "8.7")
    with pytest.raises(UserError, match=r"TensorRT 10.3.0 \(this machine has 10.4.0\)"):
        check_compatible(info, "10.4.0", "Orin", "8.7")
    with pytest.raises(UserError, match="Orin, compute 8.7 .*H100, 9.0.*--engine"):
        check_compatible(info, "10.3.0", "NVIDIA H100", "9.0")


def test_profile_limits_and_buffer_sizes() -> None:
    limits = limits_from_profile(((1, 1, 64, 64), (4, 1, 256, 256), (8, 1, 512, 384)))
    assert limits == ShapeLimits(1, 4, 8, (64, 64), (256, 256), (512, 384))
    assert buffer_bytes(limits, 2) == (8 * 512 * 384 * 2 * 4, 8 * 512 * 384 * 3 * 4)


def _stub_path() -> str:
    return str(REPO / "tests" / "stubs")


def run_mypy(*paths: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MYPYPATH": _stub_path()}
    cmd = [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent", *paths]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


@pytest.mark.tooling
def test_mypy_checks_gpu_modules_and_catches_a_wrong_call(tmp_path: Path) -> None:
    modules = [
        "cyclepose_deploy/runtime/backends/tensorrt.py",
        "cyclepose_deploy/runtime/backends/cuda.py",
        "cyclepose_deploy/export/tensorrt_build.py",
    ]
    good = run_mypy(*modules)
    assert good.returncode == 0, good.stdout + good.stderr
    wrong = tmp_path / "wrong_call.py"
    wrong.write_text(
        "import tensorrt as trt\nfrom cuda.bindings import runtime as cudart\n"
        "def f(ctx: trt.IExecutionContext) -> None:\n"
        "    ctx.set_tensor_address('image', 'not-a-pointer')\n"
        "    cudart.cudaMalloc('many bytes')\n"
    )
    bad = run_mypy(str(wrong))
    assert bad.returncode != 0
    assert bad.stdout.count("arg-type") == 2, bad.stdout


def _gpu_reason() -> str | None:
    from cyclepose_deploy.export.engine_step import tensorrt_unavailable_reason

    return tensorrt_unavailable_reason()


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_reason() is not None, reason=f"real TensorRT engine build: {_gpu_reason()}")
def test_real_engine_matches_onnx(tmp_path: Path) -> None:
    import numpy as np
    import torch

    from cyclepose_deploy.export.engine_step import EngineTarget, build_engine
    from cyclepose_deploy.export.fp16 import convert_fp16
    from cyclepose_deploy.export.onnx_export import export_fp32
    from cyclepose_deploy.nets.segmenter import Segmenter
    from cyclepose_deploy.runtime.backends.tensorrt import TensorRTRunner

    torch.manual_seed(0)
    net = Segmenter(1, [8, 16, 32, 64]).eval()
    fp32, _ = export_fp32(net, tmp_path / "model.onnx", 1)
    fp16 = convert_fp16(fp32, tmp_path / "model.fp16.onnx")
    path, info = build_engine(EngineTarget(tmp_path / "x.pt", tmp_path, fp16, DEFAULT, 1))
    x = np.random.default_rng(0).random((2, 1, 128, 192), dtype=np.float32)
    with TensorRTRunner(path, info, 1) as runner:
        out = runner.infer(x)
        assert runner.last_timings["compute"] > 0
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert np.abs(out - ref).max() < 0.05


class FakeMemory:
    """Host-memory stand-ins for cuda.DeviceBuffer / PinnedBuffer, addressed by a fake pointer."""

    registry: dict[int, Any] = {}

    def __init__(self, nbytes: int) -> None:
        import numpy as np

        self.array = np.zeros(nbytes // 4, np.float32)
        self.ptr = id(self)
        FakeMemory.registry[self.ptr] = self.array

    def free(self) -> None:
        FakeMemory.registry.pop(self.ptr, None)


class FakeStream:
    ptr = 7

    def mark(self, index: int) -> None:
        pass

    def to_device(self, dst: FakeMemory, src: FakeMemory, nbytes: int) -> None:
        dst.array[: nbytes // 4] = src.array[: nbytes // 4]

    to_host = to_device

    def synchronize(self) -> None:
        pass

    def phase_seconds(self) -> dict[str, float]:
        return {"h2d": 0.001, "compute": 0.002, "d2h": 0.001}

    def destroy(self) -> None:
        pass


class FakeContext:
    """Output = input channel 0 repeated 3 times, through the bound addresses."""

    def __init__(self) -> None:
        self.addresses: dict[str, int] = {}
        self.shape: tuple[int, ...] = ()

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shape = tuple(shape)
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        import numpy as np

        n, c, h, w = self.shape
        x = FakeMemory.registry[self.addresses["image"]][: n * c * h * w].reshape(self.shape)
        out = np.repeat(x[:, :1], 3, axis=1)
        FakeMemory.registry[self.addresses["flows"]][: out.size] = out.ravel()
        return True


def fake_runtime_trt(version: str) -> Any:
    engine = SimpleNamespace(
        num_io_tensors=2,
        get_tensor_name=lambda i: ["image", "flows"][i],
        get_tensor_mode=lambda name: "IN" if name == "image" else "OUT",
        get_tensor_profile_shape=lambda name, i: [(1, 1, 64, 64), (2, 1, 128, 128), (4, 1, 256, 256)],
        create_execution_context=FakeContext,
    )
    return SimpleNamespace(
        __version__=version,
        Logger=_logger_class(),
        TensorIOMode=SimpleNamespace(INPUT="IN"),
        Runtime=lambda logger: SimpleNamespace(deserialize_cuda_engine=lambda data: engine),
    )


def test_tensorrt_runner_host_path_with_fakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import numpy as np

    from cyclepose_deploy.runtime.backends import tensorrt as trt_backend

    monkeypatch.setattr(trt_backend, "trt", fake_runtime_trt("10.3.0"))
    fake_cuda = SimpleNamespace(
        device_properties=lambda device: ("Orin", "8.7"),
        Stream=FakeStream,
        DeviceBuffer=FakeMemory,
        PinnedBuffer=FakeMemory,
    )
    monkeypatch.setattr(trt_backend, "cuda", fake_cuda)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"ENGINE")
    runner = trt_backend.TensorRTRunner(engine, TensorRTInfo("10.3.0", "Orin", "8.7"), channels=1)
    x = np.random.default_rng(0).random((3, 1, 64, 96), dtype=np.float32)
    with runner:
        assert runner.shape_limits == ShapeLimits(1, 2, 4, (64, 64), (128, 128), (256, 256))
        out = runner.infer(x)
        assert runner.last_timings == {"h2d": 0.001, "compute": 0.002, "d2h": 0.001}
        assert runner.info()["tensorrt"] == "10.3.0" and runner.input_metadata().channels == 1
        with pytest.raises(UserError, match="batch 5 is outside"):
            runner.infer(np.zeros((5, 1, 64, 64), np.float32))
    np.testing.assert_array_equal(out, np.repeat(x, 3, axis=1))
    other = trt_backend.TensorRTRunner(engine, TensorRTInfo("10.3.0", "Orin", "8.6"), channels=1)
    with pytest.raises(UserError, match="built for Orin, compute 8.6"), other:
        pass
