"""Array namespace selection: numpy on CPU, cupy on GPU, one code path through ``xp``.

The engine never imports cupy at module import time; :func:`select_namespace` does it on
request and raises :class:`BackendUnavailableError` with an actionable message when cupy
or a CUDA device is missing.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

import numpy as np

__all__ = ["BackendName", "BackendUnavailableError", "select_namespace", "to_host", "namespace_name", "tune_allocator"]

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


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator(threshold: int = 1 << 30) -> bool:
    """Keep large numpy buffers on the heap (glibc ``mallopt``); returns whether it applied.

    glibc serves blocks above its mmap threshold (at most 32 MiB by default) with fresh
    ``mmap`` pages and unmaps them on free, so every temporary of a large batch pays page
    faults and zero-filling: this roughly halves the throughput of a million-element Beaver
    multiplication. Raising the mmap and trim thresholds lets freed buffers be reused.
    Process-wide and opt-in (party processes call it once at start); the same effect as the
    environment variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``. A no-op
    returning False where libc has no ``mallopt`` (musl, macOS).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1
    return bool(mallopt(_M_TRIM_THRESHOLD, int(threshold) * 4 if threshold * 4 < 2**31 else 2**31 - 1) == 1 and ok)
