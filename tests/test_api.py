"""The README's Python API example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_api_example_runs(tmp_path: Path) -> None:
    from edgeface_cli.data.sample_data import write_sample_dataset

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = re.search(r"<!-- api-example -->\n```python\n(.*?)```", readme, re.S)
    assert example is not None, "the README lost its API example"
    write_sample_dataset(tmp_path / "data", identities=6, per_identity=8, size=32, seed=0)
    done = subprocess.run([sys.executable, "-c", example.group(1)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "finished" and "(2, 512)" in done.stdout
    assert (tmp_path / "runs" / "api" / "eval.json").is_file()
