import os
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


def test_the_auto_classes_are_registered_whichever_is_imported_first():
    check = ("from transformers import AutoConfig\n"
             "from transformers.pipelines import PIPELINE_REGISTRY\n"
             "tasks = PIPELINE_REGISTRY.get_supported_tasks()\n"
             "print(type(AutoConfig.for_model('mm_classifier')).__module__, 'multimodal-classification' in tasks)\n")
    orders = [
        "import mm_classifier; import transformers",  # transformers after the package
        "import transformers; import mm_classifier",  # before it
        "import mm_classifier.modeling",  # one of our modules imports transformers, halfway through its own import
    ]
    runs = [subprocess.Popen([sys.executable, "-c", f"{first}\n{check}"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            for first in orders]  # side by side: each is mostly the import of torch
    for first, run in zip(orders, runs, strict=True):
        out, err = run.communicate(timeout=180)
        assert out.split() == ["mm_classifier.configuration", "True"], (first, err[-2000:])


def test_importing_the_package_loads_no_torch_transformers_or_timm():
    script = ("import sys, mm_classifier, mm_classifier.onnx_runtime, mm_classifier.serving, mm_classifier.predict\n"
              "print(sorted(m for m in ('torch', 'transformers', 'timm') if m in sys.modules))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "[]", run.stderr[-2000:]
