"""Helpers shared by the benchmark scripts: timing, peak memory, a Markdown table, the machine's name.

The scripts import the installed package (`pip install -e .`) and run `train.py` only as a subprocess.
"""

import os
import platform
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident memory of this process (or of its finished children), in MiB."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_maxrss / 1024


def machine() -> str:
    """The processor, its core count, the GPU (if any) and torch's version, for a benchmark's heading."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    processor = platform.processor() or platform.machine()
    return f"{processor}, {os.cpu_count()} CPU cores, {device}, torch {torch.__version__}"


def timed(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` and the seconds it took."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def table(headers, rows) -> str:
    """A Markdown table of ``rows`` under ``headers``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
