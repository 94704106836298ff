"""Issue 29, item 7: `edgeface env` says what a bug report needs, and imports no optional runtime to say it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeface_cli import platform_info
from edgeface_cli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def env_json() -> dict:
    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_env_json_holds_the_versions_cpu_gpu_runtimes_and_paths(env_json: dict) -> None:
    assert env_json["packages"]["torch"] == importlib.metadata.version("torch")
    assert env_json["packages"]["timm"] == importlib.metadata.version("timm")
    assert env_json["extras"]["export"]["onnxruntime"] == importlib.metadata.version("onnxruntime")  # dev installs it
    assert "dev" not in env_json["extras"]
    assert set(env_json["cpu"]["vector"]) == {"AVX2", "VNNI", "AVX512-BF16", "AMX", "NEON-dot"}
    import torch

    accelerators = env_json["accelerators"]
    assert accelerators["torch"] == torch.__version__ and accelerators["cuda_build"] == torch.version.cuda
    assert accelerators["cuda_available"] == torch.cuda.is_available()
    assert len(accelerators["devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    names = [name for name, _ in platform_info.OPTIONAL_RUNTIMES]
    assert list(env_json["runtimes"]) == names
    assert {"onnxruntime", "openvino", "opencv", "onnx", "onnxscript", "matplotlib", "pillow-heif", "ai-edge-litert",
            "ncnn", "coremltools", "fastapi", "faiss", "usearch", "psycopg"} == set(names)
    assert env_json["runtimes"]["onnxruntime"] == {"installed": True, "distribution": "onnxruntime",
                                                   "version": importlib.metadata.version("onnxruntime")}
    assert env_json["runtimes"]["opencv"]["installed"] and env_json["runtimes"]["opencv"]["distribution"]
    from edgeface_cli.data.cache import default_cache_dir

    assert env_json["paths"]["cache_dir"] == str(default_cache_dir())
    assert Path(env_json["paths"]["alignment_weights"], "pnet.npz").is_file()


def test_a_missing_runtime_is_reported_as_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        if name.startswith("onnxruntime"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert platform_info.runtimes()["onnxruntime"] == {"installed": False, "version": None, "distribution": None}
    result = runner.invoke(app, ["env"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "onnxruntime" in line and "│" in line)
    assert "│ no" in row
    assert "onnxruntime not installed" in result.output  # the export extra's line


def test_env_names_the_config_and_cache_it_would_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "edgeface.yaml").write_text(f"data:\n  cache_dir: {tmp_path / 'cache'}\n")
    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    paths = json.loads(result.output)["paths"]
    assert paths["config"] == str(tmp_path / "edgeface.yaml")
    assert paths["cache_dir"] == str(tmp_path / "cache") and paths["cache_dir_from"] == "data.cache_dir"
    text = runner.invoke(app, ["env", "--set", "data.cache_dir=/elsewhere"], env={"COLUMNS": "200"}).output
    assert "cache: /elsewhere (data.cache_dir)" in text and f"config: {tmp_path / 'edgeface.yaml'}" in text
    assert "AVX2" in text and "torch " in text


def test_a_broken_config_is_reported_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "edgeface.yaml").write_text("optim:\n  head_lr: -1\n")
    result = runner.invoke(app, ["env"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "config error: invalid configuration" in " ".join(result.output.split()) and "optim.head_lr" in result.output
    assert "cache: " in result.output and "torch " in result.output


def test_env_imports_no_optional_runtime() -> None:
    probe = (
        "import sys\nsys.argv = ['edgeface', 'env', '--json']\nfrom edgeface_cli.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "imported = [name for name in ('onnxruntime', 'openvino', 'cv2', 'onnx', 'onnxscript', 'matplotlib', "
        "'pillow_heif', 'fastapi', 'faiss', 'usearch', 'psycopg') if name in sys.modules]\n"
        "print('RESULT', imported)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.stdout.strip().splitlines()[-1] == "RESULT []", done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.parametrize(("cpuinfo", "expected"), [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n", {"AVX2", "VNNI"}),
    ("flags\t\t: avx2 avx512_bf16 amx_tile amx_int8 amx_bf16\nflags\t\t: avx2\n", {"AVX2", "AVX512-BF16", "AMX"}),
    ("processor\t: 0\nFeatures\t: fp asimd evtstrm asimddp i8mm bf16\n", {"NEON-dot"}),
    ("processor\t: 0\n", set()),
])
def test_vector_features_read_x86_and_arm_cpuinfo(cpuinfo: str, expected: set[str]) -> None:
    flags = platform_info._cpuinfo_flags(cpuinfo)
    assert {name for name, present in platform_info.vector_features(flags).items() if present} == expected


def test_macos_sysctl_flags_are_spelled_like_linux() -> None:
    output = "hw.optional.arm.FEAT_DotProd: 1\nhw.optional.arm.FEAT_BF16: 0\nhw.optional.neon: 1\nhw.optional.other: 1\n"
    assert sorted(platform_info._darwin_flags(output)) == ["asimd", "asimddp"]
    assert platform_info.vector_features(platform_info._darwin_flags(output))["NEON-dot"]


def test_requirements_split_core_and_extras() -> None:
    core, extras = platform_info.requirements(['torch>=2.10', 'pydantic<3,>=2.6', 'onnx>=1.16; extra == "export"',
                                               "matplotlib>=3.7 ; extra == 'plots'", 'onnx>=1.16; extra == "dev"'])
    assert core == ["torch", "pydantic"] and extras == {"export": ["onnx"], "plots": ["matplotlib"], "dev": ["onnx"]}
