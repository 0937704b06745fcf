"""kopf handlers: thin shells that run the two controllers' passes in loops.

One daemon per NodePool runs a level-triggered reconcile loop
(:func:`~pqmpc_operator.pool_controller.reconcile_pool`): it wakes when the pool or one
of its pods changes (event handlers poke it) and otherwise every ``resync_seconds``. One
daemon per MPCSession runs :func:`~pqmpc_operator.session_controller.reconcile_session`
until the session is gone. Each pass reads everything afresh, so an operator restarted
in the middle of a pass simply converges on the next one; what the operator keeps in
memory between passes (which nodes running sessions use, anomaly evidence) is rebuilt
from the stored MPCSessions at start-up, before any loop runs
(:func:`~pqmpc_operator.memory.restore_memory`). Handlers are registered into
an explicit registry by :func:`register` (nothing happens at import time).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import kopf
from kubernetes.client.exceptions import ApiException

from pqmpc_operator import builders
from pqmpc_operator.bootstrap_server import BootstrapServer
from pqmpc_operator.certification import CertificationState
from pqmpc_operator.kube import ClusterApi
from pqmpc_operator.memory import restore_memory
from pqmpc_operator.metrics import OperatorMetrics
from pqmpc_operator.model import API_GROUP, API_VERSION
from pqmpc_operator.nodeclient import NodeApi
from pqmpc_operator.pool_controller import PoolDeps, reconcile_pool
from pqmpc_operator.quarantine import PoolWatch
from pqmpc_operator.session_controller import SessionDeps, cancel_session, reconcile_session
from pqmpc_operator.settings import OperatorSettings

__all__ = ["EVENT_SOURCE", "OperatorContext", "configure_kopf", "register"]

_log = logging.getLogger(__name__)

EVENT_SOURCE = builders.MANAGED_BY
"""The component the operator's Events come from (``kubectl describe``'s From column), not kopf's default ``kopf``."""


def configure_kopf(settings: kopf.OperatorSettings, *, instance: str) -> None:
    """Set kopf's settings for this operator: finalizer, Event source, watch timeouts.

    ``instance`` names the operator replica (its pod name) as the Events' reporting instance.
    """
    settings.persistence.finalizer = f"{API_GROUP}/operator"
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = EVENT_SOURCE
    settings.posting.reporting_instance = instance
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300


@dataclass
class OperatorContext:
    """Operator-wide state shared by every handler through kopf's memo."""

    api: ClusterApi
    settings: OperatorSettings
    metrics: OperatorMetrics
    nodes: NodeApi
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=3.0))
    certification: dict[tuple[str, str], CertificationState] = field(default_factory=dict)
    watches: dict[tuple[str, str], PoolWatch] = field(default_factory=dict)
    busy: dict[tuple[str, str], dict[str, frozenset[str]]] = field(default_factory=dict)
    triggers: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    applied_children: dict[tuple[str, str], str] = field(default_factory=dict)
    bootstrap: BootstrapServer | None = None
    namespaces: tuple[str, ...] = ()
    """The namespaces the operator serves (empty: all)."""

    def trigger(self, namespace: str, name: str) -> asyncio.Event:
        """The wake-up flag of one pool's reconcile loop."""
        return self.triggers.setdefault((namespace, name), asyncio.Event())


def _pool_deps(ctx: OperatorContext) -> PoolDeps:
    return PoolDeps(api=ctx.api, nodes=ctx.nodes, settings=ctx.settings, metrics=ctx.metrics, http=ctx.http,
                    certification=ctx.certification, watches=ctx.watches, busy=ctx.busy,
                    applied_children=ctx.applied_children)


def _session_deps(ctx: OperatorContext) -> SessionDeps:
    return SessionDeps(api=ctx.api, nodes=ctx.nodes, settings=ctx.settings, metrics=ctx.metrics,
                       certification=ctx.certification, watches=ctx.watches, busy=ctx.busy)


class _PassGuard:
    """Runs one reconcile pass, counting it; errors are logged and retried with back-off.

    API errors (conflicts, throttling, a restarting API server) and bugs alike must never
    kill an object's loop: the next pass starts again from what is stored.
    """

    def __init__(self, metrics: OperatorMetrics, kind: str, what: str) -> None:
        self.metrics, self.kind, self.what = metrics, kind, what
        self.backoff = 1.0
        self.retry_in = 1.0
        self.failed = False

    async def run(self, step: Coroutine[Any, Any, float | None]) -> float | None:
        started = time.perf_counter()
        result: float | None = None
        self.failed = True
        try:
            result = await step
            self.failed, self.backoff = False, 1.0
        except ApiException as exc:
            _log.warning("%s: API error %s %s (%s); retrying in %.0fs", self.what, exc.status, exc.reason,
                         str(exc.body)[:500], self.backoff)
            self.metrics.reconcile_errors.labels(reason=f"api_{exc.status}").inc()
        except Exception:  # noqa: BLE001 - a bug must not kill the loop
            _log.exception("%s: reconcile failed; retrying in %.0fs", self.what, self.backoff)
            self.metrics.reconcile_errors.labels(reason="internal").inc()
        if self.failed:
            self.retry_in, self.backoff = self.backoff, min(self.backoff * 2, 60.0)
        self.metrics.reconciles.labels(kind=self.kind, outcome="error" if self.failed else "ok").inc()
        self.metrics.reconcile_seconds.labels(kind=self.kind).observe(time.perf_counter() - started)
        return result


def register(registry: kopf.OperatorRegistry) -> None:
    """Register every handler of the operator into ``registry``."""
    _register_lifecycle(registry)
    _register_pools(registry)
    _register_sessions(registry)


def _register_lifecycle(registry: kopf.OperatorRegistry) -> None:
    """Login, start-up (kopf settings, the bootstrap server) and clean-up."""

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Same credentials as the kubernetes client: in-cluster token or KUBECONFIG.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure_kopf(settings, instance=os.environ.get("HOSTNAME") or EVENT_SOURCE)
        ctx: OperatorContext = memo["ctx"]
        # Before any pool or session loop starts: nothing races the rebuild.
        await restore_memory(ctx.api, namespaces=ctx.namespaces, busy=ctx.busy, watches=ctx.watches)
        ctx.bootstrap = BootstrapServer(ctx.api, ctx.certification, ctx.metrics,
                                        wake=lambda namespace, name: ctx.trigger(namespace, name).set())
        await ctx.bootstrap.start(ctx.settings.bootstrap_host, ctx.settings.bootstrap_port)

    @kopf.on.cleanup(registry=registry)
    async def shutdown(memo: kopf.Memo, **_: Any) -> None:
        ctx: OperatorContext = memo["ctx"]
        if ctx.bootstrap is not None:
            await ctx.bootstrap.close()
        await ctx.nodes.aclose()


def _register_pools(registry: kopf.OperatorRegistry) -> None:
    """One reconcile loop per NodePool, woken by changes of the pool and its pods."""

    @kopf.daemon(API_GROUP, API_VERSION, "nodepools", cancellation_timeout=5.0, registry=registry)  # type: ignore[arg-type]
    async def pool_loop(name: str, namespace: str, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
        ctx: OperatorContext = memo["ctx"]
        trigger = ctx.trigger(namespace, name)
        guard = _PassGuard(ctx.metrics, "NodePool", f"pool {namespace}/{name}")
        try:
            while not stopped:
                trigger.clear()
                sooner = await guard.run(reconcile_pool(_pool_deps(ctx), namespace=namespace, name=name))
                wait = guard.retry_in if guard.failed else sooner if sooner is not None else ctx.settings.resync_seconds
                try:
                    await asyncio.wait_for(trigger.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass
        finally:
            ctx.triggers.pop((namespace, name), None)
            ctx.applied_children.pop((namespace, name), None)
            ctx.certification.pop((namespace, name), None)
            ctx.watches.pop((namespace, name), None)
            ctx.metrics.forget_pool(namespace, name)

    @kopf.on.event(API_GROUP, API_VERSION, "nodepools", registry=registry)  # type: ignore[arg-type]
    async def pool_changed(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
        ctx: OperatorContext = memo["ctx"]
        if (namespace, name) in ctx.triggers:
            ctx.triggers[(namespace, name)].set()

    @kopf.on.event(  # type: ignore[arg-type]
        "", "v1", "pods", labels={"app.kubernetes.io/managed-by": builders.MANAGED_BY}, registry=registry
    )
    async def pod_changed(labels: Mapping[str, str], namespace: str, memo: kopf.Memo, **_: Any) -> None:
        ctx: OperatorContext = memo["ctx"]
        pool = labels.get(builders.LABEL_POOL)
        if pool and (namespace, pool) in ctx.triggers:
            ctx.triggers[(namespace, pool)].set()


def _register_sessions(registry: kopf.OperatorRegistry) -> None:
    """One reconcile loop per MPCSession, and the cancel at its parties when it is deleted."""

    @kopf.daemon(API_GROUP, API_VERSION, "mpcsessions", cancellation_timeout=5.0, registry=registry)  # type: ignore[arg-type]
    async def session_loop(name: str, namespace: str, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
        ctx: OperatorContext = memo["ctx"]
        guard = _PassGuard(ctx.metrics, "MPCSession", f"session {namespace}/{name}")
        try:
            while not stopped:
                wait = await guard.run(reconcile_session(_session_deps(ctx), namespace=namespace, name=name))
                if guard.failed:
                    wait = guard.retry_in
                if wait is None:
                    break
                await stopped.wait(wait)
        finally:
            # Also when kopf cancels the daemon of a deleted session mid-pass: after the last
            # pass, so no write re-creates the series.
            ctx.metrics.observe_session(namespace, name, None)
            for sessions in ctx.busy.values():
                sessions.pop(f"{namespace}/{name}", None)

    @kopf.on.delete(API_GROUP, API_VERSION, "mpcsessions", registry=registry)  # type: ignore[arg-type]
    async def session_deleted(body: kopf.Body, name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
        # Best effort: a node that cannot be reached must never hold the deletion up.
        ctx: OperatorContext = memo["ctx"]
        ctx.metrics.observe_session(namespace, name, None)  # no pqmpc_session_phase series outlives it
        try:
            await asyncio.wait_for(cancel_session(_session_deps(ctx), body), timeout=15.0)
        except Exception:  # noqa: BLE001 - log and let the deletion go on
            _log.exception("session %s/%s deleted: cancelling it at its parties failed; they keep it until its "
                           "deadline", namespace, name)
