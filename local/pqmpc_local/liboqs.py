"""Where ``scripts/build-liboqs.sh`` (``make liboqs``) caches the liboqs build.

Tests only: the liboqs backend's tests point liboqs-python at this folder through
``OQS_INSTALL_PATH``, the way the cluster tests find the control plane through
:func:`pqmpc_local.controlplane.binaries_dir`. The version is the script's pin.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["LIBOQS_VERSION", "install_dir", "shared_library"]

LIBOQS_VERSION = "0.13.0"


def install_dir(env: Mapping[str, str] | None = None) -> Path:
    """The prefix the script installs into (same logic as the script): ``<cache>/liboqs-<version>``."""
    env = os.environ if env is None else env
    cache_home = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", str(Path.home()))) / ".cache")
    root = Path(env.get("PQMPC_CACHE_DIR") or Path(cache_home) / "pqmpc")
    return root / f"liboqs-{LIBOQS_VERSION}"


def shared_library(env: Mapping[str, str] | None = None) -> Path | None:
    """The built ``liboqs.so``, or None when ``make liboqs`` has not run."""
    lib = install_dir(env) / "lib" / "liboqs.so"
    return lib if lib.is_file() else None
