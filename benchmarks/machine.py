"""Machine details recorded beside every benchmark result, so a number always says where it came from.

CPU model, cores, memory, load average, thread settings, GPU (via nvidia-smi when present) and the
versions of every library that changes the figures. Stdlib only, plus guarded imports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import metadata
from typing import Any

from cyclepose_deploy.runtime.benchmark import host_info

# distributions, not modules: read from metadata so that nothing heavy (torch) is imported here
LIBRARIES = (
    "numpy",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "torch",
    "tensorrt",
    "tensorrt-cu12",
    "tensorrt-cu13",
    "cuda-bindings",
    "numba",
    "scipy",
    "tifffile",
    "zarr",
)
GPU_QUERY = "name,memory.total,driver_version,compute_cap,clocks.max.sm,power.limit"


def machine_info() -> dict[str, Any]:
    """Everything known about this machine; missing pieces are simply absent, never an error."""
    info = host_info()
    info["memory_gib"] = _memory_gib()
    info["cpu_flags"] = _cpu_flags()
    info["gpus"] = gpu_info()
    info["libraries"] = library_versions()
    return info


def machine_name(info: dict[str, Any]) -> str:
    """A file-name-safe label, e.g. `h100-80gb-hbm3` or `cpu-2c-intel-xeon-processor`."""
    if info.get("gpus"):
        label = info["gpus"][0]["name"].replace("NVIDIA", "")
    else:
        label = f"cpu-{info.get('usable_cores')}c-{info.get('cpu', 'unknown')}"
    label = re.sub(r"\(r\)|\(tm\)|cpu @.*", "", label.lower())
    return re.sub(r"[^a-z0-9]+", "-", label).strip("-")[:60] or "machine"


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def gpu_info() -> list[dict[str, str]]:
    """One entry per GPU from nvidia-smi; empty on machines without it."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, f"--query-gpu={GPU_QUERY}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    keys = GPU_QUERY.split(",")
    rows = [[v.strip() for v in line.split(",")] for line in out.splitlines() if line.strip()]
    return [dict(zip(keys, row, strict=False)) for row in rows]


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _cpu_flags() -> list[str]:
    """The SIMD features that decide CPU inference speed (AVX-512, VNNI for int8, AMX)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "fma")
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


if __name__ == "__main__":
    import json

    details = machine_info()
    print(machine_name(details))
    print(json.dumps(details, indent=2))
