"""The MPCSession controller: thin I/O steps around the pure :func:`~pqmpc_operator.session_decide.decide`.

One pass is an ordered list of small steps — read the pool, ensure placed, ensure the
plan, collect the parties' reports, ensure preprocessing, finish. Each step performs
the one request the decision made of it (a read, a delivery, the dealing), adds what it
saw to the pass's observations, asks :func:`decide` again and carries out what it
decided (write the status with its Events, count, record evidence, delete). A step the
decision did not ask for does nothing; the lifecycle itself, every phase, reason and
message, lives in :mod:`pqmpc_operator.session_decide`.

Every pass starts from what is stored (the status carries the placement and the plan
generation, the session's Secret the signed plan — :mod:`pqmpc_operator.plan_store`,
written before any party gets it), so an operator restart resumes where it was: a plan
that may or may not have reached every node is re-sent with the next generation, which
supersedes it, and the dealer deals from the stored plan without asking a party for it.

Deleted before it finished: :func:`cancel_session` posts a plan-signed cancel to every
party (best effort, short timeouts), so they stop, release their KEM key fences and
delete the sealed inputs now rather than at the deadline.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from cryptography.exceptions import InvalidSignature

from pqmpc_node.crypto.kemkeys import VerifiedKeys, verify_keys_document
from pqmpc_node.crypto.pki import CertificateError, NodeId
from pqmpc_node.crypto.suites import Suite
from pqmpc_node.dealer import DealerOutput, deal
from pqmpc_node.dealer.size import project_size
from pqmpc_node.plan import PLAN_SIGNATURE_CONTEXT, PlanError, canonical_bytes, parse_signed_plan, sign_cancel
from pqmpc_operator import builders, pool_pki
from pqmpc_operator.certification import CertificationState, ensure_pki
from pqmpc_operator.kube import ClusterApi
from pqmpc_operator.memory import busy_nodes
from pqmpc_operator.metrics import OperatorMetrics
from pqmpc_operator.model import parse_nodepool
from pqmpc_operator.nodeclient import NodeApi, NodeCallError
from pqmpc_operator.plan_store import PlanSecretError, load_plan, plan_secret_name, store_plan
from pqmpc_operator.pool_pki import PoolPKI, own_log_verifier
from pqmpc_operator.quarantine import PoolWatch
from pqmpc_operator.session_decide import (
    ACTIVE,
    Action,
    AskParties,
    CancelAtParties,
    CountPlacementFailure,
    Deal,
    DealingFailed,
    Dealt,
    DeleteSession,
    DeliverPlan,
    ObservedSession,
    PartyUnreachable,
    PlanAccepted,
    PlanLost,
    PlanRefused,
    ReadLoads,
    ReadPods,
    ReadPool,
    RecordEvidence,
    Request,
    Requeue,
    SessionBody,
    SessionStatus,
    TooLarge,
    WriteStatus,
    cancel_target,
    decide,
    session_events,
)
from pqmpc_operator.session_model import SessionSpec
from pqmpc_operator.session_plan import PartyNode, build_signed_plan
from pqmpc_operator.settings import OperatorSettings

__all__ = ["SessionDeps", "cancel_session", "reconcile_session"]

_log = logging.getLogger(__name__)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class SessionDeps:
    """What a session pass needs, passed explicitly (the doors are Protocols: real or :mod:`~pqmpc_operator.testing` fakes)."""

    api: ClusterApi
    nodes: NodeApi
    settings: OperatorSettings
    metrics: OperatorMetrics
    certification: dict[tuple[str, str], CertificationState] = field(default_factory=dict)
    watches: dict[tuple[str, str], PoolWatch] = field(default_factory=dict)
    busy: dict[tuple[str, str], dict[str, frozenset[str]]] = field(default_factory=dict)
    post_event: Callable[[Mapping[str, Any], str, str, str], None] | None = None
    """Posts an Event on the session (body, type, reason, message); None: through kopf."""
    clock: Callable[[], dt.datetime] = field(default_factory=lambda: _utcnow)
    """The time a pass decides at (UTC)."""


@dataclass
class _Pass:
    """One pass over one session: what it observed, what it wrote last, what the decision asks next."""

    deps: SessionDeps
    body: SessionBody
    now: dt.datetime
    observed: ObservedSession
    written: SessionStatus
    status: SessionStatus = field(default_factory=lambda: SessionStatus())
    request: Request | None = None
    stopped: bool = False
    wait: float | None = None

    @property
    def namespace(self) -> str:
        return self.body["metadata"]["namespace"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    @property
    def pool_name(self) -> str:
        return str((self.body.get("spec") or {}).get("poolRef", ""))

    def certification(self) -> CertificationState:
        return self.deps.certification.setdefault((self.namespace, self.pool_name), CertificationState())

    async def decide(self) -> None:
        """Ask the pure decision what follows from what this pass has observed, and do its effects."""
        self.status, actions = decide(self.observed, self.now, api_port=self.deps.settings.api_port)
        self.request = None
        for action in actions:
            await _apply(self, action)


async def reconcile_session(deps: SessionDeps, *, namespace: str, name: str) -> float | None:
    """One pass for one MPCSession; returns seconds until it wants to run again (None: never)."""
    body = await deps.api.get_session(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    stored = cast(SessionBody, body)
    run = _Pass(deps, stored, deps.clock(), ObservedSession(body=stored),
                written=stored.get("status") or SessionStatus())
    await run.decide()  # finished (TTL), past its deadline, or the pool to read
    for step in _STEPS:
        if run.stopped:
            break
        await step(run)
    return run.wait


async def _read_pool(run: _Pass) -> None:
    """The NodePool named by ``spec.poolRef`` (missing: Pending; unusable spec: Failed)."""
    if isinstance(run.request, ReadPool):
        run.observed["pool"] = await run.deps.api.get_pool(run.namespace, run.pool_name)
        await run.decide()


async def _ensure_placed(run: _Pass) -> None:
    """Loads of the nodes when the decision places the parties, then the pool's pod IPs."""
    if isinstance(run.request, ReadLoads):
        run.observed["loads"] = await _loads(run.deps, run.namespace, run.name)
        await run.decide()
    if isinstance(run.request, ReadPods):
        # Addresses come from the pods the API server reports, never from what nodes say.
        pool = run.request.admission.pool
        run.observed["pod_ips"] = await _pod_ips(run.deps, run.namespace, run.pool_name, pool.uid)
        await run.decide()


async def _ensure_plan(run: _Pass) -> None:
    """Sign the plan for the decided generation, keep it in the session's Secret, then post it to every party.

    Persist before distribute: the Secret is written before any party gets the plan, so
    the dealer finds every plan a party may hold (a failed write fails the pass, and no
    party has seen this generation).
    """
    request = run.request
    if not isinstance(request, DeliverPlan):
        return
    admission = request.admission
    pki = await ensure_pki(run.deps.api, admission.pool, run.certification())
    # Record the generation first: if this pass dies after some parties got the plan,
    # the next one sends generation + 1, which supersedes it at every party.
    await _write(run, run.status)
    try:
        parties = await _party_nodes(run.deps, pool_ns=run.namespace, pool_name=run.pool_name,
                                     placed=list(request.placement), pod_ips=run.observed.get("pod_ips") or {},
                                     pki=pki, suite=admission.suite, now=run.now)
        signed = build_signed_plan(
            admission.spec, parties, suite=admission.suite, signer=pki.plan_signer, generation=request.generation,
            now=run.now, deadline_at=admission.deadline_at, rng=os.urandom, inputs_held_by=request.inputs_held_by,
        )
        blob = canonical_bytes(signed.to_json())
        await store_plan(run.deps.api, run.body, blob, generation=request.generation, digest=signed.plan.digest())
        for p in parties:
            await run.deps.nodes.post_plan(p.address, blob)
    except NodeCallError as exc:
        run.observed["delivery"] = PlanRefused(str(exc))
    else:
        run.observed["delivery"] = PlanAccepted(signed.plan.digest(), len(parties))
        run.deps.metrics.sessions_planned.labels(preprocessing=admission.spec.preprocessing).inc()
    await run.decide()


async def _collect_reports(run: _Pass) -> None:
    """Every placed party's own report of the session (or why it could not be asked)."""
    request = run.request
    if not isinstance(request, AskParties):
        return
    ips = run.observed.get("pod_ips") or {}
    replies: dict[str, Mapping[str, Any] | PartyUnreachable] = {}
    for node in request.nodes:
        ip = ips.get(node)
        if not ip:
            replies[node] = PartyUnreachable("no pod IP")
            continue
        try:
            replies[node] = await run.deps.nodes.session(ip, request.session_id)
        except NodeCallError as exc:
            replies[node] = PartyUnreachable(str(exc))
    run.observed["replies"] = replies
    await run.decide()


async def _ensure_preprocessing(run: _Pass) -> None:
    """Deal each party its preprocessing once every input is in (the operator is the trusted dealer)."""
    request = run.request
    if not isinstance(request, Deal):
        return
    admission = request.admission
    try:
        too_large = await _deal(run.deps, session=run.body, spec=admission.spec,
                                pod_ips=run.observed.get("pod_ips") or {}, pool=admission.pool,
                                state=run.certification(), suite=admission.suite, rows=request.rows,
                                digest=request.digest)
    except PlanSecretError as exc:
        run.observed["dealing"] = PlanLost(str(exc))
    except (NodeCallError, ValueError) as exc:
        run.observed["dealing"] = DealingFailed(str(exc))
    else:
        run.observed["dealing"] = too_large or Dealt()
    await run.decide()


async def _finish(run: _Pass) -> None:
    """Every pass ends with a requeue or a deletion; a request no step served is a bug."""
    if not run.stopped:
        raise RuntimeError(f"session {run.namespace}/{run.name}: the decision asked for {run.request!r}, "
                           "which no step serves")


_STEPS: tuple[Callable[[_Pass], Awaitable[None]], ...] = (
    _read_pool, _ensure_placed, _ensure_plan, _collect_reports, _ensure_preprocessing, _finish,
)


async def _apply(run: _Pass, action: Action) -> None:
    """Carry out one action of a decision (a request is left for the step that serves it)."""
    deps = run.deps
    if isinstance(action, WriteStatus):
        await _write(run, run.status)
    elif isinstance(action, CountPlacementFailure):
        deps.metrics.placement_failures.labels(reason=action.reason).inc()
    elif isinstance(action, CancelAtParties):
        await _cancel_with_reason(run, action)
    elif isinstance(action, RecordEvidence):
        deps.watches.setdefault((run.namespace, action.pool), PoolWatch()).evidence.append(action.evidence)
    elif isinstance(action, DeleteSession):
        _log.info("session %s/%s finished %ds ago: deleting (ttlSecondsAfterFinished)", run.namespace, run.name,
                  action.ttl)
        await deps.api.delete_session(run.namespace, run.name)
        deps.metrics.observe_session(run.namespace, run.name, None)  # no series outlives the session
        run.stopped, run.wait = True, None
    elif isinstance(action, Requeue):
        run.stopped, run.wait = True, action.seconds
    else:
        run.request = action


async def _write(run: _Pass, status: SessionStatus) -> None:
    """Write ``status`` if it changed since the last write, with its Events; keep metrics and the busy map."""
    deps = run.deps
    namespace, name = run.namespace, run.name
    deps.metrics.observe_session(namespace, name, str(status.get("phase") or "Pending"))
    # Which nodes running sessions use (certificate renewal and roll-outs wait for them).
    me = f"{namespace}/{name}"
    used = busy_nodes(status)
    if used is not None:
        deps.busy.setdefault((namespace, run.pool_name), {})[me] = used
    else:
        deps.busy.get((namespace, run.pool_name), {}).pop(me, None)
    old = run.written
    if status != old:
        await deps.api.patch_session_status(namespace, name, status)
        if status.get("phase") != old.get("phase"):
            deps.metrics.session_phase_changes.labels(phase=str(status.get("phase"))).inc()
    post = deps.post_event or _kopf_event
    for event in session_events(old, status):
        post(run.body, event.type, event.reason, event.message[:1000])
    run.written = status


def _kopf_event(body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
    kopf.event(body, type=kind, reason=reason, message=message)  # type: ignore[arg-type]


async def _loads(deps: SessionDeps, namespace: str, me: str) -> dict[str, int]:
    loads: dict[str, int] = {}
    for other in await deps.api.list_sessions(namespace):
        st = other.get("status") or {}
        if other["metadata"]["name"] == me or st.get("phase") not in ACTIVE:
            continue
        for p in st.get("placement") or []:
            loads[str(p.get("node"))] = loads.get(str(p.get("node")), 0) + 1
    return loads


def _verified_kem_key(doc: Mapping[str, Any], node: str, pki: PoolPKI, suite: Suite, *, now: dt.datetime,
                      epoch: int | None = None) -> VerifiedKeys:
    """A node's keys document verified against the pool CA and the operator's own log, or NodeCallError.

    Whoever answers at a pod IP could serve the document; nothing is sealed to a KEM key
    until CA -> node certificate -> KEM key certificate -> log inclusion holds
    (:func:`~pqmpc_node.crypto.kemkeys.verify_keys_document`).
    """
    try:
        return verify_keys_document(doc, node_id=NodeId(node), ca_certificate=pki.ca.certificate, suite=suite,
                                    log=own_log_verifier(pki, now=now), now=now, epoch=epoch)
    except CertificateError as exc:
        raise NodeCallError(f"node {node}'s keys do not verify ({getattr(exc, 'reason', 'bad_keys')}): {exc}; "
                            "nothing was sealed to them") from None


async def _party_nodes(
    deps: SessionDeps, *, pool_ns: str, pool_name: str, placed: list[Mapping[str, Any]], pod_ips: Mapping[str, str],
    pki: PoolPKI, suite: Suite, now: dt.datetime,
) -> list[PartyNode]:
    parties = []
    for p in placed:
        node = str(p["node"])
        ip = pod_ips.get(node)
        if not ip:
            raise NodeCallError(f"node {node} has no pod IP (not running)")
        keys = _verified_kem_key(await deps.nodes.keys(ip), node, pki, suite, now=now)
        parties.append(PartyNode(
            node_id=node, address=ip,
            dns_name=f"{node}.{builders.headless_service_name(pool_name)}.{pool_ns}.svc",
            peer_port=deps.settings.peer_port, api_port=deps.settings.api_port,
            cert_fingerprint=keys.node.fingerprint, kem_epoch=keys.kem.epoch, kem_public_key=keys.kem.public_bytes,
        ))
    return parties


async def cancel_session(deps: SessionDeps, body: Mapping[str, Any], *, timeout_s: float = 2.0) -> dict[str, str]:
    """Ask every party of a deleted, unfinished MPCSession to cancel it; best effort, never raises for a node.

    Returns what each party answered (node name -> outcome line), empty when nothing
    was to be cancelled (never placed, plan never delivered, already finished).
    """
    meta = body["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    target = cancel_target(body)
    if target is None:
        return {}
    pool_body = await deps.api.get_pool(namespace, target.pool)
    state = deps.certification.setdefault((namespace, target.pool), CertificationState())
    if pool_body is None or (state.pki is None and await deps.api.read_secret_data(
            namespace, pool_pki.pki_secret_name(target.pool)) is None):
        # Without the pool's plan signer no node would believe a cancel (and a fresh one must not be made here).
        _log.warning("session %s/%s deleted: NodePool %s or its PKI is gone; parties keep the session until its "
                     "deadline", namespace, name, target.pool)
        return {}
    pool = parse_nodepool(pool_body)
    pki = await ensure_pki(deps.api, pool, state)
    signed = sign_cancel(target.session_id, target.plan_digest, key=pki.plan_signer,
                         now=dt.datetime.now(dt.timezone.utc))
    ips = {str(n.get("name")): str(n.get("podIP") or "") for n in (pool_body.get("status") or {}).get("nodes") or []}
    ips.update(await _pod_ips(deps, namespace, target.pool, pool.uid))
    outcomes = await _post_cancel(deps, ips, target.session_id, target.nodes, signed, timeout_s=timeout_s)
    # No Event: the object is going away; the log is the record.
    _log.info("session %s/%s deleted: cancel of %s at its parties: %s", namespace, name, target.session_id,
              "; ".join(f"{n}: {o}" for n, o in outcomes.items()))
    return outcomes


async def _stored_plan(deps: SessionDeps, session: Mapping[str, Any], *, pki: PoolPKI, digest: str) -> Any:
    """The plan kept in the session's Secret, checked: the digest status names, our pool's signature.

    Anything else (missing, foreign, unreadable, another digest, a bad signature) is
    :class:`PlanSecretError`: the session is re-planned rather than dealt.
    """
    meta = session["metadata"]
    name = plan_secret_name(str(meta["name"]))
    blob = await load_plan(deps.api, namespace=str(meta["namespace"]), session=str(meta["name"]),
                           session_uid=str(meta.get("uid", "")))
    try:
        raw, signature, plan = parse_signed_plan(blob)
    except PlanError as exc:
        raise PlanSecretError(f"Secret {name} holds no readable plan: {exc}") from None
    if plan.digest() != digest:
        raise PlanSecretError(f"Secret {name} holds plan {plan.digest()[:12]}, status says {digest[:12]}")
    try:
        pki.plan_signer.public_key().verify(signature, canonical_bytes(raw), PLAN_SIGNATURE_CONTEXT)
    except InvalidSignature:
        raise PlanSecretError(f"Secret {name}: the plan is not signed by the pool's plan signer") from None
    return plan


_DEALING = threading.Lock()
"""One deal at a time: a deal peaks at several times its body in memory, so deals of several sessions
at once would add up past the chart's memory limit (each alone is capped by the size projection)."""


def _deal_one_at_a_time(*args: Any, **kwargs: Any) -> DealerOutput:
    """:func:`~pqmpc_node.dealer.deal` under :data:`_DEALING` (runs in a worker thread)."""
    with _DEALING:
        return deal(*args, **kwargs)


async def _deal(
    deps: SessionDeps, *, session: Mapping[str, Any], spec: SessionSpec, pod_ips: Mapping[str, str],
    pool: Any, state: CertificationState, suite: Any, rows: Mapping[str, int], digest: str,
) -> TooLarge | None:
    """Deal each party its own preprocessing and post it (the operator is the trusted dealer); None when dealt.

    The plan comes from the session's own Secret (written before any party got it) and
    must be the one this operator signed (digest from status and our signature), so a
    restarted operator deals for the right plan without asking any party for it.

    First the body size is projected from a few rows (:mod:`pqmpc_node.dealer.size`): a
    session whose body would exceed ``settings.preprocessing_limit`` is not dealt at all
    (:class:`TooLarge`): dealing it would cost minutes and gigabytes, and no node would take it.
    """
    pki = await ensure_pki(deps.api, pool, state)
    plan = await _stored_plan(deps, session, pki=pki, digest=digest)
    limit = deps.settings.preprocessing_limit
    projection = await asyncio.to_thread(project_size, plan)
    projected = projection.projected_bytes(rows)
    if projected > limit:
        _log.warning("session %s: projected preprocessing body %d bytes > limit %d for rows %s: not dealt",
                     spec.session_id, projected, limit, dict(rows))
        return TooLarge(projected, limit, projection.rows_that_fit(limit))
    keys = {}
    now = dt.datetime.now(dt.timezone.utc)
    for party in plan.parties:
        doc = await deps.nodes.keys(pod_ips.get(party.node_id, ""))
        verified = _verified_kem_key(doc, party.node_id, pki, suite, now=now, epoch=party.kem_epoch)
        if verified.node.fingerprint != party.cert_fingerprint:
            raise NodeCallError(f"node {party.node_id} presents a certificate other than the plan's; nothing was sealed")
        keys[party.node_id] = (verified.kem.epoch, verified.kem.public_key)
    started = time.perf_counter()
    dealt = await asyncio.to_thread(_deal_one_at_a_time, plan, dict(rows), suite=suite, signer_key=pki.plan_signer,
                                    node_kem_keys=keys)
    _log.info("session %s: dealt preprocessing for rows %s in %.2fs", spec.session_id, dict(rows), time.perf_counter() - started)
    for party in plan.parties:
        await deps.nodes.post_preprocessing(pod_ips.get(party.node_id, ""), spec.session_id, dealt.bodies[party.node_id])
    return None


async def _cancel_with_reason(run: _Pass, action: CancelAtParties) -> None:
    """The operator ends the session itself: a plan-signed cancel with its reason at every party (best effort)."""
    pki = await ensure_pki(run.deps.api, action.admission.pool, run.certification())
    signed = sign_cancel(action.session_id, action.digest, key=pki.plan_signer, now=dt.datetime.now(dt.timezone.utc),
                         reason=action.reason, message=action.message)
    outcomes = await _post_cancel(run.deps, run.observed.get("pod_ips") or {}, action.session_id, action.nodes, signed)
    _log.info("session %s/%s: %s: cancel at its parties: %s", run.namespace, run.name, action.reason,
              "; ".join(f"{n}: {o}" for n, o in outcomes.items()))


async def _post_cancel(deps: SessionDeps, ips: Mapping[str, str], session_id: str, nodes: tuple[str, ...],
                       signed: bytes, *, timeout_s: float = 2.0) -> dict[str, str]:
    """Post one signed cancel to each node; node name -> outcome line (never raises for a node)."""

    async def one(node: str) -> str:
        if not ips.get(node):
            return "no pod IP (not running)"
        try:
            doc = await deps.nodes.cancel(ips[node], session_id, signed, timeout=timeout_s)
        except NodeCallError as exc:
            return f"not cancelled: {exc}"
        return f"{doc.get('phase')}/{doc.get('reason')}" + (" (already finished)" if doc.get("alreadyFinished") else "")

    return dict(zip(nodes, await asyncio.gather(*(one(n) for n in nodes)), strict=True))


async def _pod_ips(deps: SessionDeps, namespace: str, pool: str, uid: str) -> dict[str, str]:
    pods = await deps.api.list_pool_pods(namespace, pool, uid)
    ips = {
        p["metadata"]["name"]: str((p.get("status") or {}).get("podIP") or "")
        for p in pods if not p["metadata"].get("deletionTimestamp")
    }
    # The node client checks the node at each address against this map (after a restart
    # the pool loop may not have filled it yet).
    state = deps.certification.setdefault((namespace, pool), CertificationState())
    state.pods_by_ip.update({ip: name for name, ip in ips.items() if ip})
    return ips
