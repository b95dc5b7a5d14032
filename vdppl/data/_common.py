"""Helpers shared by the loaders: optional imports, default directories, file lookup."""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType


def require(module: str, dataset: str, package: str) -> ModuleType:
    """Import ``module`` or raise an ImportError naming the dataset and what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"the {dataset!r} dataset needs {package}, which is not installed: "
            f"pip install {package}  (or pip install 'vdppl[data]')"
        ) from err


def default_root(name: str) -> Path:
    """``$VDPPL_DATA/<name>``, by default ``~/.cache/vdppl/<name>``: where downloads go."""
    return Path(os.environ.get("VDPPL_DATA", "~/.cache/vdppl")).expanduser() / name


def find_file(dirs: Sequence[Path], names: Sequence[str]) -> Path | None:
    """The first ``dir/name`` that is a file, trying each name in each directory in order."""
    for d in dirs:
        for name in names:
            if (d / name).is_file():
                return d / name
    return None
