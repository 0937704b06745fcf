"""Array namespace selection: numpy on CPU, cupy on GPU, one code path through ``xp``.

The engine never imports cupy at module import time; :func:`select_namespace` does it on
request and raises :class:`BackendUnavailableError` with an actionable message when cupy
or a CUDA device is missing.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

import numpy as np

__all__ = ["BackendName", "BackendUnavailableError", "select_namespace", "to_host", "namespace_name"]

BackendName = Literal["numpy", "cupy", "auto"]


class BackendUnavailableError(RuntimeError):
    """The requested array backend cannot be used on this machine."""


def _load_cupy() -> Any:
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as exc:
        raise BackendUnavailableError(
            "backend 'cupy' needs the cupy package: install the 'gpu' extra (pip install 'pqmpc[gpu]') "
            "or choose backend 'numpy'"
        ) from exc
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # cupy raises its own CUDA runtime errors
        raise BackendUnavailableError(f"backend 'cupy' found no usable CUDA device ({exc}); choose backend 'numpy'") from exc
    if count < 1:
        raise BackendUnavailableError("backend 'cupy' found no CUDA device; choose backend 'numpy'")
    return cupy


def select_namespace(name: BackendName = "auto") -> Any:
    """Return the array module for ``name``: numpy, cupy, or cupy when usable else numpy (``auto``)."""
    if name == "numpy":
        return np
    if name == "cupy":
        return _load_cupy()
    if name == "auto":
        try:
            return _load_cupy()
        except BackendUnavailableError:
            return np
    raise ValueError(f"unknown array backend {name!r}: expected 'numpy', 'cupy' or 'auto'")


def namespace_name(xp: Any) -> str:
    """The short name of an array namespace ('numpy' or 'cupy')."""
    return str(getattr(xp, "__name__", "numpy")).split(".")[0]


def to_host(array: Any) -> np.ndarray[Any, Any]:
    """Copy an xp array to a numpy array on the host (no copy for numpy input)."""
    if isinstance(array, np.ndarray):
        return array
    get = getattr(array, "get", None)
    if get is not None:
        return np.asarray(get())
    return np.asarray(array)
