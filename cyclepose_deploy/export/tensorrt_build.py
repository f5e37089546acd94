"""fp16 ONNX -> TensorRT engine as lazy loaders (Polygraphy style): NetworkFromOnnx -> EngineBytesFromNetwork
-> SaveBytes. TensorRT 10 builds with BuilderFlag.FP16; TensorRT 11 only builds strongly typed networks, so
the fp16 types come from the mixed-precision ONNX and no precision flag is set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cyclepose_deploy import optional
from cyclepose_deploy.atomic import write_atomic
from cyclepose_deploy.errors import UserError
from cyclepose_deploy.export.loaders import Loader, resolve
from cyclepose_deploy.export.profiles import Profile
from cyclepose_deploy.optional import release

if TYPE_CHECKING:
    import tensorrt as trt
else:
    trt = optional.LazyModule("tensorrt", "10.0")


def trt_major(version: str) -> int:
    return release(version).major


def strongly_typed(version: str) -> bool:
    """TensorRT 11 removed weak typing; 10 keeps it (JetPack 6 devices stay on 10)."""
    return trt_major(version) >= 11


@dataclass
class ParsedNetwork:
    builder: trt.Builder
    network: trt.INetworkDefinition
    parser: trt.OnnxParser  # must outlive the network


class NetworkFromOnnx(Loader):
    """Parse an ONNX file into a network: strongly typed on TensorRT 11, weakly typed (+FP16 flag) on 10."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __call__(self) -> ParsedNetwork:
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        if strongly_typed(trt.__version__):
            network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        else:
            network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(self.path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise UserError(f"TensorRT could not parse {self.path}: {errors}; re-export the ONNX model")
        return ParsedNetwork(builder, network, parser)


class EngineBytesFromNetwork(Loader):
    """Build a serialized engine for the profile's shapes, reusing and updating a timing cache."""

    def __init__(
        self,
        network: ParsedNetwork | Callable[[], ParsedNetwork],
        profile: Profile,
        channels: int,
        timing_cache: Path | None = None,
    ) -> None:
        self.network, self.profile, self.channels = network, profile, channels
        self.timing_cache = timing_cache

    def __call__(self) -> bytes:
        parsed = resolve(self.network)
        config = parsed.builder.create_builder_config()
        if not strongly_typed(trt.__version__):
            config.set_flag(trt.BuilderFlag.FP16)
        if self.profile.workspace_mb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.profile.workspace_mb << 20)
        shapes = self.profile.input_shapes(self.channels)
        opt_profile = parsed.builder.create_optimization_profile()
        opt_profile.set_shape(parsed.network.get_input(0).name, shapes[0], shapes[1], shapes[2])
        config.add_optimization_profile(opt_profile)
        cache = self.timing_cache
        cache_bytes = cache.read_bytes() if cache is not None and cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
        engine = parsed.builder.build_serialized_network(parsed.network, config)
        if engine is None:
            raise UserError("TensorRT failed to build the engine (see its log above): check the profile")
        if self.timing_cache is not None:
            write_atomic(self.timing_cache, bytes(config.get_timing_cache().serialize()))
        return bytes(engine)


def trtexec_command(onnx: Path, engine: Path, profile: Profile, channels: int, version: str | None) -> str:
    """The equivalent trtexec line: --fp16 for TensorRT 10, --stronglyTyped for 11 (default when unknown)."""
    low, opt, high = ("x".join(str(v) for v in s) for s in profile.input_shapes(channels))
    typing_flag = "--fp16" if version is not None and not strongly_typed(version) else "--stronglyTyped"
    return (
        f"trtexec --onnx={onnx} --saveEngine={engine} --minShapes=image:{low} --optShapes=image:{opt} "
        f"--maxShapes=image:{high} {typing_flag} --memPoolSize=workspace:{profile.workspace_mb}M "
        f"--timingCacheFile={engine.with_suffix('.timing.cache')}"
    )


def export_command(checkpoint: Path, out_dir: Path, profile_name: str) -> str:
    """The export line that builds the engine on the target (the default profile needs no --profile)."""
    profile = "" if profile_name == "default" else f" --profile {profile_name}"
    return f"cyclepose export {checkpoint} -o {out_dir} --engine{profile}"
