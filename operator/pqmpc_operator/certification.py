"""Reconcile steps for the pool's trust root and node certification (I/O shell).

``ensure_pki`` loads the pool's CA, plan signer and log from their Secret and ConfigMap
(making them on first use); ``certify_pods`` certifies node pods that run but are not
certified yet. The decisions and the cryptography are in :mod:`pqmpc_operator.pool_pki`.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pqmpc_node.crypto.pki import CertificateError
from pqmpc_node.crypto.suites import get_suite
from pqmpc_node.keystore import LogBundle
from pqmpc_operator import builders, pool_pki
from pqmpc_operator.kube import KubeApi
from pqmpc_operator.model import NodePoolSpec
from pqmpc_operator.nodeclient import NodeCallError, NodeClient
from pqmpc_operator.rollout import is_pod_ready, is_terminating

__all__ = ["CertificationState", "certify_pods", "ensure_pki"]

_log = logging.getLogger(__name__)
RETRY_SECONDS = 1.0
# How often a certified node is asked for KEM keys it rotated in since.
KEM_SYNC_SECONDS = 5.0


@dataclass
class CertificationState:
    """Per-pool memory of the operator: the loaded PKI and what each node was given."""

    pki: pool_pki.PoolPKI | None = None
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_attempt: dict[str, float] = field(default_factory=dict)
    last_sync: dict[str, float] = field(default_factory=dict)
    grace_s: float = 3600.0  # the pool's KEM grace period, refreshed on each pass


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def ensure_pki(api: KubeApi, pool: NodePoolSpec, state: CertificationState) -> pool_pki.PoolPKI:
    """The pool's PKI, loaded from (or created into) its Secret and keylog ConfigMap."""
    if state.pki is not None:
        return state.pki
    suite = get_suite(pool.suite.value)
    secret_name = pool_pki.pki_secret_name(pool.name)
    data = await api.read_secret_data(pool.namespace, secret_name)
    if data is None:
        fresh = pool_pki.new_pool_pki(pool.name, suite, now=_utcnow(), rng=os.urandom)
        secret = builders.build_pki_secret(pool, secret_name, pool_pki.pki_secret_data(fresh))
        await api.create_object(builders.build_keylog_configmap(pool, pool_pki.keylog_name(pool.name), pool_pki.keylog_data(fresh.log)))
        if await api.create_object(secret):
            _log.info("pool %s/%s: created pool CA and plan signer (%s)", pool.namespace, pool.name, suite.name.value)
        data = await api.read_secret_data(pool.namespace, secret_name)
        if data is None:
            raise RuntimeError(f"Secret {pool.namespace}/{secret_name} vanished right after it was created")
    logged = await api.read_configmap_data(pool.namespace, pool_pki.keylog_name(pool.name)) or {}
    entries = [line for line in logged.get("entries", "").splitlines() if line]
    state.pki = pool_pki.pki_from_secret(data, suite, entries)
    return state.pki


def _bundle(pki: pool_pki.PoolPKI) -> dict[str, Any]:
    return LogBundle(pki.log.entries, pki.log.signed_tree_head(now=_utcnow())).to_json()


def _wants_certificate(pod: Mapping[str, Any]) -> bool:
    st = pod.get("status") or {}
    running = any("running" in (cs.get("state") or {}) for cs in st.get("containerStatuses") or [])
    return bool(st.get("podIP")) and running and not is_pod_ready(pod) and not is_terminating(pod)


async def _sync_kem_keys(nodes: NodeClient, pki: pool_pki.PoolPKI, pod: Mapping[str, Any], state: CertificationState) -> bool:
    """Log KEM key certificates a certified node made since (rotation); True if any was new."""
    name = pod["metadata"]["name"]
    if time.monotonic() - state.last_sync.get(name, 0.0) < KEM_SYNC_SECONDS:
        return False
    state.last_sync[name] = time.monotonic()
    try:
        doc = await nodes.csr(pod["status"]["podIP"])
        added = pool_pki.log_kem_keys(pki, doc, pod_name=name, now=_utcnow())
    except (NodeCallError, pool_pki.CertificationRefused) as exc:
        _log.info("KEM key sync with %s failed: %s", name, exc)
        return False
    _record_schedule(state, name, doc, state.grace_s)
    if added:
        _log.info("logged %d rotated KEM key(s) of %s (epochs %s)", len(added), name, added)
    return bool(added)


def _record_schedule(state: CertificationState, name: str, doc: Mapping[str, Any], grace_s: float) -> None:
    schedule = pool_pki.kem_schedule(doc, now=_utcnow(), grace_s=grace_s)
    if schedule is not None:
        epoch, rotates = schedule
        facts = state.facts.setdefault(name, {})
        facts["kemEpoch"] = epoch
        facts["kemRotatesAt"] = rotates.strftime("%Y-%m-%dT%H:%M:%SZ")


async def _renew_if_due(
    nodes: NodeClient, pki: pool_pki.PoolPKI, pool: NodePoolSpec, pod: Mapping[str, Any],
    state: CertificationState, previous: Mapping[str, Any], busy: frozenset[str],
) -> bool:
    """Re-issue a certified node's certificate once it is within renewBefore of expiry (cert-manager style)."""
    name = pod["metadata"]["name"]
    not_after = state.facts.get(name, {}).get("certNotAfter") or previous.get("certNotAfter")
    if not not_after:
        return False
    expires = dt.datetime.strptime(str(not_after), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    left = (expires - _utcnow()).total_seconds()
    if left > pool.rotation.renew_before_s:
        return False
    # A renewed certificate has a new fingerprint, which running sessions' plans do not
    # name: renew a busy node only when expiry is near (a tenth of the lifetime).
    if name in busy and left > pool.rotation.duration_s / 10:
        return False
    if time.monotonic() - state.last_attempt.get(name, 0.0) < RETRY_SECONDS:
        return False
    state.last_attempt[name] = time.monotonic()
    ip = pod["status"]["podIP"]
    try:
        doc = await nodes.csr(ip)
        dns = f"{name}.{builders.headless_service_name(pool.name)}.{pool.namespace}.svc"
        issued = pool_pki.certify_node(pki, doc, pod_name=name, expected_dns_name=dns, now=_utcnow(),
                                       lifetime=dt.timedelta(seconds=pool.rotation.duration_s), rng=os.urandom)
        answer = await nodes.install_certificate(ip, base64.b64encode(issued.certificate_der).decode(), _bundle(pki))
    except (NodeCallError, pool_pki.CertificationRefused, CertificateError) as exc:
        _log.warning("pool %s/%s: renewing %s's certificate failed (will retry): %s", pool.namespace, pool.name, name, exc)
        return False
    state.facts[name] = {**state.facts.get(name, {}), "certFingerprint": issued.fingerprint,
                         "kemEpoch": int(answer.get("kemEpoch", 0)),
                         "certNotAfter": issued.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")}
    _log.info("pool %s/%s: renewed %s's certificate until %s", pool.namespace, pool.name, name, issued.not_after)
    return True


async def certify_pods(
    api: KubeApi,
    nodes: NodeClient,
    pool: NodePoolSpec,
    pki: pool_pki.PoolPKI,
    pods: Sequence[Mapping[str, Any]],
    state: CertificationState,
    previous: Mapping[str, Mapping[str, Any]] | None = None,
    busy: frozenset[str] = frozenset(),
) -> bool:
    """Certify running, uncertified node pods and renew due certificates; True to retry soon.

    ``busy``: nodes that running sessions use (their renewal waits unless expiry is near).
    """
    previous = previous or {}
    state.grace_s = pool.rotation.grace_period_s
    retry = False
    issued_any = False
    for pod in pods:
        name = pod["metadata"]["name"]
        if is_pod_ready(pod) and not is_terminating(pod):
            if await _sync_kem_keys(nodes, pki, pod, state):
                issued_any = True
            if await _renew_if_due(nodes, pki, pool, pod, state, previous.get(name, {}), busy):
                issued_any = True
            continue
        if not _wants_certificate(pod):
            continue
        if time.monotonic() - state.last_attempt.get(name, 0.0) < RETRY_SECONDS:
            retry = True
            continue
        state.last_attempt[name] = time.monotonic()
        ip = pod["status"]["podIP"]
        try:
            doc = await nodes.csr(ip)
            if doc.get("certified"):
                continue
            dns = f"{name}.{builders.headless_service_name(pool.name)}.{pool.namespace}.svc"
            issued = pool_pki.certify_node(
                pki, doc, pod_name=name, expected_dns_name=dns, now=_utcnow(),
                lifetime=dt.timedelta(seconds=pool.rotation.duration_s), rng=os.urandom,
            )
            issued_any = True
            answer = await nodes.install_certificate(ip, base64.b64encode(issued.certificate_der).decode(), _bundle(pki))
        except NodeCallError as exc:
            # Usually the node is still starting; try again shortly.
            _log.info("pool %s/%s: node %s not certifiable yet: %s", pool.namespace, pool.name, name, exc)
            retry = True
            continue
        except (pool_pki.CertificationRefused, CertificateError) as exc:
            _log.warning("pool %s/%s: refused to certify %s: %s", pool.namespace, pool.name, name, exc)
            retry = True
            continue
        state.facts[name] = {
            "certFingerprint": issued.fingerprint,
            "kemEpoch": int(answer.get("kemEpoch", 0)),
            "certNotAfter": issued.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        _record_schedule(state, name, doc, pool.rotation.grace_period_s)
        _log.info("pool %s/%s: certified node %s (%s)", pool.namespace, pool.name, name, issued.fingerprint[:16])
    if issued_any:
        await api.apply(builders.build_keylog_configmap(pool, pool_pki.keylog_name(pool.name), pool_pki.keylog_data(pki.log)))
        bundle = _bundle(pki)
        for pod in pods:
            ip = (pod.get("status") or {}).get("podIP")
            if ip and not is_terminating(pod):
                try:
                    await nodes.push_log(ip, bundle)
                except NodeCallError as exc:
                    _log.info("pool %s/%s: log push to %s failed: %s", pool.namespace, pool.name, pod["metadata"]["name"], exc)
    return retry
