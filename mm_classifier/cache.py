"""Where generated data (the built-in sample) and feature caches live on disk.

A module of its own so that the data loaders, the sample generator and the feature cache share one root
without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "MM_CLASSIFIER_CACHE"


def cache_root() -> Path:
    """The cache folder: ``$MM_CLASSIFIER_CACHE`` when set, else ``~/.cache/mm_classifier``.

    Read at every call, so a test or a benchmark can point it elsewhere after import.
    """
    return Path(os.environ.get(CACHE_ENV_VAR, Path.home() / ".cache" / "mm_classifier"))
