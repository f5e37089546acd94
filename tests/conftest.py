"""Shared test setup: caches inside a per-run temporary folder (tests write nothing to home folders), and
what several test modules use, as fixtures (no test module imports another, nor this file): the tiny ONNX
networks, export folders and manifests, the slides of the `cyclepose infer` tests, and the helpers that
run the CLI and check its outputs. The networks are built with onnx.helper, no torch; a fixture skips its
test when onnx or onnxruntime is missing."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from typer.testing import Result

_CACHE = tempfile.mkdtemp(prefix="cyclepose-test-cache-")
for _var in ("XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "MPLCONFIGDIR", "TRITON_CACHE_DIR"):
    os.environ.setdefault(_var, os.path.join(_CACHE, _var.lower()))
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(_CACHE, "numba"))
os.environ.setdefault("NAPARI_CONFIG", os.path.join(_CACHE, "napari", "settings.yaml"))  # napari's settings
os.environ.setdefault("OMP_NUM_THREADS", "2")


# builders ----------------------------------------------------------------------------------------
def _io(channels: int = 1) -> tuple:
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, "H", "W"])
    out = helper.make_tensor_value_info("flows", TensorProto.FLOAT, ["N", 3, "H", "W"])
    return inp, out


def _save(graph: object, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_identity_net(path: Path) -> Path:
    """flows = (x, 2x, -x): every output channel is a known function of the input pixel."""
    from onnx import helper, numpy_helper

    inp, out = _io()
    scales = numpy_helper.from_array(np.array([1.0, 2.0, -1.0], np.float32).reshape(1, 3, 1, 1), "scales")
    nodes = [
        helper.make_node("Concat", ["image", "image", "image"], ["cat"], axis=1),
        helper.make_node("Mul", ["cat", "scales"], ["flows"]),
    ]
    return _save(helper.make_graph(nodes, "identity", [inp], [out], [scales]), path)


def build_tiny_onnx(path: Path, channels: int = 1) -> Path:
    """A 1x1 conv with dynamic N/H/W: flows = (x0, 2 x0, -x0) of the first input channel."""
    from onnx import helper, numpy_helper

    inp, out = _io(channels)
    weight = np.zeros((3, channels, 1, 1), np.float32)
    weight[:, 0, 0, 0] = (1.0, 2.0, -1.0)
    node = helper.make_node("Conv", ["image", "w"], ["flows"])
    return _save(
        helper.make_graph([node], "tiny", [inp], [out], [numpy_helper.from_array(weight, "w")]), path
    )


def gaussian_kernels(sigma: float) -> np.ndarray:
    """(3, 1, K, K): Gaussian, d/dy and d/dx of a Gaussian."""
    r = int(np.ceil(3 * sigma))
    t = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    dg = t / sigma**2 * g  # ONNX Conv correlates: +t gives +d/dy
    k = np.stack([np.outer(g, g), np.outer(dg, g), np.outer(g, dg)])
    return k[:, None].astype(np.float32)


def build_nuclei_net(path: Path, sigma: float = 3.0, gain: float = 12.0, level: float = 0.2) -> Path:
    """flows = 5 x unit gradient of the blurred image (to bright centres); logit = gain (blur - level)."""
    from onnx import helper, numpy_helper

    inp, out = _io()
    k = gaussian_kernels(sigma)
    r = k.shape[-1] // 2
    inits = [
        numpy_helper.from_array(k, "kernels"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "parts"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
        numpy_helper.from_array(np.array(5.0, np.float32), "five"),
        numpy_helper.from_array(np.array(gain, np.float32), "gain"),
        numpy_helper.from_array(np.array(level, np.float32), "level"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "kernels"], ["conv"], pads=[r, r, r, r]),
        helper.make_node("Split", ["conv", "parts"], ["blur", "grad"], axis=1),
        helper.make_node("Mul", ["grad", "grad"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axis1"], ["ss"], keepdims=1),
        helper.make_node("Add", ["ss", "eps"], ["ss_eps"]),
        helper.make_node("Sqrt", ["ss_eps"], ["mag"]),
        helper.make_node("Div", ["five", "mag"], ["inv"]),
        helper.make_node("Mul", ["grad", "inv"], ["unit5"]),
        helper.make_node("Sub", ["blur", "level"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logit"]),
        helper.make_node("Concat", ["unit5", "logit"], ["flows"], axis=1),
    ]
    return _save(helper.make_graph(nodes, "nuclei", [inp], [out], inits), path)


def run_onnx_model(path: Path, image: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": image.astype(np.float32)})[0]


def build_tiny_export(folder: Path) -> Path:
    """An export folder with a fp32 and an 'int8' artifact (the same tiny model) and a manifest as an
    older export wrote it (no max_extent)."""
    from cyclepose_deploy.runtime.model.manifest import SCHEMA

    folder.mkdir()
    artifacts = []
    for name, precision in (("model.onnx", "fp32"), ("model.int8.onnx", "int8")):
        sha = hashlib.sha256(build_tiny_onnx(folder / name).read_bytes()).hexdigest()
        artifacts.append({"file": name, "format": "onnx", "precision": precision, "sha256": sha})
    manifest = {
        "schema": SCHEMA,
        "channels": 1,
        "diameter": [10.0, 30.0],
        "normalization": {"lower": 1.0, "upper": 99.0},
        "source_sha256": "0" * 64,
        "artifacts": artifacts,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def write_export_manifest(
    folder: Path,
    onnx_path: Path,
    sha: str | None = None,
    more: tuple[dict, ...] | list[dict] = (),
    tensorrt: dict | None = None,
) -> None:
    """Copy `onnx_path` to folder/model.onnx and write its manifest by hand (not with the package's
    writer): `sha` plants a wrong hash, `more` lists further artifacts, `tensorrt` is the build's info."""
    from cyclepose_deploy.runtime.model.manifest import sha256_file

    target = folder / "model.onnx"
    target.write_bytes(onnx_path.read_bytes())
    art = {
        "file": "model.onnx",
        "format": "onnx",
        "precision": "fp32",
        "sha256": sha or sha256_file(target),
        "verification": {},
        "passed": True,
    }
    manifest = {
        "schema": "cyclepose-manifest/1",
        "channels": 1,
        "diameter": [10, 30],
        "normalization": {"lower": 1.0, "upper": 99.0},
        "source_sha256": "0" * 64,
        "artifacts": [art, *more],
        "flow_scale": 5.0,
        "tensorrt": tensorrt,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def build_engine_export(folder: Path, net: Path) -> Path:
    """An export folder with an ONNX and a (fake) engine built for a Jetson Orin with TensorRT 10.3."""
    from cyclepose_deploy.runtime.model.manifest import sha256_file

    folder.mkdir()
    (folder / "model.engine").write_bytes(b"not an engine")
    engine = {
        "file": "model.engine",
        "format": "tensorrt",
        "precision": "fp16",
        "sha256": sha256_file(folder / "model.engine"),
        "verification": {},
        "passed": True,
    }
    trt = {"version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    write_export_manifest(folder, net, more=[engine], tensorrt=trt)
    return folder


# fixtures: the builders, skipping where onnx / onnxruntime are missing ------------------------------
def _needs_onnx() -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")


@pytest.fixture(scope="session")
def identity_net() -> Callable[[Path], Path]:
    _needs_onnx()
    return build_identity_net


def ends_within(work: Callable[[], object], seconds: float = 30.0) -> list[BaseException]:
    """Run `work` in a daemon thread; fail unless it ends within `seconds` (a hang fails the test
    instead of holding the suite); returns what it raised (empty when it returned)."""
    raised: list[BaseException] = []

    def call() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    assert not thread.is_alive(), f"still running after {seconds:g} s: it waits forever"
    return raised


@pytest.fixture(scope="session")
def finishes() -> Callable[..., list[BaseException]]:
    """ends_within, for tests of code that must not hang when a part of it fails."""
    return ends_within


@pytest.fixture(scope="session")
def nuclei_net() -> Callable[..., Path]:
    _needs_onnx()
    return build_nuclei_net


@pytest.fixture(scope="session")
def tiny_onnx() -> Callable[..., Path]:
    _needs_onnx()
    return build_tiny_onnx


@pytest.fixture(scope="session")
def tiny_export() -> Callable[[Path], Path]:
    _needs_onnx()
    return build_tiny_export


@pytest.fixture(scope="session")
def run_onnx() -> Callable[[Path, np.ndarray], np.ndarray]:
    _needs_onnx()
    return run_onnx_model


@pytest.fixture(scope="session")
def write_manifest() -> Callable[..., None]:
    """write_manifest(folder, onnx_path, sha=None, more=[...], tensorrt={...}): see write_export_manifest."""
    return write_export_manifest


@pytest.fixture(scope="session")
def engine_export() -> Callable[[Path, Path], Path]:
    """engine_export(folder, onnx_path): an ONNX and a fake engine for another GPU (build_engine_export)."""
    return build_engine_export


# slides and networks of the `cyclepose infer` tests (module scope: built once per module) -----------
@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, nuclei_net: Callable) -> Path:
    """The nuclei proxy network (build_nuclei_net with its defaults)."""
    return nuclei_net(tmp_path_factory.mktemp("net") / "nuclei.onnx")


@pytest.fixture(scope="module")
def infer_data(tmp_path_factory: pytest.TempPathFactory, nuclei_net: Callable) -> dict[str, Path]:
    """A 320x288 tiled, zlib-compressed OME-TIFF of nuclei at 0.65 µm (`slide`) and the nuclei network
    (`net`)."""
    import tifffile

    from cyclepose_deploy.synth.slide import make_slide

    root = tmp_path_factory.mktemp("infer")
    image, _ = make_slide(320, 288, 5)
    tifffile.imwrite(
        root / "slide.ome.tif",
        image,
        ome=True,
        tile=(64, 64),
        compression="zlib",
        metadata={"axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65},
    )
    return {"slide": root / "slide.ome.tif", "net": nuclei_net(root / "nuclei.onnx")}


@pytest.fixture(scope="module")
def scaleout_data(tmp_path_factory: pytest.TempPathFactory, nuclei_net: Callable) -> dict[str, Path]:
    """A 640x576 slide: nuclei in the top 224 rows, camera noise below (about 60 % empty)."""
    import tifffile

    from cyclepose_deploy.synth.slide import make_slide

    root = tmp_path_factory.mktemp("scaleout")
    tissue, _ = make_slide(224, 576, 7)
    rng = np.random.default_rng(1)
    background = float(np.percentile(tissue, 5))
    slide = rng.normal(background, 3.0, (640, 576)).clip(0).astype(np.uint16)
    slide[:224] = tissue
    tifffile.imwrite(root / "slide.tif", slide, tile=(64, 64))
    return {"slide": root / "slide.tif", "net": nuclei_net(root / "nuclei.onnx")}


# training -----------------------------------------------------------------------------------------
TINY_TRAIN = {
    "widths": [8, 16, 32, 64],
    "tile": 64,
    "batch": 2,
    "bank_canvases": 2,
    "bank_canvas": 128,
    "render_width": 8,
    "disc_base": 8,
    "calibration_batches": 2,
    "pool": 4,
    "precision": "fp32",  # the same arithmetic on every CPU (bf16 only where it is native)
}


@pytest.fixture(scope="session")
def tiny_train_config() -> Callable[..., object]:
    """A factory of TrainConfig with tiny nets and crops, for fast CPU training tests:
    tiny_train_config(steps=6, lr_s=2e-3). torch is imported only by the tests that use it."""
    from cyclepose_deploy.train.loop import TrainConfig

    def make(**overrides: object) -> TrainConfig:
        return TrainConfig(**{**TINY_TRAIN, **overrides})  # type: ignore[arg-type]

    return make


# the CLI, labels and scores: helpers every test module may ask for ---------------------------------
def _run_cli(args: tuple[object, ...]) -> Result:
    from typer.testing import CliRunner

    from cyclepose_deploy.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def invoke_cli(*args: object) -> tuple[int, str]:
    """Run `cyclepose ARGS` in this process: (exit code, stdout + stderr)."""
    result = _run_cli(args)
    return result.exit_code, result.output


def invoke_cli_streams(*args: object) -> tuple[int, str, str]:
    """Run `cyclepose ARGS` in this process: (exit code, stdout, stderr), the streams apart."""
    result = _run_cli(args)
    return result.exit_code, result.stdout, result.stderr


def one_error_line(code: int, text: str, stderr: str | None = None) -> str:
    """Bad input's contract: exit 2, no traceback, exactly one line `error: ...` (returned). Given the
    streams apart (code, stdout, stderr, as invoke_streams returns them), stderr must hold that line and
    nothing else."""
    output = text if stderr is None else f"{text}\n{stderr}"
    assert code == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    if stderr is not None:
        assert stderr.strip().splitlines() == lines and lines[0].startswith("error: "), stderr
    return lines[0]


def folder_listing(folder: Path) -> list[str]:
    """The sorted names in a folder, hidden ones (temporary files, run folders) included."""
    return sorted(p.name for p in folder.iterdir())


@contextmanager
def nothing_left_in(folder: Path) -> Iterator[None]:
    """The block leaves the folder as it found it: no output, half-written or whole, left behind."""
    before = folder_listing(folder)
    yield
    assert folder_listing(folder) == before, "an output file was left behind"


def assert_same_labels(a: np.ndarray, b: np.ndarray) -> None:
    """Identical segmentations: equal after relabelling (a one-to-one map between the label values)."""
    assert a.shape == b.shape
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]).astype(np.int64), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1])), "labels differ"


def f1_score(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    from cyclepose_deploy.metrics import match_instances

    return match_instances(pred, truth, [threshold]).scores[0].f1


@pytest.fixture(scope="session")
def invoke() -> Callable[..., tuple[int, str]]:
    return invoke_cli


@pytest.fixture(scope="session")
def invoke_streams() -> Callable[..., tuple[int, str, str]]:
    return invoke_cli_streams


@pytest.fixture(scope="session")
def error_line() -> Callable[..., str]:
    return one_error_line


@pytest.fixture(scope="session")
def leftovers() -> Callable[[Path], list[str]]:
    return folder_listing


@pytest.fixture(scope="session")
def no_leftovers() -> Callable[[Path], AbstractContextManager[None]]:
    """with no_leftovers(folder): ... asserts that the block left the folder as it was."""
    return nothing_left_in


@pytest.fixture(scope="session")
def same_labels() -> Callable[[np.ndarray, np.ndarray], None]:
    return assert_same_labels


@pytest.fixture(scope="session")
def f1() -> Callable[..., float]:
    return f1_score
