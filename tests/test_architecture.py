"""The architecture as tests: imports point one way (import-linter's contracts in pyproject.toml), and
every runtime module imports without torch, as on a Jetson."""

from __future__ import annotations

import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cyclepose_deploy.runtime

REPO = Path(__file__).resolve().parents[1]


def _lint_imports() -> str | None:
    beside_python = Path(sys.executable).with_name("lint-imports")
    return str(beside_python) if beside_python.exists() else shutil.which("lint-imports")


@pytest.mark.tooling
def test_import_contracts_hold() -> None:
    """`lint-imports` (also run by `make lint` on its own): the layers cli > export > train > nets,
    synth > runtime, and no torch under runtime/. A tooling test: `make lint` runs it, `make test` not."""
    command = _lint_imports()
    if command is None:
        pytest.skip("lint-imports is not installed (pip install 'cyclepose-deploy[dev]')")
    done = subprocess.run([command, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def runtime_modules() -> list[str]:
    """Every module under cyclepose_deploy/runtime/, found by walking the package, and the package-wide
    leaves it builds on."""
    package = cyclepose_deploy.runtime
    found = [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return [package.__name__, *sorted(found), *LEAVES]


LEAVES = [f"cyclepose_deploy.{m}" for m in ("atomic", "console", "defaults", "errors", "memory", "optional")]


BLOCK_TORCH = """
import importlib, importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is unimportable in this test (asked for {name})")
        return None

sys.meta_path.insert(0, NoTorch())
failed = {}
for module in sys.argv[1:]:
    try:
        importlib.import_module(module)
    except Exception as exc:
        failed[module] = f"{type(exc).__name__}: {exc}"
upper = ("cyclepose_deploy.cli", "cyclepose_deploy.export", "cyclepose_deploy.nets",
         "cyclepose_deploy.train", "cyclepose_deploy.synth")
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torch" or m.startswith(upper))
assert not failed, failed
assert not loaded, loaded
print(len(sys.argv) - 1)
"""


def test_every_runtime_module_imports_without_torch() -> None:
    modules = runtime_modules()
    assert {"cyclepose_deploy.runtime.backends.tensorrt", "cyclepose_deploy.defaults"} <= set(modules)
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, *modules], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip()) == len(modules)
