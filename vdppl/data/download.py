"""Fetching dataset files over the network, only when the network allows it.

Every request uses a short socket timeout, so a machine without network access gets the
"files not found" message within seconds instead of hanging. Files are written whole or
not at all (:func:`vdppl._io.atomic_write`), so an interrupted download leaves no partial
file for the parsers to trip over. Tests replace :func:`fetch` with a fake.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tarfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from vdppl._io import atomic_write
from vdppl.data.dataset import DataFormatError

__all__ = ["TIMEOUT", "download_files", "extract_tar", "fetch"]

TIMEOUT = 5.0  # seconds without progress before a request is abandoned


def fetch(url: str, dest: str | os.PathLike, timeout: float = TIMEOUT) -> None:
    """Download ``url`` to ``dest``; raise :class:`OSError` if the network refuses.

    Nothing is created on disk (not even ``dest``'s directory) unless the server answers.
    """
    with urllib.request.urlopen(url, timeout=timeout) as response:

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                shutil.copyfileobj(response, f, length=1 << 20)

        atomic_write(dest, write)


def download_files(names: Sequence[str], mirrors: Sequence[str], root: Path) -> str | None:
    """Fetch each of ``names`` into ``root`` from the first mirror that serves them all.

    ``mirrors`` are URL prefixes ending in ``/``. Returns ``None`` on success, otherwise a
    one-line account of why every mirror failed (for the caller's error message).
    """
    failures = []
    for mirror in mirrors:
        try:
            for name in names:
                if not (root / name).exists():
                    fetch(mirror + name, root / name)
            return None
        # URLError, HTTPError, timeouts, dropped connections, malformed URLs
        except (OSError, http.client.HTTPException, ValueError) as err:
            failures.append(f"{mirror}: {err}")
    return "; ".join(failures) if failures else None


def extract_tar(archive: Path, member_dir: str, dest: Path) -> None:
    """Extract the regular files under ``member_dir/`` of a tar archive into ``dest``."""
    try:
        with tarfile.open(archive) as tar:
            members = [
                m for m in tar.getmembers() if m.isfile() and m.name.startswith(member_dir + "/")
            ]
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataFormatError(
            f"{archive}: cannot unpack the archive ({err}); it is "
            "truncated or corrupt, delete it and download it again"
        ) from err
