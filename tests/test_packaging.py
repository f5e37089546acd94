"""Package data: the named deployment profiles ship inside the package and load from any folder, in an
editable checkout and from a built wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cyclepose_deploy.errors import UserError
from cyclepose_deploy.export.profiles import load_profile, shipped_profiles

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["cpu", "jetson-agx-orin", "jetson-orin-nano", "server-gpu"]


def test_named_profiles_load_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not the repository root
    assert list(shipped_profiles()) == SHIPPED
    for name in SHIPPED:
        profile = load_profile(name)
        assert profile.name == name and profile.batch[0] <= profile.batch[1] <= profile.batch[2]
    with pytest.raises(UserError, match="not found.*jetson-orin-nano"):
        load_profile("jetson-nano-typo")


def test_a_profile_toml_file_path_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "mine.toml"
    own.write_text("batch = { min = 1, opt = 2, max = 4 }\ntile_range = { min = 64, opt = 128, max = 256 }\n")
    monkeypatch.chdir(tmp_path)
    profile = load_profile("mine.toml")
    assert (profile.name, profile.batch, profile.tile) == ("mine", (1, 2, 4), 128)


PROBE = """
import sys
import cyclepose_deploy
from cyclepose_deploy.export.profiles import load_profile
assert cyclepose_deploy.__file__.startswith(sys.argv[1]), cyclepose_deploy.__file__
profile = load_profile("jetson-orin-nano")
print(profile.name, profile.batch, profile.workspace_mb)
"""


@pytest.mark.tooling
def test_profiles_load_from_an_installed_wheel_outside_the_repository(tmp_path: Path) -> None:
    """Build a (non-editable) wheel from a copy of the sources, unpack it onto sys.path, and load a named
    profile from another working directory: what `pip install cyclepose-deploy` users get."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(
        REPO / "cyclepose_deploy", src / "cyclepose_deploy", ignore=shutil.ignore_patterns("__pycache__")
    )
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run(
        [*build, "-q", "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0 and "No module named" in done.stderr:
        pytest.skip(f"cannot build a wheel here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    (wheel,) = dist.glob("cyclepose_deploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"cyclepose_deploy/profiles/{n}.toml" for n in SHIPPED} <= set(names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(site)], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["jetson-orin-nano", "(1,", "4,", "8)", "1024"]
