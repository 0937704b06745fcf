"""Record every change to one kind of custom object, for tests that must not miss a state.

Polling ``kubectl get`` can miss a state that lasts less than the poll interval, such as
a finished MPCSession that its ``ttlSecondsAfterFinished`` deletes again. A watch that
starts from a list's ``resourceVersion`` gets every change after it, in order, including
the final object in the DELETED event, so a test waits on what happened, not on what is
still there::

    with ObjectWatch(kubeconfig, "pqmpc.io", "v1alpha1", "mpcsessions", "ns") as w:
        ...create sessions...
        w.wait_for("s1 finished", lambda: w.first("s1", lambda o: phase(o) == "Succeeded"))

Tests only; the operator has kopf's own watches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

from pqmpc_local.kubeconfig import api_client

__all__ = ["ObjectWatch", "WatchEvent", "WatchFailed"]


class WatchFailed(RuntimeError):
    """The watch stopped with an error (for example 410 Gone), so events may be missing."""


@dataclass(frozen=True)
class WatchEvent:
    """One change: ``kind`` is ADDED, MODIFIED or DELETED; ``seen`` is the local monotonic time."""

    kind: str
    name: str
    obj: dict[str, Any]
    seen: float


class ObjectWatch:
    """Every event of the custom objects ``group/version/plural`` in ``namespace`` from start to stop."""

    def __init__(self, kubeconfig: Path, group: str, version: str, plural: str, namespace: str) -> None:
        self._kubeconfig = kubeconfig
        self._args = (group, version, namespace, plural)
        self._events: list[WatchEvent] = []
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    def __enter__(self) -> ObjectWatch:
        self._thread = threading.Thread(target=self._run, name=f"watch-{self._args[3]}", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise WatchFailed(f"could not start watching {self._args[3]}: {self._error}") from self._error
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)  # the stream's server-side timeout bounds the wait

    def _run(self) -> None:
        try:
            with api_client(self._kubeconfig) as client:
                api = k8s.CustomObjectsApi(client)
                listed: Any = api.list_namespaced_custom_object(*self._args)
                version = str(listed["metadata"]["resourceVersion"])
                self._started.set()
                while not self._stop.is_set():
                    stream = k8s_watch.Watch()  # type: ignore[no-untyped-call]
                    for event in stream.stream(  # type: ignore[no-untyped-call]
                        api.list_namespaced_custom_object, *self._args, resource_version=version, timeout_seconds=5
                    ):
                        obj: dict[str, Any] = event["object"]
                        if event["type"] == "ERROR":
                            raise WatchFailed(f"watch error: {obj}")
                        version = str(obj["metadata"]["resourceVersion"])
                        with self._changed:
                            self._events.append(WatchEvent(event["type"], obj["metadata"]["name"], obj,
                                                           time.monotonic()))
                            self._changed.notify_all()
                        if self._stop.is_set():
                            stream.stop()  # type: ignore[no-untyped-call]
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting test
            with self._changed:
                self._error = exc
                self._changed.notify_all()
        finally:
            self._started.set()

    def events(self, name: str | None = None) -> list[WatchEvent]:
        """The events so far, in order; only ``name``'s when given."""
        with self._changed:
            return [e for e in self._events if name is None or e.name == name]

    def first(self, name: str, match: Callable[[WatchEvent], bool]) -> WatchEvent | None:
        """The first event of ``name`` that ``match`` accepts, or None yet."""
        return next((e for e in self.events(name) if match(e)), None)

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        """Wait (woken by each event, not polling) until ``check()`` is truthy; return it.

        Raises :class:`WatchFailed` if the watch broke and ``TimeoutError`` naming
        ``what`` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = check()
                if result:
                    return result
                if self._error is not None:
                    raise WatchFailed(f"watch stopped while waiting for {what}: {self._error}") from self._error
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
                self._changed.wait(left)
