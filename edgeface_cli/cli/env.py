"""`edgeface env`: what a bug report needs to know about this machine and installation."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .common import ConfigOpt, SetOpt, app, console, print_json, resolve_config, user_errors


def _nvidia_driver() -> Optional[str]:
    """The NVIDIA driver's version (nvidia-smi), or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    versions = sorted({line.strip() for line in done.stdout.splitlines() if line.strip()})
    return ", ".join(versions) or None


def _accelerators() -> dict[str, Any]:
    """torch's view of the machine: its build, the CPU kernels it dispatches to, GPUs (CUDA, MPS). The one
    part that imports torch; an import that fails is reported, not raised."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken install is what a bug report must show
        return {"error": f"torch cannot be imported: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    cuda = torch.cuda.is_available()
    devices = []
    for index in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(index)
        devices.append({"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
                        "memory_gib": round(props.total_memory / 2**30, 1)})
    mps = getattr(torch.backends, "mps", None)
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return {
        "torch": torch.__version__,
        "cpu_capability": capability() if capability else None,  # the vector kernels ATen picked here
        "threads": torch.get_num_threads(),
        "cuda_build": torch.version.cuda,  # None: a CPU-only build of torch
        "cuda_available": cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "devices": devices,
        "driver": _nvidia_driver(),
        "mps_available": bool(mps is not None and mps.is_available()),
    }


def environment_report(config: Optional[Path], set_: Optional[list[str]]) -> dict[str, Any]:
    from .. import __version__
    from .. import platform_info as info
    from ..config import DEFAULT_CONFIG_FILE
    from ..data.cache import default_cache_dir

    from ..errors import EdgeFaceError

    try:
        cache_dir, config_error = resolve_config(config, set_).data.cache_dir, None
    except EdgeFaceError as exc:  # a broken config is part of the report, not a reason to give none
        cache_dir, config_error = None, str(exc)
    config_file = config or (Path(DEFAULT_CONFIG_FILE) if Path(DEFAULT_CONFIG_FILE).is_file() else None)
    packages, extras = info.dependency_versions()
    flags = info.cpu_flags()
    package_dir = Path(__file__).resolve().parents[1]
    return {
        "edgeface": {"version": __version__, "package": str(package_dir)},
        "system": info.python_and_platform(),
        "packages": packages,
        "extras": extras,
        "cpu": {"model": info.cpu_model(), "vector": info.vector_features(flags), "features": info.cpu_features(flags)},
        "accelerators": _accelerators(),
        "runtimes": info.runtimes(),
        "paths": {
            "config": str(config_file.resolve()) if config_file else None,
            "config_note": (None if config_file else f"none: defaults (./{DEFAULT_CONFIG_FILE} is read when present, "
                                                     "--config FILE otherwise)"),
            "config_error": config_error,
            "cache_dir": str(cache_dir or default_cache_dir()),
            "cache_dir_from": "data.cache_dir" if cache_dir else "default ($XDG_CACHE_HOME or ~/.cache)",
            "alignment_weights": str(package_dir / "data" / "alignment" / "weights"),
        },
    }


def _versions(versions: dict[str, Optional[str]]) -> str:
    return ", ".join(f"{name} {version or 'not installed'}" for name, version in versions.items())


def _print_accelerators(found: dict[str, Any]) -> None:
    if "error" in found:
        console.print(f"torch: {escape(found['error'])}", soft_wrap=True)
        return
    console.print(f"torch {escape(found['torch'])}: CPU kernels {found['cpu_capability'] or 'unknown'}, "
                  f"{found['threads']} threads; built with CUDA {found['cuda_build'] or 'none (CPU-only build)'}")
    if found["devices"]:
        driver = f", driver {found['driver']}" if found["driver"] else ""
        for device in found["devices"]:
            console.print(f"gpu {device['index']}: {escape(device['name'])} (compute {device['capability']}, "
                          f"{device['memory_gib']} GiB), cuDNN {found['cudnn']}{driver}")
    else:
        why = "no GPU or driver found" if found["cuda_build"] else "this torch is a CPU-only build"
        console.print(f"gpu: none for CUDA ({why})" + ("; Apple MPS is available" if found["mps_available"] else ""))


def _print_report(report: dict[str, Any]) -> None:
    system = report["system"]
    console.print(f"edgeface {report['edgeface']['version']} ({escape(report['edgeface']['package'])})")
    console.print(f"python {system['python']} ({system['implementation']}, {escape(system['executable'])}) on "
                  f"{system['system']} {escape(system['release'])} {system['machine']}, {system['cores']} cores")
    packages = _versions(report["packages"]) or "unknown: edgeface-cli is not installed (pip install -e .)"
    console.print(f"packages: {escape(packages)}", soft_wrap=True)
    for extra, versions in report["extras"].items():
        console.print(f"extra {extra}: {escape(_versions(versions))}", soft_wrap=True)
    cpu = report["cpu"]
    vector = ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in cpu["vector"].items())
    console.print(f"cpu: {escape(cpu['model'] or 'unknown')}; {vector}", soft_wrap=True)
    _print_accelerators(report["accelerators"])
    table = Table(title="optional runtimes")
    for column in ("runtime", "installed", "version (distribution)"):
        table.add_column(column)
    for name, entry in report["runtimes"].items():
        table.add_row(name, "yes" if entry["installed"] else "no",
                      f"{entry['version']} ({entry['distribution']})" if entry["installed"] else "")
    console.print(table)
    paths = report["paths"]
    console.print(f"config: {escape(paths['config'] or paths['config_note'])}", soft_wrap=True)
    if paths["config_error"]:
        console.print(f"config error: {escape(paths['config_error'])}", soft_wrap=True)
    console.print(f"cache: {escape(paths['cache_dir'])} ({paths['cache_dir_from']})", soft_wrap=True)
    console.print(f"alignment weights: {escape(paths['alignment_weights'])}", soft_wrap=True)


@app.command("env")
@user_errors
def env(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """What a bug report needs: versions of torch, timm and every extra, the CPU's vector features, the GPU and
    CUDA, which optional runtimes are installed (read from package metadata, none imported), and where the config
    and caches live."""
    report = environment_report(config, set_)
    if as_json:
        print_json(report)
    else:
        _print_report(report)
