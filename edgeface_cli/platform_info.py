"""What this machine and environment are, for bug reports (``edgeface env``) and speed notes (export): the
CPU's vector features, the installed versions of edgeface's dependencies and optional runtimes, where the
config and caches live.

Nothing here imports torch, numpy or any optional runtime: versions come from the installed distributions'
metadata (``importlib.metadata``), CPU features from the operating system, so the answer is instant and an
installed-but-broken runtime cannot crash it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

# int8 products in one instruction: what makes an int8 model faster than fp32 on a CPU (export's speed note).
INT8_DOT_PRODUCT = {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"}
# The features inference speed depends on, as Linux's /proc/cpuinfo spells them (x86 "flags", ARM "Features").
SPEED_FEATURES = {"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "bf16", "i8mm", "sve",
                  *INT8_DOT_PRODUCT}
# A bug report's headline features, each present when any of its flags is.
VECTOR_FEATURES = {
    "AVX2": ("avx2",),
    "VNNI": ("avx512_vnni", "avx_vnni"),
    "AVX512-BF16": ("avx512_bf16",),
    "AMX": ("amx_tile", "amx_int8", "amx_bf16"),
    "NEON-dot": ("asimddp",),
}
# macOS names the same features in sysctl's hw.optional.* keys.
DARWIN_FLAGS = {"hw.optional.avx2_0": "avx2", "hw.optional.fma": "fma", "hw.optional.avx512f": "avx512f",
                "hw.optional.avx512vnni": "avx512_vnni", "hw.optional.arm.FEAT_DotProd": "asimddp",
                "hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_I8MM": "i8mm",
                "hw.optional.neon": "asimd", "hw.optional.AdvSIMD": "asimd"}

# Optional runtimes edgeface can use or that deployments pair it with: (name, distributions that provide it).
OPTIONAL_RUNTIMES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")),
    ("openvino", ("openvino",)),
    ("opencv", ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python")),
    ("onnx", ("onnx",)),
    ("onnxscript", ("onnxscript",)),
    ("matplotlib", ("matplotlib",)),
    ("pillow-heif", ("pillow-heif",)),
    ("ai-edge-litert", ("ai-edge-litert", "ai-edge-litert-nightly")),
    ("ncnn", ("ncnn",)),
    ("coremltools", ("coremltools",)),
    ("fastapi", ("fastapi",)),
    ("faiss", ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss")),
    ("usearch", ("usearch",)),
    ("psycopg", ("psycopg", "psycopg2", "psycopg2-binary")),
)
DISTRIBUTION = "edgeface-cli"
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
_REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _cpuinfo_flags(text: str) -> list[str]:
    """The first processor's feature flags in /proc/cpuinfo's text (x86 ``flags``, ARM ``Features``)."""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            return line.split(":", 1)[1].split()
    return []


def _darwin_flags(sysctl_output: str) -> list[str]:
    """Feature flags from ``sysctl hw.optional`` output (``key: 1`` lines), in /proc/cpuinfo's spelling."""
    found = []
    for line in sysctl_output.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in DARWIN_FLAGS and value.strip() == "1":
            found.append(DARWIN_FLAGS[key.strip()])
    return found


def cpu_flags() -> list[str]:
    """Every feature flag the operating system reports for this CPU (Linux, macOS); empty when it reports none."""
    try:
        return _cpuinfo_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            done = subprocess.run(["sysctl", "hw.optional"], capture_output=True, text=True, timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return []
        return _darwin_flags(done.stdout)
    return []


def cpu_features(flags: list[str] | None = None) -> list[str]:
    """The vector extensions of this CPU that int8 and fp32 speed depend on (sorted; empty when unknown)."""
    return sorted(set(cpu_flags() if flags is None else flags) & SPEED_FEATURES)


def vector_features(flags: list[str]) -> dict[str, bool]:
    """AVX2, VNNI, AVX512-BF16, AMX, NEON-dot: present or not, from ``flags``."""
    present = set(flags)
    return {name: bool(present.intersection(spellings)) for name, spellings in VECTOR_FEATURES.items()}


def cpu_model() -> str | None:
    """The CPU's name (``model name`` in /proc/cpuinfo, else what the platform says), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def installed_version(*distributions: str) -> tuple[str, str] | None:
    """(distribution, version) of the first of ``distributions`` installed, or None; nothing is imported."""
    for name in distributions:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def runtimes() -> dict[str, dict[str, Any]]:
    """Each optional runtime: installed or not, its version and the distribution that provides it."""
    report: dict[str, dict[str, Any]] = {}
    for name, distributions in OPTIONAL_RUNTIMES:
        found = installed_version(*distributions)
        report[name] = {"installed": found is not None, "version": found[1] if found else None,
                        "distribution": found[0] if found else None}
    return report


def requirements(requires: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(core distributions, {extra: its distributions}) from Requires-Dist lines (``onnx>=1.16; extra == "export"``)."""
    core: list[str] = []
    extras: dict[str, list[str]] = {}
    for line in requires:
        match = _REQUIREMENT_NAME.match(line.strip())
        if match is None:
            continue
        extra = _EXTRA_MARKER.search(line)
        target = extras.setdefault(extra.group(1), []) if extra else core
        if match.group(0) not in target:
            target.append(match.group(0))
    return core, extras


def dependency_versions() -> tuple[dict[str, str | None], dict[str, dict[str, str | None]]]:
    """(versions of edgeface's required distributions, {extra: versions of its distributions}); None: not
    installed. From edgeface's own metadata, so the lists are the ones pip installs."""
    try:
        requires = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        requires = []
    core, extras = requirements(requires)

    def versions(names: list[str]) -> dict[str, str | None]:
        return {name: (found[1] if (found := installed_version(name)) else None) for name in names}

    return versions(core), {extra: versions(names) for extra, names in extras.items() if extra != "dev"}


def python_and_platform() -> dict[str, Any]:
    return {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "executable": sys.executable, "system": platform.system(), "release": platform.release(),
            "machine": platform.machine(), "cores": os.cpu_count()}


def native_thread_names() -> list[str] | None:
    """Every thread of this process, native ones too (Gloo names its own ``pt_gloo_runloop`` and
    ``gloo_tcp_loop``); None where the OS does not list them (Linux has /proc/self/task)."""
    tasks = Path("/proc/self/task")
    try:
        return sorted((tasks / task / "comm").read_text().strip() for task in os.listdir(tasks))
    except OSError:
        return None
