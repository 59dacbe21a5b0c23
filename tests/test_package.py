import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None and not Path(sys.executable).with_name("ruff").exists(),
                    reason="ruff is not installed (requirements.txt installs it)")
def test_ruff_check_passes():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    result = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize("module", ["data", "evaluation", "predict"])
def test_module_commands_run_once_without_runpy_warnings(module):
    """The package's __init__ imports none of them, so ``python -m`` runs each once, as __main__, without warning."""
    command = [sys.executable, "-W", "error::RuntimeWarning", "-m", f"mm_classifier.{module}", "--help"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-2000:]
    assert "RuntimeWarning" not in result.stderr
