"""Clear errors for optional backends that are not installed."""

from __future__ import annotations

import importlib


def require(module: str, extra: str) -> None:
    """Import ``module`` or raise an ImportError that names the extra to install."""
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"vdppl.{extra} needs the package {module!r}, which is not installed. "
            f"Install the backend with: pip install 'vdppl[{extra}]'"
        ) from err
