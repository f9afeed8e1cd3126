"""Where generated files go. Every default is relative to the project root, never to the cwd,
so that notebooks executed by papermill (whose kernel runs elsewhere) agree with the Makefile."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout this package was installed from (editable), else the current directory."""
    candidate = Path(__file__).resolve().parent.parent
    if (candidate / "pyproject.toml").is_file():
        return candidate
    return Path.cwd()


def data_dir() -> Path:
    """Decoded-data cache and torchvision downloads: ``$RESNET_DATA_DIR`` or ``<root>/data``."""
    return Path(os.environ.get("RESNET_DATA_DIR", project_root() / "data"))


def runs_dir() -> Path:
    """Executed notebooks and checkpoints: ``$RESNET_RUNS_DIR`` or ``<root>/runs``."""
    return Path(os.environ.get("RESNET_RUNS_DIR", project_root() / "runs"))


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` so that a crash leaves either the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
