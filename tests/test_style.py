"""The codebase follows its own style rules (ruff: pyflakes, pycodestyle, isort, numpydoc)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed in this environment (it is in requirements.txt)")
    folders = ["clv_jobs", "dags", "plugins", "tests", "benchmarks"]
    result = subprocess.run([ruff, "check", "--output-format", "concise", *folders],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
