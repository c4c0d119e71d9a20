"""Helpers every model tool shares: one-line user-facing errors, imports that name the pip
package to install, file hashes for bundle manifests."""

from __future__ import annotations

import hashlib
from pathlib import Path


class ExportError(Exception):
    """A one-line, user-facing failure."""


def require(module: str, pip_name: str | None = None):
    """Import a module or fail with the pip command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"missing Python package '{module}': pip install {pip_name or module}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
