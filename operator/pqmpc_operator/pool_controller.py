"""The NodePool controller: one read -> decide -> write pass over one pool (I/O shell).

Each pass reads everything afresh (the pool, its pods, the cluster's Nodes), asks the
pure modules (:mod:`~pqmpc_operator.builders`, :mod:`~pqmpc_operator.rollout`,
:mod:`~pqmpc_operator.status`) what the children and the status should be, and writes
only what differs, so an operator restarted in the middle of a pass simply converges
on the next one. The session side is :mod:`pqmpc_operator.session_controller`.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import kopf

from pqmpc_operator import builders, gateway_builders, pool_pki, rollout, status
from pqmpc_operator.certification import CertificationState, certify_pods, ensure_pki
from pqmpc_operator.kube import ClusterApi
from pqmpc_operator.metrics import OperatorMetrics
from pqmpc_operator.model import NodePoolSpec, SpecError, parse_nodepool
from pqmpc_operator.nodeclient import NodeApi
from pqmpc_operator.quarantine import PoolWatch, assess_pool
from pqmpc_operator.settings import OperatorSettings

__all__ = ["PoolDeps", "reconcile_pool"]

_log = logging.getLogger(__name__)


@dataclass
class PoolDeps:
    """What a pool pass needs, passed explicitly (the doors are Protocols: real or :mod:`~pqmpc_operator.testing` fakes)."""

    api: ClusterApi
    nodes: NodeApi
    settings: OperatorSettings
    metrics: OperatorMetrics
    http: httpx.AsyncClient
    certification: dict[tuple[str, str], CertificationState] = field(default_factory=dict)
    watches: dict[tuple[str, str], PoolWatch] = field(default_factory=dict)
    busy: dict[tuple[str, str], dict[str, frozenset[str]]] = field(default_factory=dict)
    applied_children: dict[tuple[str, str], str] = field(default_factory=dict)
    post_event: Callable[[Mapping[str, Any], str, str, str], None] | None = None
    """Posts an Event on the pool (body, type, reason, message); None: through kopf."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _kopf_event(body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
    kopf.event(cast(kopf.Body, body), type=kind, reason=reason, message=message)


async def _write_status(
    deps: PoolDeps, body: Mapping[str, Any], *, namespace: str, name: str, new: Mapping[str, Any]
) -> None:
    old = body.get("status") or {}
    if new == old:
        return
    await deps.api.patch_pool_status(namespace, name, new)
    post = deps.post_event or _kopf_event
    for ev in status.condition_events(old, new):
        post(body, ev.type, ev.reason, ev.message[:1000])


async def _apply_children(deps: PoolDeps, pool: NodePoolSpec, pki: pool_pki.PoolPKI) -> None:
    """Server-side apply the pool's children, skipped while they are what this process last applied.

    Without ``spec.externalAccess`` the pool's gateway objects, if it still owns any, are
    deleted (once per change of the children, and once after an operator start).
    """
    children = [
        builders.build_trust_configmap(pool, pool_pki.trust_bundle_data(pki)),
        builders.build_service_account(pool),
        builders.build_headless_service(pool, deps.settings),
        builders.build_pdb(pool),
        builders.build_network_policy(pool, deps.settings),
        *gateway_builders.build_gateway_children(pool, deps.settings),
    ]
    digest = hashlib.sha256(json.dumps(children, sort_keys=True).encode()).hexdigest()
    key = (pool.namespace, pool.name)
    if deps.applied_children.get(key) != digest:
        for child in children:
            await deps.api.apply(child)
        if pool.external_access is None:
            # External access off (or never on): a gateway this pool still owns goes, Service first.
            name = gateway_builders.gateway_name(pool.name)
            for kind in reversed(gateway_builders.GATEWAY_KINDS):
                if await deps.api.delete_owned(kind, pool.namespace, name, pool.uid):
                    _log.info("pool %s/%s: external access is off: deleted %s %s", pool.namespace, pool.name, kind,
                              name)
        deps.applied_children[key] = digest


async def reconcile_pool(deps: PoolDeps, *, namespace: str, name: str) -> float | None:
    """One pass for one pool: read -> decide -> write. Returns a sooner re-run time, if any."""
    body = await deps.api.get_pool(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    try:
        pool = parse_nodepool(body)
    except SpecError as exc:
        # Schema-valid but unusable: say so, touch no child, wait for a new spec.
        await _write_status(deps, body, namespace=namespace, name=name,
                            new=status.invalid_spec_status(body, exc, _now()))
        deps.metrics.reconcile_errors.labels(reason="invalid_spec").inc()
        return None

    cert_state = deps.certification.setdefault((namespace, name), CertificationState())
    cert_state.pool = pool
    pki = await ensure_pki(deps.api, pool, cert_state)
    await _apply_children(deps, pool, pki)

    pods, nodes = await asyncio.gather(deps.api.list_pool_pods(namespace, name, pool.uid), deps.api.list_nodes())
    busy = frozenset(n for used in deps.busy.get((namespace, name), {}).values() for n in used)
    plan = rollout.plan_pods(pool, pods, nodes, deps.settings, busy)
    for pod in plan.create:
        uid = await deps.api.create_pod(pod)
        if uid:
            cert_state.created_uids.add(uid)  # only pods it made itself may attest (see attestation)
    for pod_name in plan.delete:
        await deps.api.delete_pod(namespace, pod_name)
    if plan.create or plan.delete:
        _log.info("pool %s/%s: created %s, deleted %s", namespace, name,
                  [p["metadata"]["name"] for p in plan.create], list(plan.delete))
    previous_nodes = {str(n.get("name")): n for n in (body.get("status") or {}).get("nodes") or []}
    retry = await certify_pods(deps.api, deps.nodes, pool, pki, pods, cert_state, previous_nodes, busy)
    watch = deps.watches.setdefault((namespace, name), PoolWatch())
    behaviour = await assess_pool(deps.api, deps.http, pool, body, pods, watch, deps.settings.node_metrics_port)
    facts = {n: {**cert_state.facts.get(n, {}), **behaviour.get(n, {})} for n in set(cert_state.facts) | set(behaviour)}
    new_status = status.compute_status(pool, pods, plan, body.get("status") or {}, _now(), facts,
                                       key_revision=cert_state.pushed_log_size or None)
    await _write_status(deps, body, namespace=namespace, name=name, new=new_status)
    deps.metrics.observe_pool(namespace, name, new_status)
    return 1.0 if retry else None
