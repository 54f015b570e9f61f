"""What machine and software a run used, recorded in every ``result.json``."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

# The checkout the harness's code and conf/ run from: its commit is what made a run's numbers, wherever the
# run's paths.root is. An installed wheel has none (its folder holds no .git).
SOURCE_ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("torch", "onnx", "onnxruntime", "numpy", "pillow", "hydra-core", "mlflow")


def cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo``, else ``platform.processor()``."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# Instruction sets that decide how fast int8 and half precision run on a CPU.
CPU_ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16",
                 "asimddp", "i8mm", "sve")  # fmt: skip


def usable_cores() -> int:
    """The logical cores this process may run on (its CPU affinity, which ``taskset`` and containers narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores, which ONNX Runtime starts one intra-op thread per by default; logical ones if unknown."""
    import psutil

    return psutil.cpu_count(logical=False) or usable_cores()


def cpu_isa() -> list[str]:
    """The CPU's instruction sets among ``CPU_ISA_FLAGS`` (``/proc/cpuinfo`` flags; empty where unknown)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return []
    for line in cpuinfo.read_text().splitlines():
        if line.startswith(("flags", "Features")):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in CPU_ISA_FLAGS if flag in present]
    return []


def has_int8_dot_product(isa: list[str]) -> bool:
    """x86 VNNI (AVX-512 or AVX) or Arm's int8 dot product: int8 matrix kernels without int16 saturation."""
    return bool({"avx512_vnni", "avx_vnni", "asimddp", "i8mm"} & set(isa))


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(root: Path) -> dict[str, object]:
    """Commit and dirty flag of the checkout whose top is ``root`` (``None`` when it is not one: a wheel's folder
    in a virtual environment inside some other repository must not read that repository's commit)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD") if (root / ".git").exists() else None
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def gpus() -> list[dict[str, str]]:
    """Each NVIDIA GPU's name, total memory and driver, from ``nvidia-smi`` ([] without one or without the tool)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        done = subprocess.run(
            [tool, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    fields = ("name", "memory", "driver")
    return [
        dict(zip(fields, (part.strip() for part in line.split(",")), strict=False))
        for line in done.stdout.splitlines()
        if line.strip()
    ]


def hardware_fingerprint(cpu: str, cores: int | None, gpu_list: list[dict[str, str]], *, usable: int) -> str:
    """What timings are comparable across: CPU model and cores, architecture, OS, and every GPU with its driver;
    and the ``usable`` cores when the process's CPU affinity (taskset, a cpuset) narrows them, since a run on
    one core of two is not comparable with one on both (unnarrowed, the fingerprint is what it always was)."""
    gpu_text = ";".join(f"{gpu.get('name')}|{gpu.get('memory')}|{gpu.get('driver')}" for gpu in gpu_list)
    core_text = f"{cores}" if usable == cores else f"{cores}:{usable} usable"
    identity = f"{cpu}|{core_text}|{platform.machine()}|{platform.system()}|{gpu_text}"
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


def capture() -> dict[str, object]:
    """The environment section of ``result.json``."""
    cpu = cpu_model()
    cores, usable = os.cpu_count(), usable_cores()
    gpu_list = gpus()
    fingerprint = hardware_fingerprint(cpu, cores, gpu_list, usable=usable)
    return {
        "gpus": gpu_list,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu,
        "cpu_count": cores,
        "cpu_usable": usable,
        "cpu_isa": cpu_isa(),
        "hardware_fingerprint": fingerprint,
        "libraries": library_versions(),
        "git": git_state(SOURCE_ROOT),
    }
