"""The MPCSession reconcile pass (I/O shell around placement, plan building and progress).

Lifecycle (status.phase): Pending -> Placing -> Preprocessing -> AwaitingInputs ->
Computing -> Succeeded | Failed.

- Pending: the pool is read and the spec checked; an unusable spec fails at once.
- Placing: the pure solver places the parties on ready, certified, unquarantined nodes;
  an infeasible request stays here (condition Placed=False with the solver's
  explanation) and is retried until the deadline.
- Preprocessing: each placed node's current certified KEM key is read, the plan is
  built, dealt (dealer seed sealed per party), signed and posted to every party.
- AwaitingInputs / Computing: the parties' own reports are folded into the status
  (per-owner input progress), until they all succeed or one fails. A lost party fails
  an additive session; a Shamir session carries on while ``t + 1`` parties remain.
- Succeeded / Failed: ``completionTime`` is set; after ``ttlSecondsAfterFinished`` the
  MPCSession is deleted.
- Deleted before it finished: :func:`cancel_session` posts a plan-signed cancel to every
  party (best effort, short timeouts), so they stop, release their KEM key fences and
  delete the sealed inputs now rather than at the deadline.

Every pass starts from what is stored (status carries the placement and the plan
generation), so an operator restart resumes where it was: a plan that may or may not
have reached every node is re-sent with the next generation, which supersedes it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import kopf

from pqmpc_node.crypto.kemkeys import VerifiedKeys, verify_keys_document
from pqmpc_node.crypto.pki import CertificateError, NodeId
from pqmpc_node.crypto.suites import Suite, get_suite
from pqmpc_node.dealing import deal
from pqmpc_node.plan import PLAN_SIGNATURE_CONTEXT, canonical_bytes, parse_signed_plan, sign_cancel
from pqmpc_operator import builders, placement, pool_pki
from pqmpc_operator.pool_pki import PoolPKI, own_log_verifier
from pqmpc_operator.certification import CertificationState, ensure_pki
from pqmpc_operator.anomaly import SessionEvidence
from pqmpc_operator.kube import KubeApi
from pqmpc_operator.quarantine import PoolWatch
from pqmpc_operator.metrics import OperatorMetrics
from pqmpc_operator.model import SpecError, parse_duration, parse_nodepool
from pqmpc_operator.nodeclient import NodeCallError, NodeClient
from pqmpc_operator.session_model import SessionSpec, parse_mpcsession, session_id_of
from pqmpc_operator.session_plan import PartyNode, build_signed_plan, session_progress
from pqmpc_operator.settings import OperatorSettings
from pqmpc_operator.status import Condition, merge_conditions

__all__ = ["SessionDeps", "cancel_session", "reconcile_session"]

_log = logging.getLogger(__name__)
ACTIVE = ("Placing", "Preprocessing", "AwaitingInputs", "Computing")
FINISHED = ("Succeeded", "Failed")
# A party unreachable this long is lost (an additive session then fails).
LOST_AFTER_S = 20.0


@dataclass
class SessionDeps:
    """What a session pass needs, passed explicitly."""

    api: KubeApi
    nodes: NodeClient
    settings: OperatorSettings
    metrics: OperatorMetrics
    certification: dict[tuple[str, str], CertificationState]
    watches: dict[tuple[str, str], PoolWatch]
    http: httpx.AsyncClient
    busy: dict[tuple[str, str], dict[str, frozenset[str]]]


def _ts(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)


def _event(body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
    kopf.event(body, type=kind, reason=reason, message=message[:1000])  # type: ignore[arg-type]


class _Outcome:
    """The status fields a pass decided to change, and the events that go with them."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body
        self.old = dict(body.get("status") or {})
        self.new = dict(self.old)
        self.conditions: dict[str, tuple[str, str, str]] = {}
        self.events: list[tuple[str, str, str]] = []

    def phase(self, phase: str, reason: str, message: str, *, warning: bool = False) -> None:
        if self.new.get("phase") != phase:
            self.events.append(("Warning" if warning else "Normal", reason, message))
        self.new["phase"] = phase
        self.new["reason"] = reason
        self.new["message"] = message

    def condition(self, ctype: str, status: str, reason: str, message: str) -> None:
        self.conditions[ctype] = (status, reason, message)


async def _write(deps: SessionDeps, out: _Outcome, now: dt.datetime) -> None:
    meta = out.body["metadata"]
    generation = int(meta.get("generation", 1))
    conds = {c["type"]: c for c in out.old.get("conditions") or []}
    wanted = [Condition(t, s, r, m) for t, (s, r, m) in out.conditions.items()]  # type: ignore[arg-type]
    merged = {c["type"]: c for c in merge_conditions(list(conds.values()), wanted, generation, _ts(now))}
    out.new["conditions"] = [merged.get(t) or conds[t] for t in sorted(set(conds) | set(merged))]
    out.new["observedGeneration"] = generation
    deps.metrics.observe_session(meta["namespace"], meta["name"], str(out.new.get("phase") or "Pending"))
    # Which nodes running sessions use (certificate renewal and roll-outs wait for them).
    pool_key = (meta["namespace"], str((out.body.get("spec") or {}).get("poolRef", "")))
    me = f"{meta['namespace']}/{meta['name']}"
    if out.new.get("phase") in ACTIVE and out.new.get("placement"):
        deps.busy.setdefault(pool_key, {})[me] = frozenset(str(p["node"]) for p in out.new["placement"])
    else:
        deps.busy.get(pool_key, {}).pop(me, None)
    if out.new != out.old:
        await deps.api.patch_session_status(meta["namespace"], meta["name"], out.new)
        if out.new.get("phase") != out.old.get("phase"):
            deps.metrics.session_phase_changes.labels(phase=str(out.new.get("phase"))).inc()
    for kind, reason, message in out.events:
        _event(out.body, kind, reason, message)


def _pods_by_name(pool_body: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(n.get("name")): n for n in (pool_body.get("status") or {}).get("nodes") or []}


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
    deps: SessionDeps, pool_ns: str, pool_name: str, placed: list[Mapping[str, Any]], pod_ips: Mapping[str, str],
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


async def reconcile_session(deps: SessionDeps, namespace: str, name: str) -> float | None:
    """One pass for one MPCSession; returns seconds until it wants to run again."""
    body = await deps.api.get_session(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    now = dt.datetime.now(dt.timezone.utc)
    out = _Outcome(body)
    status = out.old
    phase = status.get("phase") or "Pending"
    spec_raw = body.get("spec") or {}

    if phase in FINISHED:
        done = _parse_ts(status.get("completionTime")) or now
        ttl = int(spec_raw.get("ttlSecondsAfterFinished", 3600))
        left = (done + dt.timedelta(seconds=ttl) - now).total_seconds()
        if left <= 0:
            _log.info("session %s/%s finished %ds ago: deleting (ttlSecondsAfterFinished)", namespace, name, ttl)
            await deps.api.delete_session(namespace, name)
            return None
        return min(left, 3600.0)

    created = _parse_ts(body["metadata"].get("creationTimestamp")) or now
    try:
        deadline_s = parse_duration(spec_raw.get("deadline", "1h"), "deadline")
    except SpecError:
        deadline_s = 3600.0
    deadline_at = created + dt.timedelta(seconds=deadline_s)
    if "startTime" not in status:
        out.new["startTime"] = _ts(now)
    out.new["sessionId"] = session_id_of(namespace, name, body["metadata"].get("uid", ""))

    def fail(reason: str, message: str) -> None:
        out.phase("Failed", reason, message, warning=True)
        out.condition("Ready", "False", reason, message)
        out.new["completionTime"] = _ts(now)

    if now >= deadline_at:
        fail("DeadlineExceeded", f"not finished within spec.deadline ({spec_raw.get('deadline', '1h')}) of creation; "
             "create a new session with a longer deadline")
        await _write(deps, out, now)
        return 1.0

    pool_name = str(spec_raw.get("poolRef", ""))
    pool_body = await deps.api.get_pool(namespace, pool_name)
    if pool_body is None:
        out.phase("Pending", "PoolNotFound", f"NodePool {namespace}/{pool_name} does not exist; create it or fix spec.poolRef")
        out.condition("Ready", "False", "PoolNotFound", out.new["message"])
        await _write(deps, out, now)
        return 5.0
    try:
        pool = parse_nodepool(pool_body)
        suite = get_suite(pool.suite.value)
        spec = parse_mpcsession(body, suite)
    except SpecError as exc:
        fail("InvalidSpec", str(exc))
        await _write(deps, out, now)
        return 1.0

    state = deps.certification.setdefault((namespace, pool_name), CertificationState())
    nodes_status = _pods_by_name(pool_body)

    if phase in ("Pending", "Placing") or not status.get("placement"):
        loads = await _loads(deps, namespace, name)
        eligible = [e for e in nodes_status.values() if e.get("certFingerprint")]
        candidates = placement.candidates_from_pool_status(eligible, pool.groups, loads)
        result = placement.place_parties(candidates, spec.placement)
        if isinstance(result, placement.PlacementInfeasible):
            deps.metrics.placement_failures.labels(reason=result.reason).inc()
            if out.old.get("reason") != result.reason:
                out.events.append(("Warning", result.reason, result.message))
            out.phase("Placing", result.reason, result.message)
            out.condition("Placed", "False", result.reason, result.message)
            await _write(deps, out, now)
            return 5.0
        out.new["placement"] = result.to_status()
        out.phase("Preprocessing", "Placed", "placed on " + ", ".join(str(n) for n in result.nodes)
                  + "; signing and sending the plan")
        out.condition("Placed", "True", "Placed", out.new["message"])
        phase = "Preprocessing"

    placed: list[Mapping[str, Any]] = list(out.new["placement"])
    # Addresses come from the pods the API server reports, never from what nodes say.
    pod_ips = await _pod_ips(deps, namespace, pool_name, pool.uid)

    if not status.get("planDigest"):
        pki = await ensure_pki(deps.api, pool, state)
        generation = int(status.get("planGeneration", 0)) + 1
        # Record the generation first: if this pass dies after some parties got the plan,
        # the next one sends generation + 1, which supersedes it at every party.
        out.new["planGeneration"] = generation
        await _write(deps, out, now)
        out = _Outcome({**body, "status": out.new})
        try:
            parties = await _party_nodes(deps, namespace, pool_name, placed, pod_ips, pki, suite, now)
            signed = build_signed_plan(
                spec, parties, suite=suite, signer=pki.plan_signer, generation=generation, now=now,
                deadline_at=deadline_at, rng=os.urandom,
            )
            blob = canonical_bytes(signed.to_json())
            for p in parties:
                await deps.nodes.post_plan(p.address, blob)
        except NodeCallError as exc:
            out.phase("Preprocessing", "PlanNotDelivered", f"retrying: {exc}")
            out.condition("PlanDelivered", "False", "PlanNotDelivered", str(exc))
            out.new["planGeneration"] = generation
            await _write(deps, out, now)
            return 2.0
        out.new["planGeneration"] = generation
        out.new["planDigest"] = signed.plan.digest()
        out.phase("AwaitingInputs", "PlanDelivered",
                  f"signed plan (generation {generation}) accepted by all {len(parties)} parties; "
                  f"data owners can submit to session {spec.session_id}")
        out.condition("PlanDelivered", "True", "PlanDelivered", out.new["message"])
        out.new["inputs"] = [{"owner": i.owner, "role": i.role, "received": False, "parties": 0} for i in spec.inputs]
        out.new["preprocessing"] = _preprocessing_status(spec)
        deps.metrics.sessions_planned.labels(preprocessing=spec.preprocessing).inc()
        out.new["result"] = _result_hint(spec, placed, pod_ips, deps.settings.api_port)
        await _write(deps, out, now)
        return 1.0

    # AwaitingInputs / Computing: ask every party.
    reports: dict[str, Mapping[str, Any] | None] = {}
    lost: list[str] = []
    since = dict(status.get("unreachableSince") or {})
    for entry in placed:
        node = str(entry["node"])
        ip = pod_ips.get(node)
        try:
            if not ip:
                raise NodeCallError("no pod IP")
            reports[node] = await deps.nodes.session(ip, spec.session_id)
            since.pop(node, None)
        except NodeCallError as exc:
            reports[node] = None
            first = _parse_ts(since.get(node)) or now
            since.setdefault(node, _ts(first))
            if (now - first).total_seconds() >= LOST_AFTER_S or not ip:
                lost.append(f"party {entry['party']} ({node}): {exc}")
    out.new["unreachableSince"] = since
    progress = session_progress(spec, reports)
    # Input progress only grows: parties drop the sealed inputs once a session ends.
    before = {i.get("owner"): i for i in status.get("inputs") or []}
    out.new["inputs"] = [
        {**i, "received": bool(i["received"] or before.get(i["owner"], {}).get("received")),
         "parties": max(int(i["parties"]), int(before.get(i["owner"], {}).get("parties", 0)))}
        for i in progress.inputs
    ]
    if progress.input_rows is not None and status.get("dealtDigest") != status.get("planDigest") and not lost:
        # The dealer's turn: every input is in, the row counts are known.
        try:
            await _deal(deps, spec, placed, pod_ips, pool, state, suite, progress.input_rows, str(status.get("planDigest")))
            out.new["dealtDigest"] = status.get("planDigest")
            out.condition("Preprocessed", "True", "Dealt", f"each of {len(placed)} parties got its own sealed material")
        except (NodeCallError, ValueError) as exc:
            out.condition("Preprocessed", "False", "DealingFailed", f"retrying: {exc}")
    if lost and spec.sharing == "additive" and progress.phase not in FINISHED:
        fail("NodeLost", "; ".join(lost) + " — additive sharing needs every party; create a new session "
             "(owners resubmit their inputs)")
    elif lost and spec.sharing == "shamir" and spec.preprocessing == "prss" and progress.phase not in FINISHED \
            and len(placed) - len(lost) < 2 * spec.threshold + 1:
        fail("NodeLost", "; ".join(lost) + f" — fewer than 2t+1={2 * spec.threshold + 1} parties remain, and "
             "dealer-free multiplication needs that many (a session survives a lost node only where n >= 2t+2); "
             "create a new session (owners resubmit their inputs)")
    elif lost and spec.sharing == "shamir" and len(placed) - len(lost) < spec.threshold + 1:
        fail("NodeLost", "; ".join(lost) + f" — fewer than t+1={spec.threshold + 1} parties remain")
    elif progress.phase == "Failed":
        fail(progress.reason, progress.message or f"a party failed: {progress.reason}")
    if out.new.get("phase") in FINISHED:
        # Behavioural evidence for the pool's anomaly scoring (who ran it, who failed how).
        watch = deps.watches.setdefault((namespace, pool_name), PoolWatch())
        party_nodes = [str(e["node"]) for e in sorted(placed, key=lambda e: int(e["party"]))]
        watch.evidence.append(SessionEvidence.from_reports(
            spec.session_id, party_nodes, {n: r for n, r in reports.items() if r is not None}, finished_at=now.timestamp()))
    elif progress.phase == "Succeeded":
        out.phase("Succeeded", "Completed", progress.message)
        out.condition("Ready", "True", "Completed", progress.message)
        out.new["completionTime"] = _ts(now)
        hint = _result_hint(spec, placed, pod_ips, deps.settings.api_port)
        hint["outputsReady"] = list(progress.outputs_ready)
        if progress.rejected_rows is not None:
            hint["rejectedRows"] = progress.rejected_rows
        out.new["result"] = hint
    else:
        out.phase(progress.phase, progress.reason, progress.message)
        if lost:
            out.condition("Degraded", "True", "PartyLost", "; ".join(lost))
    await _write(deps, out, now)
    return 1.0


async def cancel_session(deps: SessionDeps, body: Mapping[str, Any], *, timeout_s: float = 2.0) -> dict[str, str]:
    """Ask every party of a deleted, unfinished MPCSession to cancel it; best effort, never raises for a node.

    Returns what each party answered (node name -> outcome line), empty when nothing
    was to be cancelled (never placed, plan never delivered, already finished).
    """
    meta, status = body["metadata"], dict(body.get("status") or {})
    namespace, name = str(meta["namespace"]), str(meta["name"])
    session_id, digest = str(status.get("sessionId") or ""), str(status.get("planDigest") or "")
    placed = [str(p["node"]) for p in status.get("placement") or []]
    if status.get("phase") in FINISHED or not (session_id and digest and placed):
        return {}
    pool_name = str((body.get("spec") or {}).get("poolRef", ""))
    pool_body = await deps.api.get_pool(namespace, pool_name)
    state = deps.certification.setdefault((namespace, pool_name), CertificationState())
    if pool_body is None or (state.pki is None and await deps.api.read_secret_data(
            namespace, pool_pki.pki_secret_name(pool_name)) is None):
        # Without the pool's plan signer no node would believe a cancel (and a fresh one must not be made here).
        _log.warning("session %s/%s deleted: NodePool %s or its PKI is gone; parties keep the session until its "
                     "deadline", namespace, name, pool_name)
        return {}
    pool = parse_nodepool(pool_body)
    pki = await ensure_pki(deps.api, pool, state)
    signed = sign_cancel(session_id, digest, key=pki.plan_signer, now=dt.datetime.now(dt.timezone.utc))
    ips = {n: str(e.get("podIP") or "") for n, e in _pods_by_name(pool_body).items()}
    ips.update(await _pod_ips(deps, namespace, pool_name, pool.uid))

    async def one(node: str) -> str:
        if not ips.get(node):
            return "no pod IP (not running)"
        try:
            doc = await deps.nodes.cancel(ips[node], session_id, signed, timeout=timeout_s)
        except NodeCallError as exc:
            return f"not cancelled: {exc}"
        return f"{doc.get('phase')}/{doc.get('reason')}" + (" (already finished)" if doc.get("alreadyFinished") else "")

    outcomes = dict(zip(placed, await asyncio.gather(*(one(n) for n in placed))))
    # No Event: the object is going away; the log is the record.
    _log.info("session %s/%s deleted: cancel of %s at its parties: %s", namespace, name, session_id,
              "; ".join(f"{n}: {o}" for n, o in outcomes.items()))
    return outcomes


def _preprocessing_status(spec: SessionSpec) -> dict[str, str]:
    """``status.preprocessing``: which provider runs and, for ``auto``, why."""
    dealer = spec.preprocessing == "dealer"
    return {"provider": spec.preprocessing, "dealerFree": "false" if dealer else "true",
            "note": spec.preprocessing_note or ("the operator deals (trusted dealer)" if dealer
                                                else "made by the parties; the operator sees no key, seed or triple")}


async def _deal(
    deps: SessionDeps, spec: SessionSpec, placed: list[Mapping[str, Any]], pod_ips: Mapping[str, str],
    pool: Any, state: CertificationState, suite: Any, rows: Mapping[str, int], digest: str,
) -> None:
    """Deal each party its own preprocessing and post it (the operator is the trusted dealer).

    The plan is read back from a party and must be the one this operator signed (digest
    from status and our signature), so a restarted operator deals for the right plan.
    """
    pki = await ensure_pki(deps.api, pool, state)
    first_ip = pod_ips.get(str(placed[0]["node"]), "")
    raw, signature, plan = parse_signed_plan(await deps.nodes.plan(first_ip, spec.session_id))
    if plan.digest() != digest:
        raise ValueError(f"party 0 holds plan {plan.digest()[:12]}, status says {digest[:12]}; re-planning")
    pki.plan_signer.public_key().verify(signature, canonical_bytes(raw), PLAN_SIGNATURE_CONTEXT)
    keys = {}
    now = dt.datetime.now(dt.timezone.utc)
    for party in plan.parties:
        doc = await deps.nodes.keys(pod_ips.get(party.node_id, ""))
        verified = _verified_kem_key(doc, party.node_id, pki, suite, now=now, epoch=party.kem_epoch)
        if verified.node.fingerprint != party.cert_fingerprint:
            raise NodeCallError(f"node {party.node_id} presents a certificate other than the plan's; nothing was sealed")
        keys[party.node_id] = (verified.kem.epoch, verified.kem.public_key)
    started = time.perf_counter()
    dealt = await asyncio.to_thread(deal, plan, dict(rows), suite=suite, signer_key=pki.plan_signer, node_kem_keys=keys)
    _log.info("session %s: dealt preprocessing for rows %s in %.2fs", spec.session_id, dict(rows), time.perf_counter() - started)
    for party in plan.parties:
        await deps.nodes.post_preprocessing(pod_ips.get(party.node_id, ""), spec.session_id, dealt.bodies[party.node_id])


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


def _result_hint(spec: SessionSpec, placed: list[Mapping[str, Any]], ips: Mapping[str, str], port: int) -> dict[str, Any]:
    """Where each recipient fetches its sealed outputs (results never appear in status)."""
    urls = [f"https://{ips.get(str(p['node']), '')}:{port}" for p in placed]
    return {
        "sessionId": spec.session_id,
        "nodes": urls,
        "recipients": [
            {"recipient": o.recipient, "allow": list(o.allow),
             "fetch": f"pqmpc result --session {spec.session_id} --identity {o.recipient}.identity.json "
                      f"--node {urls[0] if urls else ''} --ca ca.pem --plan-signer plan-signer.pub"}
            for o in spec.outputs
        ],
    }
