"""Reconcile steps for the pool's trust root and node certification (I/O shell).

``ensure_pki`` loads the pool's CA, plan signer and log from their Secret and ConfigMap
(making them on first use) and gives the operator its bootstrap certificate for the pool;
``certify_attested`` issues a node's first certificate once the bootstrap server has
attested the pod (:mod:`pqmpc_operator.attestation`); ``certify_pods`` logs rotated KEM
keys, renews certificates that are due and pushes the grown log — all over PQ-TLS to
nodes that already hold a certificate. Nothing is ever certified because of what answers
at a pod IP. The decisions and the cryptography are in :mod:`pqmpc_operator.pool_pki`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pqmpc_node.crypto.pki import CertificateError, NodeIdentity, bootstrap_server_name
from pqmpc_node.crypto.suites import get_suite
from pqmpc_node.crypto.transparency import LogBundle, LogVerifier
from pqmpc_node.net.tls import TlsIdentity
from pqmpc_operator import builders, gateway_builders, pool_pki
from pqmpc_operator.kube import ClusterApi
from pqmpc_operator.model import NodePoolSpec
from pqmpc_operator.nodeclient import NodeApi, NodeCallError, PoolTrust
from pqmpc_operator.rollout import is_pod_ready, is_terminating

__all__ = ["CertificationState", "certify_attested", "certify_pods", "ensure_operator_tls", "ensure_pki",
           "pod_directory"]

_log = logging.getLogger(__name__)
RETRY_SECONDS = 1.0
# How often a certified node is asked for KEM keys it rotated in since.
KEM_SYNC_SECONDS = 5.0
# Certificates one pod (uid) may get from one operator process: container restarts re-attest
# with a new key; a pod that keeps asking is refused rather than growing the log without end.
MAX_ISSUANCES_PER_POD = 16
# The operator's bootstrap certificate (key in memory only) and when it is re-issued.
OPERATOR_CERT_LIFETIME = dt.timedelta(days=30)
OPERATOR_CERT_RENEW_BEFORE = dt.timedelta(days=1)


@dataclass
class CertificationState:
    """Per-pool memory of the operator: the loaded PKI and what each node was given."""

    pki: pool_pki.PoolPKI | None = None
    pool: NodePoolSpec | None = None
    """The pool's spec as the last reconcile pass parsed it (the bootstrap server reads it)."""
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_attempt: dict[str, float] = field(default_factory=dict)
    last_sync: dict[str, float] = field(default_factory=dict)
    grace_s: float = 3600.0  # the pool's KEM grace period, refreshed on each pass
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while the log grows (bootstrap server and reconcile pass alike)."""
    operator_tls: TlsIdentity | None = None
    """The operator's own bootstrap certificate for this pool (its key never leaves this process)."""
    created_uids: set[str] = field(default_factory=set)
    """Uids of the node pods this operator process created (the API server's answers to its creates)."""
    started_at: str = field(default_factory=lambda: _utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"))
    """When this operator began managing the pool (RFC 3339): older pods may be a predecessor's."""
    pods_by_ip: dict[str, str] = field(default_factory=dict)
    previous_fingerprints: dict[str, str] = field(default_factory=dict)
    _log_checker: tuple[int, LogVerifier] | None = field(default=None, repr=False)
    """Pod name → the certificate replaced by the latest one (still accepted while the node switches)."""
    """Pod IP → pod name as the API server last reported them (checked against node certificates)."""
    pushed_log_size: int = 0
    persisted_log_size: int = 0
    """Entries known to be in the keylog ConfigMap: nothing beyond it ever leaves the operator."""
    issued: dict[str, tuple[bytes, dict[str, Any]]] = field(default_factory=dict)
    """Pod uid → (CSR public key, the certificate answer): a repeated bootstrap with the same key gets it again."""
    issuances: dict[str, int] = field(default_factory=dict)
    """Pod uid → certificates issued to it by this operator (capped: MAX_ISSUANCES_PER_POD)."""
    external_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Pod name → the external DNS names (``spec.externalAccess``) its latest certificate from this process carries:
    when the pool's change, an idle node is re-certified at once instead of at its next renewal."""

    def trust_for(self, ip: str) -> PoolTrust | None:
        """What the node at ``ip`` must present over TLS (None: no pod of this pool there)."""
        name = self.pods_by_ip.get(ip)
        if name is None or self.pki is None:
            return None
        pki = self.pki
        pinned = frozenset(fp for fp in (self.facts.get(name, {}).get("certFingerprint"),
                                         self.previous_fingerprints.get(name)) if fp)
        return PoolTrust(pki.ca.certificate, pki.ca.suite, self.log_checker, name, pinned)

    def log_checker(self) -> LogVerifier:
        """A verifier over the operator's own log, rebuilt only when the log grew.

        Building one signs a tree head and re-hashes every entry: not once per TLS
        connection to a node.
        """
        if self.pki is None:
            raise RuntimeError("the pool's PKI is not loaded")
        size = len(self.pki.log.entries)
        if self._log_checker is None or self._log_checker[0] != size:
            self._log_checker = (size, pool_pki.own_log_verifier(self.pki, now=_utcnow()))
        return self._log_checker[1]


def pod_directory(states: Mapping[tuple[str, str], CertificationState]) -> Callable[[str], PoolTrust | None]:
    """Pod IP → pool trust across every pool the operator runs (the :class:`NodeClient`'s directory)."""
    def lookup(ip: str) -> PoolTrust | None:
        for state in list(states.values()):
            trust = state.trust_for(ip)
            if trust is not None:
                return trust
        return None
    return lookup


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def ensure_operator_tls(pool: NodePoolSpec, state: CertificationState) -> None:
    """Give the operator its bootstrap certificate for ``pool`` (fresh key in memory), re-issued before it expires."""
    pki = state.pki
    now = _utcnow()
    if pki is None or (state.operator_tls is not None and
                       state.operator_tls.certificate.not_valid_after_utc - now > OPERATOR_CERT_RENEW_BEFORE):
        return
    identity = NodeIdentity.generate(pki.ca.suite, os.urandom)
    cert = pki.ca.issue_operator(identity.public_key, server_name=bootstrap_server_name(pool.name, pool.namespace),
                                 now=now - pool_pki.CLOCK_SKEW, lifetime=OPERATOR_CERT_LIFETIME, rng=os.urandom)
    state.operator_tls = TlsIdentity(identity, cert, pki.ca.certificate)


async def ensure_pki(api: ClusterApi, pool: NodePoolSpec, state: CertificationState) -> pool_pki.PoolPKI:
    """The pool's PKI, loaded from (or created into) its Secret and keylog ConfigMap, and the bootstrap certificate."""
    if state.pki is not None:
        ensure_operator_tls(pool, state)
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
    state.pushed_log_size = 0
    state.persisted_log_size = len(state.pki.log.entries)
    ensure_operator_tls(pool, state)
    return state.pki


async def _persist(api: ClusterApi, pool: NodePoolSpec, pki: pool_pki.PoolPKI, state: CertificationState) -> None:
    """Write the log to its ConfigMap if it grew (call under ``state.lock``, before any bundle leaves).

    A log head handed out but lost at an operator restart would fork the pool's log for
    good: every certificate, tree head and push is preceded by this write.
    """
    size = len(pki.log.entries)
    if size != state.persisted_log_size:
        await api.apply(builders.build_keylog_configmap(pool, pool_pki.keylog_name(pool.name), pool_pki.keylog_data(pki.log)))
        state.persisted_log_size = size


def _bundle(pki: pool_pki.PoolPKI) -> dict[str, Any]:
    return LogBundle(pki.log.entries, pki.log.signed_tree_head(now=_utcnow())).to_json()


async def _sync_kem_keys(api: ClusterApi, nodes: NodeApi, pool: NodePoolSpec, pki: pool_pki.PoolPKI,
                         pod: Mapping[str, Any], state: CertificationState) -> bool:
    """Log KEM key certificates a certified node made since (rotation); True if any was new."""
    name = pod["metadata"]["name"]
    if time.monotonic() - state.last_sync.get(name, 0.0) < KEM_SYNC_SECONDS:
        return False
    state.last_sync[name] = time.monotonic()
    try:
        doc = await nodes.csr(pod["status"]["podIP"])
        async with state.lock:
            added = pool_pki.log_kem_keys(pki, doc, pod_name=name, now=_utcnow())
            await _persist(api, pool, pki, state)
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
    api: ClusterApi, nodes: NodeApi, pki: pool_pki.PoolPKI, pool: NodePoolSpec, pod: Mapping[str, Any],
    state: CertificationState, previous: Mapping[str, Any], busy: frozenset[str],
) -> bool:
    """Re-issue a certified node's certificate once it is within renewBefore of expiry (cert-manager style),
    or at once when the pool's external names changed since this process certified it and the node is idle."""
    name = pod["metadata"]["name"]
    not_after = state.facts.get(name, {}).get("certNotAfter") or previous.get("certNotAfter")
    if not not_after:
        return False
    expires = dt.datetime.strptime(str(not_after), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    left = (expires - _utcnow()).total_seconds()
    held = state.external_names.get(name)
    renamed = held is not None and held != gateway_builders.external_dns_names(pool, name) and name not in busy
    if left > pool.rotation.renew_before_s and not renamed:
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
        async with state.lock:
            issued = pool_pki.certify_node(pki, doc, pod_name=name,
                                           expected_dns_name=builders.node_dns_name(pool, name),
                                           external_dns_names=gateway_builders.external_dns_names(pool, name),
                                           now=_utcnow(), lifetime=dt.timedelta(seconds=pool.rotation.duration_s),
                                           rng=os.urandom)
            await _persist(api, pool, pki, state)
            bundle = _bundle(pki)
        answer = await nodes.install_certificate(ip, base64.b64encode(issued.certificate_der).decode(), bundle)
    except (NodeCallError, pool_pki.CertificationRefused, CertificateError) as exc:
        _log.warning("pool %s/%s: renewing %s's certificate failed (will retry): %s", pool.namespace, pool.name, name, exc)
        return False
    if state.facts.get(name, {}).get("certFingerprint"):
        state.previous_fingerprints[name] = state.facts[name]["certFingerprint"]
    state.facts[name] = {**state.facts.get(name, {}), "certFingerprint": issued.fingerprint,
                         "kemEpoch": int(answer.get("kemEpoch", 0)),
                         "certNotAfter": issued.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")}
    state.external_names[name] = gateway_builders.external_dns_names(pool, name)
    _log.info("pool %s/%s: renewed %s's certificate until %s%s", pool.namespace, pool.name, name, issued.not_after,
              " (its external names changed)" if renamed else "")
    return True


async def certify_attested(
    api: ClusterApi, pool: NodePoolSpec, state: CertificationState, csr_document: Mapping[str, Any], *, pod_name: str,
    pod_uid: str,
) -> dict[str, Any]:
    """Issue an attested node's first certificate; returns the answer the node installs.

    The caller (the bootstrap server) has proven that the request comes from pod
    ``pod_name`` (uid ``pod_uid``) of this pool. Under the pool's lock: certify and log,
    persist the log ConfigMap *before* answering (a certificate is never out while its log
    entry could be lost), record the node's facts. The same pod asking again with the same
    key gets the same certificate; a pod is certified at most MAX_ISSUANCES_PER_POD times.
    The reconcile pass pushes the grown log to the other nodes.
    """
    pki = state.pki
    if pki is None:
        raise pool_pki.CertificationRefused(f"pool {pool.namespace}/{pool.name} has no PKI loaded yet; retry")
    try:
        csr_key = x509.load_der_x509_csr(base64.b64decode(str(csr_document.get("csr")), validate=True)).public_key()
        key = csr_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError):
        raise pool_pki.CertificationRefused(f"node {pod_name} sent a malformed CSR") from None
    async with state.lock:
        held = state.issued.get(pod_uid)
        if held is not None and held[0] == key and held[1]["notAfter"] > _utcnow().timestamp() + 60:
            # The same pod asking again with the same key (its first answer was lost): the
            # same certificate, with the current log; nothing new is logged.
            await _persist(api, pool, pki, state)
            return {**held[1], "log": _bundle(pki)}
        if state.issuances.get(pod_uid, 0) >= MAX_ISSUANCES_PER_POD:
            raise pool_pki.CertificationRefused(
                f"pod {pod_name} (uid {pod_uid}) was certified {MAX_ISSUANCES_PER_POD} times by this operator; "
                "refusing more (delete the pod to start afresh)")
        issued = pool_pki.certify_node(pki, csr_document, pod_name=pod_name,
                                       expected_dns_name=builders.node_dns_name(pool, pod_name),
                                       external_dns_names=gateway_builders.external_dns_names(pool, pod_name),
                                       now=_utcnow(), lifetime=dt.timedelta(seconds=pool.rotation.duration_s),
                                       rng=os.urandom)
        await _persist(api, pool, pki, state)
        bundle = _bundle(pki)
        answer = {"certificate": base64.b64encode(issued.certificate_der).decode(),
                  "notAfter": issued.not_after.timestamp()}
        state.issued[pod_uid] = (key, answer)
        state.issuances[pod_uid] = state.issuances.get(pod_uid, 0) + 1
    state.external_names[pod_name] = gateway_builders.external_dns_names(pool, pod_name)
    if state.facts.get(pod_name, {}).get("certFingerprint"):
        state.previous_fingerprints[pod_name] = state.facts[pod_name]["certFingerprint"]
    state.facts[pod_name] = {
        "certFingerprint": issued.fingerprint,
        "certNotAfter": issued.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    _record_schedule(state, pod_name, csr_document, pool.rotation.grace_period_s)
    _log.info("pool %s/%s: certified attested node %s (%s)", pool.namespace, pool.name, pod_name, issued.fingerprint[:16])
    return {**answer, "log": bundle}


async def certify_pods(
    api: ClusterApi,
    nodes: NodeApi,
    pool: NodePoolSpec,
    pki: pool_pki.PoolPKI,
    pods: Sequence[Mapping[str, Any]],
    state: CertificationState,
    previous: Mapping[str, Mapping[str, Any]] | None = None,
    busy: frozenset[str] = frozenset(),
) -> bool:
    """Log rotated KEM keys, renew due certificates and push a grown log; True to retry soon.

    First certificates come only from :func:`certify_attested`. ``busy``: nodes that
    running sessions use (their renewal waits unless expiry is near).
    """
    previous = previous or {}
    state.grace_s = pool.rotation.grace_period_s
    state.pods_by_ip = {str(p["status"]["podIP"]): p["metadata"]["name"] for p in pods
                        if (p.get("status") or {}).get("podIP") and not is_terminating(p)}
    for pod in pods:
        name = pod["metadata"]["name"]
        if not (is_pod_ready(pod) and not is_terminating(pod)):
            continue
        await _sync_kem_keys(api, nodes, pool, pki, pod, state)
        await _renew_if_due(api, nodes, pki, pool, pod, state, previous.get(name, {}), busy)
    async with state.lock:
        await _persist(api, pool, pki, state)
        size = len(pki.log.entries)
        if size == state.pushed_log_size:
            return False
        bundle = _bundle(pki)
    # Certified nodes (Ready, or certified by this operator a moment ago) get the grown log;
    # a failed push is retried on the next pass.
    delivered = True
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        name = pod["metadata"]["name"]
        if ip and not is_terminating(pod) and (is_pod_ready(pod) or name_certified(state, name)):
            try:
                await nodes.push_log(ip, bundle)
            except NodeCallError as exc:
                delivered = False
                _log.info("pool %s/%s: log push to %s failed: %s", pool.namespace, pool.name, name, exc)
    if delivered:
        state.pushed_log_size = size
    return not delivered


def name_certified(state: CertificationState, name: str) -> bool:
    """Whether this operator has certified ``name`` (it then serves its API over PQ-TLS)."""
    return bool(state.facts.get(name, {}).get("certFingerprint"))
