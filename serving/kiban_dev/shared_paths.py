"""Locate the project's shared folder (traces, reference data).

Convention: the shared folder sits beside the repository root
(``<repo root>/../shared``). Set ``KIBAN_SHARED_DIR`` to point elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DIR_ENV = "KIBAN_SHARED_DIR"

# serving/kiban_dev/shared_paths.py -> parents[2] is the repository root.
REPO_ROOT = Path(__file__).resolve().parents[2]

AZURE_TRACE_SUBDIR = Path("traces") / "azure-llm-2023"


def shared_dir() -> Path:
    """The shared folder: ``$KIBAN_SHARED_DIR`` if set, else ``<repo root>/../shared``."""
    override = os.environ.get(SHARED_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return REPO_ROOT.parent / "shared"


def azure_trace_dir() -> Path:
    """The Azure LLM 2023 trace folder inside the shared folder."""
    return shared_dir() / AZURE_TRACE_SUBDIR


def trace_path(name: str) -> Path:
    """Path of an Azure LLM 2023 trace file, e.g. ``trace_path("conv.csv")``."""
    return azure_trace_dir() / name


def require(path: Path) -> Path:
    """Return ``path`` if it exists, else raise a FileNotFoundError that names it and the env var."""
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; the shared folder is expected beside the repository root "
            f"(<repo>/../shared) or at ${SHARED_DIR_ENV}"
        )
    return path
