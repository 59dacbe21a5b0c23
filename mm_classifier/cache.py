"""Where generated data (the built-in sample) and feature caches live on disk.

A module of its own so that the data loaders, the sample generator and the feature cache share one root
without importing each other.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "MM_CLASSIFIER_CACHE"


def cache_root() -> Path:
    """The cache folder: ``$MM_CLASSIFIER_CACHE`` when set, else ``~/.cache/mm_classifier``.

    Read at every call, so a test or a benchmark can point it elsewhere after import.
    """
    return Path(os.environ.get(CACHE_ENV_VAR, Path.home() / ".cache" / "mm_classifier"))


def drop_if_damaged(cache_file: Path, rows: int) -> None:
    """Delete an Arrow cache file that does not read back whole with ``rows`` rows, so that its builder writes it
    again: ``datasets`` renames a finished file into place, but a file cut short by a full disk, a copy or a
    crash elsewhere would otherwise stop the run (or be read as if it were whole)."""
    if not cache_file.is_file():
        return
    import datasets

    try:
        found = len(datasets.Dataset.from_file(str(cache_file)))
        problem = None if found == rows else f"{found} rows instead of {rows}"
    except Exception as err:  # pyarrow's errors for a cut-short stream are OSError and ArrowInvalid
        problem = f"{type(err).__name__}: {err}"
    if problem is not None:
        logger.warning("Rebuilding the damaged cache file %s (%s)", cache_file, problem)
        cache_file.unlink(missing_ok=True)
