"""The MPCSession state machine as one pure decision: ``decide(observed, now) -> (status, actions)``.

Contract: pure. :func:`decide` takes what the controller has observed so far in one
pass (the session as stored, and whatever the shell has read or done since: the pool,
other sessions' loads, pod IPs, the plan delivery, the parties' reports, the dealing)
and returns the status the session should have and the ordered actions that follow:

- *requests* (:data:`Request`): an observation the decision needs before it can go on
  (read the pool, count the other sessions' loads, read the pod IPs, deliver the plan,
  ask the parties, deal). The shell (:mod:`pqmpc_operator.session_controller`) performs
  it, adds the result to ``observed`` and decides again;
- *effects*: write the status, count a placement failure, record anomaly evidence,
  delete the session;
- :class:`Requeue` ends the pass (run again in that many seconds); :class:`DeleteSession`
  ends it for good.

Lifecycle (``status.phase``, :class:`SessionPhase`): Pending -> Placing -> Preprocessing
-> AwaitingInputs -> Computing -> Succeeded | Failed.

- Pending: the pool is read and the spec checked; an unusable spec fails at once
  (``InvalidSpec``), a missing pool waits (``PoolNotFound``).
- Placing: the pure solver places the parties on ready, certified, unquarantined nodes;
  an infeasible request stays here (condition Placed=False with the solver's
  explanation) and is retried until the deadline.
- Preprocessing: the plan is built, signed and posted to every party; a delivery that
  fails is retried with the next generation, which supersedes any copy that got out.
- AwaitingInputs / Computing: the parties' reports are folded into the status; once
  every input is in the dealer deals each party its material, from the plan kept in the
  session's Secret — only for a session on the dealer: a dealer-free session (``ot``,
  ``prss``) is never dealt, whatever a party reports; no trustworthy plan there
  (:class:`PlanLost`) re-plans with the next generation. A lost party fails an additive
  session (every owner's input stays secret); a Shamir session carries on while
  ``t + 1`` parties remain (``2t + 1`` on ``prss``).
- Succeeded / Failed: ``completionTime`` is set; after ``ttlSecondsAfterFinished`` the
  session is deleted. ``spec.deadline`` after creation an unfinished session fails.
- Re-run: a ``prss`` session that failed for want of ``2t + 1`` parties with ``t + 1``
  or more left offers one (``status.rerun``): its survivors keep every owner's input
  until the deadline. Annotating the session ``pqmpc.io/rerun=<any new value>`` asks
  the survivors which still keep them, places a replacement node at every other index
  (:func:`~pqmpc_operator.placement.place_replacements`) and goes back to Preprocessing:
  the next generation's plan names the holders (``inputsHeldBy``), they reshare to the
  replacements and no owner submits again. A node is only ever placed at one index of a
  session: ``status.rerun.placedBefore`` records every earlier generation's nodes, and
  none of them comes back at another index. The plan keeps the session's deadline
  (``creationTimestamp + spec.deadline``, immutable), which the holders check.

Everything is decided from the stored status plus this pass's observations, never from
memory, so an operator restart resumes where the last one stopped.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Required, TypedDict, Union, cast

from pqmpc_node.crypto.suites import Suite, get_suite
from pqmpc_node.dealer.size import PREPROCESSING_LIMIT
from pqmpc_node.gateway.routing import external_name
from pqmpc_operator import placement
from pqmpc_operator.anomaly import SessionEvidence
from pqmpc_operator.gateway_builders import gateway_name
from pqmpc_operator.model import NodePoolSpec, SpecError, parse_duration, parse_nodepool
from pqmpc_operator.session_model import SessionSpec, parse_mpcsession, session_id_of
from pqmpc_operator.session_plan import Progress, session_progress
from pqmpc_operator.status import Condition, merge_conditions

__all__ = [
    "ACTIVE", "ADDITIVE_LOST", "RERUN_ANNOTATION", "RERUN_POLL_S", "RerunStatus", "DEALER_CAVEAT", "FINISHED", "LOST_AFTER_S", "Action", "Admission", "Decision",
    "AskParties", "CancelTarget", "CancelAtParties", "CountPlacementFailure", "Deal", "DealingFailed",
    "DeleteSession", "Dealt", "DeliverPlan", "InputProgress", "ObservedSession", "PartyUnreachable", "PlanAccepted",
    "PlanLost", "PlanRefused", "ReadLoads", "ReadPods", "ReadPool", "RecordEvidence", "Request", "Requeue",
    "SessionBody", "SessionEvent", "SessionMetadata", "SessionPhase", "SessionStatus", "StatusEvidence",
    "TOO_LARGE", "TooLarge", "WriteStatus", "admit", "cancel_target", "decide", "evidence_from_status",
    "evidence_to_status", "inputs_received", "placement_failure_is_new", "preprocessing_status", "result_hint",
    "session_events", "too_large_message",
]


class SessionPhase(enum.StrEnum):
    """``status.phase`` of an MPCSession (the strings stored in the API)."""

    PENDING = "Pending"
    PLACING = "Placing"
    PREPROCESSING = "Preprocessing"
    AWAITING_INPUTS = "AwaitingInputs"
    COMPUTING = "Computing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


ACTIVE = frozenset({SessionPhase.PLACING, SessionPhase.PREPROCESSING, SessionPhase.AWAITING_INPUTS,
                    SessionPhase.COMPUTING})
FINISHED = frozenset({SessionPhase.SUCCEEDED, SessionPhase.FAILED})
# A party unreachable this long is lost (an additive session then fails).
LOST_AFTER_S = 20.0
RERUN_ANNOTATION = "pqmpc.io/rerun"
"""Set to a new value on a failed session that offers a re-run to run it again (:func:`_start_rerun`)."""
RERUN_POLL_S = 5.0
"""How often a failed session that offers a re-run looks for the annotation (the daemon does not see edits)."""
ADDITIVE_LOST = ("additive sharing needs every party, so the session ends; every owner's input is kept secret "
                 "(nothing unmasked was opened, no output was released): create a new session and the owners "
                 "submit again")
"""Why a lost party ends an additive session, whichever provider it ran on (the nodes say the same)."""
# Seconds until the next pass, by what the pass ended with.
RETRY_POOL_S = 5.0
RETRY_PLACEMENT_S = 5.0
RETRY_DELIVERY_S = 2.0
NEXT_PASS_S = 1.0
MAX_TTL_WAIT_S = 3600.0
_TS = "%Y-%m-%dT%H:%M:%SZ"


class SessionMetadata(TypedDict, total=False):
    """The parts of ``metadata`` the controller reads."""

    name: Required[str]
    namespace: Required[str]
    uid: str
    generation: int
    creationTimestamp: str
    deletionTimestamp: str
    annotations: dict[str, str]


class InputProgress(TypedDict):
    """One ``status.inputs[]`` entry: has every reachable party got this owner's input?"""

    owner: str
    role: str
    received: bool
    parties: int


class StatusEvidence(TypedDict):
    """``status.evidence``: a failed session's anomaly evidence, kept so a restarted operator can score it again."""

    outcome: str
    parties: list[str]
    finishedAt: float
    blamed: dict[str, list[str]]
    failureReporters: list[str]


class RerunStatus(TypedDict, total=False):
    """``status.rerun``: a failed session's survivors keep every owner's input, so it can run again."""

    available: bool
    """A re-run can be asked for now (``pqmpc.io/rerun``)."""
    survivors: list[int]
    """The parties left when it failed (they keep the inputs until the deadline)."""
    inputsHeldBy: list[int]
    """The holders named by the re-run plan (set once a re-run started)."""
    requested: str
    """The ``pqmpc.io/rerun`` value last acted on (each new value asks once)."""
    hint: str
    placedBefore: list[dict[str, Any]]
    """Every node that held a share in an earlier generation and its index (``{"node", "party"}``): a re-run
    places none of them at another index (:func:`~pqmpc_operator.placement.place_replacements`)."""


class SessionStatus(TypedDict, total=False):
    """``status`` of an MPCSession, as the operator writes it."""

    phase: str
    reason: str
    message: str
    conditions: list[dict[str, Any]]
    observedGeneration: int
    sessionId: str
    startTime: str
    completionTime: str
    placement: list[dict[str, Any]]
    planGeneration: int
    planDigest: str
    dealtDigest: str
    inputs: list[InputProgress]
    inputsReceived: str
    preprocessing: dict[str, str]
    result: dict[str, Any]
    unreachableSince: dict[str, str] | None
    evidence: StatusEvidence
    rerun: RerunStatus


class SessionBody(TypedDict, total=False):
    """An MPCSession as the API server returns it."""

    metadata: Required[SessionMetadata]
    spec: dict[str, Any]
    status: SessionStatus


# ------------------------------------------------------------------ observations


@dataclass(frozen=True)
class PlanAccepted:
    """Every party accepted the signed plan."""

    digest: str
    parties: int


@dataclass(frozen=True)
class PlanRefused:
    """The plan could not be built or delivered (a party unreachable, its keys unverifiable...)."""

    error: str


@dataclass(frozen=True)
class PartyUnreachable:
    """A party could not be asked for its report."""

    error: str


@dataclass(frozen=True)
class Dealt:
    """Each party got its own sealed preprocessing."""


@dataclass(frozen=True)
class DealingFailed:
    """Dealing failed this pass (it is retried on the next)."""

    error: str


@dataclass(frozen=True)
class TooLarge:
    """The projected preprocessing body exceeds what a node takes: dealing could never succeed.

    Projected before dealing (:mod:`pqmpc_node.dealer.size`), so nothing was dealt.
    """

    projected_bytes: int
    limit_bytes: int
    rows_that_fit: int
    """The most rows each owner may submit for the body to fit (0: not even one)."""


@dataclass(frozen=True)
class PlanLost:
    """The dealer found no trustworthy plan where the operator keeps it (the session's plan Secret).

    Missing, not owned by the session, unreadable, another digest than ``status.planDigest``
    or not signed by the pool's plan signer: dealing would never succeed on retry, so the
    session is re-planned with the next generation.
    """

    error: str


PartyReply = Union[Mapping[str, Any], PartyUnreachable]


class ObservedSession(TypedDict, total=False):
    """What one pass has observed so far; a key is absent until the shell has read it."""

    body: Required[SessionBody]
    pool: Mapping[str, Any] | None
    """The NodePool named by ``spec.poolRef`` (None: it does not exist)."""
    loads: Mapping[str, int]
    """Node name -> other active sessions placed on it."""
    pod_ips: Mapping[str, str]
    """Pod name -> pod IP, as the API server reports them (never what a node says)."""
    delivery: PlanAccepted | PlanRefused
    replies: Mapping[str, PartyReply]
    """Node name -> its ``GET /v1/sessions/{id}`` report, or why it could not be asked."""
    dealing: Dealt | DealingFailed | PlanLost | TooLarge


@dataclass(frozen=True)
class Admission:
    """The pool and the session spec, parsed and checked."""

    pool: NodePoolSpec
    suite: Suite
    spec: SessionSpec
    deadline_at: dt.datetime


# ------------------------------------------------------------------ actions


@dataclass(frozen=True)
class ReadPool:
    """Request: read the NodePool named by ``spec.poolRef`` (``observed["pool"]``)."""


@dataclass(frozen=True)
class ReadLoads:
    """Request: count the other active sessions on each node (``observed["loads"]``)."""


@dataclass(frozen=True)
class ReadPods:
    """Request: read the pool's pod IPs (``observed["pod_ips"]``)."""

    admission: Admission


@dataclass(frozen=True)
class DeliverPlan:
    """Request: record the decided status (it carries ``generation``) first, then build, sign and post the plan.

    Recording first matters: if the pass dies after some parties got the plan, the next
    pass sends ``generation + 1``, which supersedes it at every party.
    """

    admission: Admission
    generation: int
    placement: tuple[Mapping[str, Any], ...]
    inputs_held_by: tuple[int, ...] = ()
    """A re-run: the parties that kept the owners' inputs (the plan's ``inputsHeldBy``)."""


@dataclass(frozen=True)
class AskParties:
    """Request: ``GET /v1/sessions/{id}`` at every placed node (``observed["replies"]``)."""

    session_id: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Deal:
    """Request: deal every party its preprocessing for ``rows`` under plan ``digest`` (``observed["dealing"]``)."""

    admission: Admission
    placement: tuple[Mapping[str, Any], ...]
    rows: Mapping[str, int]
    digest: str


@dataclass(frozen=True)
class CancelAtParties:
    """Effect: the operator ends the session itself: a plan-signed cancel carrying ``reason`` and
    ``message`` to every party, best effort, so an owner polling a node reads why."""

    admission: Admission
    session_id: str
    digest: str
    nodes: tuple[str, ...]
    reason: str
    message: str


@dataclass(frozen=True)
class WriteStatus:
    """Effect: write the decided status (when it changed), with the Events its changes call for."""


@dataclass(frozen=True)
class CountPlacementFailure:
    """Effect: count a placement that found no valid assignment."""

    reason: str


@dataclass(frozen=True)
class RecordEvidence:
    """Effect: hand a finished session's evidence to its pool's anomaly scoring."""

    pool: str
    evidence: SessionEvidence


@dataclass(frozen=True)
class DeleteSession:
    """Effect, final: the session finished ``ttl`` seconds ago or more (``ttlSecondsAfterFinished``)."""

    ttl: int


@dataclass(frozen=True)
class Requeue:
    """Final: the pass is over; run again after ``seconds``."""

    seconds: float


Request = Union[ReadPool, ReadLoads, ReadPods, DeliverPlan, AskParties, Deal]
Action = Union[Request, CancelAtParties, WriteStatus, CountPlacementFailure, RecordEvidence, DeleteSession, Requeue]
Decision = tuple[SessionStatus, list[Action]]


@dataclass(frozen=True)
class SessionEvent:
    """An Event to post on the session."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


# ------------------------------------------------------------------ helpers


def _ts(t: dt.datetime) -> str:
    return t.strftime(_TS)


def _parse_ts(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.strptime(text, _TS).replace(tzinfo=dt.timezone.utc)


class _Draft:
    """The status a decision is building: a copy of the stored one, plus the conditions to set."""

    def __init__(self, stored: SessionStatus, generation: int, now: dt.datetime, *, name: str = "") -> None:
        self.name = name
        self.stored = stored
        self.new = cast(SessionStatus, dict(stored))
        self.generation = generation
        self.now = now
        self.conditions: dict[str, Condition] = {}

    def phase(self, phase: SessionPhase, reason: str, message: str) -> None:
        self.new["phase"] = phase.value
        self.new["reason"] = reason
        self.new["message"] = message

    def condition(self, ctype: str, status: Literal["True", "False"], reason: str, message: str) -> None:
        self.conditions[ctype] = Condition(ctype, status, reason, message)

    def fail(self, reason: str, message: str) -> None:
        self.phase(SessionPhase.FAILED, reason, message)
        self.condition("Ready", "False", reason, message)
        self.new["completionTime"] = _ts(self.now)

    def status(self) -> SessionStatus:
        """The new status: conditions merged (transition times kept unless flipped), observedGeneration set."""
        old = {c["type"]: c for c in self.stored.get("conditions") or []}
        merged = {c["type"]: c for c in merge_conditions(list(old.values()), list(self.conditions.values()),
                                                         self.generation, _ts(self.now))}
        out = cast(SessionStatus, dict(self.new))
        out["conditions"] = [merged.get(t) or old[t] for t in sorted(set(old) | set(merged))]
        out["observedGeneration"] = self.generation
        return out


def _placed(draft: _Draft) -> tuple[Mapping[str, Any], ...]:
    return tuple(draft.new.get("placement") or ())


def result_hint(spec: SessionSpec, placed: Sequence[Mapping[str, Any]], ips: Mapping[str, str],
                port: int, pool: NodePoolSpec | None = None) -> dict[str, Any]:
    """Where each recipient fetches its sealed outputs (results never appear in status).

    With the pool's SNI gateway (``spec.externalAccess``) also from outside the cluster:
    ``externalNodes`` (``https://<node-id>.<domain>``) and each recipient's ``fetchFromOutside``.
    """
    urls = [f"https://{ips.get(str(p['node']), '')}:{port}" for p in placed]
    access = pool.external_access if pool is not None else None
    outside = [f"https://{external_name(str(p['node']), access.domain)}" for p in placed] if access else []
    recipients: list[dict[str, Any]] = []
    for o in spec.outputs:
        entry: dict[str, Any] = {
            "recipient": o.recipient, "allow": list(o.allow),
            "fetch": f"pqmpc result --session {spec.session_id} --identity {o.recipient}.identity.json "
                     f"--node {urls[0] if urls else ''} --ca ca.pem --plan-signer plan-signer.pub"}
        if pool is not None and access is not None and outside:
            entry["fetchFromOutside"] = (
                f"pqmpc result --session {spec.session_id} --identity {o.recipient}.identity.json "
                f"--gateway <address of Service {gateway_name(pool.name)}>:{access.port} --node {outside[0]} "
                "--ca ca.pem --plan-signer plan-signer.pub")
        recipients.append(entry)
    hint: dict[str, Any] = {"sessionId": spec.session_id, "nodes": urls, "recipients": recipients}
    if outside:
        hint["externalNodes"] = outside
    return hint


DEALER_CAVEAT = ("the operator deals (trusted dealer): it knows every triple, mask and MAC key of this session, so "
                 "the operator together with one node could read every input; auto runs additive and "
                 "honest-majority Shamir sessions dealer-free")
"""``status.preprocessing.note`` of a session that asked for the dealer by name."""


def preprocessing_status(spec: SessionSpec) -> dict[str, str]:
    """``status.preprocessing``: which provider runs and, for ``auto``, why."""
    dealer = spec.preprocessing == "dealer"
    return {"provider": spec.preprocessing, "dealerFree": "false" if dealer else "true",
            "note": spec.preprocessing_note or (DEALER_CAVEAT if dealer else
                                                f"{spec.preprocessing}: made by the parties; the operator sees no key, "
                                                "seed or triple")}


def session_events(old: SessionStatus, new: SessionStatus) -> list[SessionEvent]:
    """The one Event a status change calls for, if any.

    A placement failure (``Placing`` with a reason not stored before) is one Warning, even
    when it is also the phase change into ``Placing``; leaving ``Placing`` once placed is
    the Normal recovery Event. Any other phase change is Normal (``Failed``: Warning).
    """
    reason, message = str(new.get("reason")), str(new.get("message"))
    if new.get("phase") == SessionPhase.PLACING and (new.get("reason"), new.get("phase")) != (
            old.get("reason"), old.get("phase")):
        return [SessionEvent("Warning", reason, message)]
    if new.get("phase") != old.get("phase"):
        kind: Literal["Normal", "Warning"] = "Warning" if new.get("phase") == SessionPhase.FAILED else "Normal"
        return [SessionEvent(kind, reason, message)]
    return []


def placement_failure_is_new(stored: SessionStatus, reason: str) -> bool:
    """Whether a placement failing with ``reason`` is a new failure, not a retry of the stored one.

    ``pqmpc_operator_placement_failures_total`` counts placements that failed: once when a
    session enters ``Placing`` and once each time the reason changes, never per retry.
    """
    return (stored.get("phase"), stored.get("reason")) != (SessionPhase.PLACING.value, reason)


def inputs_received(inputs: Sequence[Mapping[str, Any]]) -> str:
    """``status.inputsReceived``, the ``kubectl get mpcs`` INPUTS column: received owners / declared owners."""
    return f"{sum(1 for i in inputs if i.get('received'))}/{len(inputs)}"


# ------------------------------------------------------------------ the decision


def decide(observed: ObservedSession, now: dt.datetime, *, api_port: int) -> Decision:
    """The session's status and the ordered actions for what has been observed so far (see the module doc).

    ``api_port`` is the nodes' API port (the result hint tells recipients where to fetch).
    """
    body = observed["body"]
    meta = body["metadata"]
    stored: SessionStatus = body.get("status") or SessionStatus()
    spec_raw = body.get("spec") or {}
    if (stored.get("phase") or SessionPhase.PENDING) in FINISHED:
        if _rerun_asked(body, now):
            return _start_rerun(observed, now)
        return stored, [_after_finish(stored, spec_raw, now)]
    draft = _Draft(stored, int(meta.get("generation", 1)), now, name=meta["name"])
    if "startTime" not in stored:
        draft.new["startTime"] = _ts(now)
    draft.new["sessionId"] = session_id_of(meta["namespace"], meta["name"], meta.get("uid", ""))
    if now >= _deadline_at(body, now):
        draft.fail("DeadlineExceeded", f"not finished within spec.deadline ({spec_raw.get('deadline', '1h')}) of "
                   "creation; create a new session with a longer deadline")
        return draft.status(), [WriteStatus(), Requeue(NEXT_PASS_S)]
    if "pool" not in observed:
        return draft.status(), [ReadPool()]
    pool_body = observed["pool"]
    if pool_body is None:
        pool_name = f"{meta['namespace']}/{spec_raw.get('poolRef', '')}"
        draft.phase(SessionPhase.PENDING, "PoolNotFound",
                    f"NodePool {pool_name} does not exist; create it or fix spec.poolRef")
        draft.condition("Ready", "False", "PoolNotFound", draft.new["message"])
        return draft.status(), [WriteStatus(), Requeue(RETRY_POOL_S)]
    try:
        admission = admit(body, pool_body, now)
    except SpecError as exc:
        draft.fail("InvalidSpec", str(exc))
        return draft.status(), [WriteStatus(), Requeue(NEXT_PASS_S)]
    ended = _ensure_placed(draft, observed, admission, pool_body)
    if ended is not None:
        return ended
    if "pod_ips" not in observed:
        return draft.status(), [ReadPods(admission)]
    if not stored.get("planDigest"):
        return _plan(draft, observed, admission, api_port=api_port)
    return _progress(draft, observed, admission, now, api_port=api_port)


def admit(body: SessionBody | Mapping[str, Any], pool_body: Mapping[str, Any], now: dt.datetime) -> Admission:
    """The pool and session parsed and checked, or :class:`SpecError` saying what to fix."""
    pool = parse_nodepool(pool_body)
    suite = get_suite(pool.suite.value)
    spec = parse_mpcsession(body, suite)
    return Admission(pool, suite, spec, _deadline_at(body, now))


def _deadline_at(body: SessionBody | Mapping[str, Any], now: dt.datetime) -> dt.datetime:
    created = _parse_ts(body["metadata"].get("creationTimestamp")) or now
    try:
        deadline_s = parse_duration((body.get("spec") or {}).get("deadline", "1h"), "deadline")
    except SpecError:
        deadline_s = 3600.0
    return created + dt.timedelta(seconds=deadline_s)


def _after_finish(stored: SessionStatus, spec_raw: Mapping[str, Any], now: dt.datetime) -> Requeue | DeleteSession:
    """A finished session waits out ``ttlSecondsAfterFinished`` (counted from ``completionTime``), then goes."""
    done = _parse_ts(stored.get("completionTime")) or now
    ttl = int(spec_raw.get("ttlSecondsAfterFinished", 3600))
    left = (done + dt.timedelta(seconds=ttl) - now).total_seconds()
    if left <= 0:
        return DeleteSession(ttl)
    if (stored.get("rerun") or {}).get("available"):
        return Requeue(min(left, RERUN_POLL_S))  # the survivors keep the inputs: notice pqmpc.io/rerun soon
    return Requeue(min(left, MAX_TTL_WAIT_S))


def _ensure_placed(draft: _Draft, observed: ObservedSession, admission: Admission,
                   pool_body: Mapping[str, Any]) -> Decision | None:
    """Place the parties unless the stored status already holds a placement; None: placed, go on."""
    stored = draft.stored
    if (stored.get("phase") or SessionPhase.PENDING) not in (SessionPhase.PENDING, SessionPhase.PLACING) \
            and stored.get("placement"):
        return None
    if "loads" not in observed:
        return draft.status(), [ReadLoads()]
    # One entry per node name (the last one wins), as the pool status lists them.
    nodes = {str(n.get("name")): n for n in (pool_body.get("status") or {}).get("nodes") or []}
    eligible = [e for e in nodes.values() if e.get("certFingerprint")]
    candidates = placement.candidates_from_pool_status(eligible, admission.pool.groups, observed["loads"])
    result = placement.place_parties(candidates, admission.spec.placement)
    if isinstance(result, placement.PlacementInfeasible):
        draft.phase(SessionPhase.PLACING, result.reason, result.message)
        draft.condition("Placed", "False", result.reason, result.message)
        count: list[Action] = [CountPlacementFailure(result.reason)] if placement_failure_is_new(stored, result.reason) \
            else []
        return draft.status(), [*count, WriteStatus(), Requeue(RETRY_PLACEMENT_S)]
    draft.new["placement"] = result.to_status()
    draft.phase(SessionPhase.PREPROCESSING, "Placed",
                "placed on " + ", ".join(str(n) for n in result.nodes) + "; signing and sending the plan")
    draft.condition("Placed", "True", "Placed", draft.new["message"])
    return None


def _plan(draft: _Draft, observed: ObservedSession, admission: Admission, *, api_port: int) -> Decision:
    """Deliver the signed plan (next generation); on success the session awaits its inputs."""
    generation = int(draft.stored.get("planGeneration", 0)) + 1
    draft.new["planGeneration"] = generation
    delivery = observed.get("delivery")
    held_by = tuple(int(p) for p in (draft.stored.get("rerun") or {}).get("inputsHeldBy") or ())
    if delivery is None:
        return draft.status(), [DeliverPlan(admission, generation, _placed(draft), held_by)]
    if isinstance(delivery, PlanRefused):
        draft.phase(SessionPhase.PREPROCESSING, "PlanNotDelivered", f"retrying: {delivery.error}")
        draft.condition("PlanDelivered", "False", "PlanNotDelivered", delivery.error)
        return draft.status(), [WriteStatus(), Requeue(RETRY_DELIVERY_S)]
    spec = admission.spec
    draft.new["planDigest"] = delivery.digest
    draft.phase(SessionPhase.AWAITING_INPUTS, "PlanDelivered",
                f"signed plan (generation {generation}) accepted by all {delivery.parties} parties; "
                + (f"a re-run: parties {list(held_by)} kept every owner's input and reshare it to the replacement, "
                   "no owner submits again" if held_by else f"data owners can submit to session {spec.session_id}"))
    draft.condition("PlanDelivered", "True", "PlanDelivered", draft.new["message"])
    draft.new["inputs"] = [InputProgress(owner=i.owner, role=i.role, received=bool(held_by), parties=0)
                           for i in spec.inputs]
    draft.new["inputsReceived"] = inputs_received(draft.new["inputs"])
    draft.new["preprocessing"] = preprocessing_status(spec)
    draft.new["result"] = result_hint(spec, _placed(draft), observed.get("pod_ips") or {}, api_port, admission.pool)
    return draft.status(), [WriteStatus(), Requeue(NEXT_PASS_S)]


def _replan(draft: _Draft, lost: PlanLost) -> Decision:
    """Forget the plan digest so the next pass signs and delivers the next generation (nothing was dealt)."""
    generation = int(draft.stored.get("planGeneration", 0)) + 1
    message = (f"{lost.error}; re-planning with generation {generation} (nothing was dealt; parties keep the "
               "inputs accepted under the same terms)")
    draft.new["planDigest"] = ""
    draft.phase(SessionPhase.PREPROCESSING, "PlanLost", message)
    draft.condition("PlanDelivered", "False", "PlanLost", message)
    draft.condition("Preprocessed", "False", "PlanLost", message)
    return draft.status(), [WriteStatus(), Requeue(NEXT_PASS_S)]


def _lost_parties(draft: _Draft, replies: Mapping[str, PartyReply], ips: Mapping[str, str],
                  now: dt.datetime) -> tuple[dict[str, Mapping[str, Any] | None], list[str]]:
    """Reports by node (None: unreachable) and the parties lost (unreachable ``LOST_AFTER_S`` or without a pod)."""
    reports: dict[str, Mapping[str, Any] | None] = {}
    lost: list[str] = []
    since = dict(draft.stored.get("unreachableSince") or {})
    for entry in _placed(draft):
        node = str(entry["node"])
        reply = replies.get(node, PartyUnreachable("not asked"))
        if not isinstance(reply, PartyUnreachable):
            reports[node] = reply
            since.pop(node, None)
            continue
        reports[node] = None
        first = _parse_ts(since.get(node)) or now
        since.setdefault(node, _ts(first))
        if (now - first).total_seconds() >= LOST_AFTER_S or not ips.get(node):
            lost.append(f"party {entry['party']} ({node}): {reply.error}")
    if since:
        draft.new["unreachableSince"] = since
    elif "unreachableSince" in draft.stored:
        # Status is merge-patched: None removes the key, so describe shows no empty map.
        draft.new["unreachableSince"] = None
    return reports, lost


def _merge_inputs(stored: SessionStatus, progress: Progress) -> list[InputProgress]:
    """Input progress only grows: parties drop the sealed inputs once a session ends."""
    before: dict[Any, Mapping[str, Any]] = {i.get("owner"): i for i in stored.get("inputs") or []}
    return [
        InputProgress(owner=str(i["owner"]), role=str(i["role"]),
                      received=bool(i["received"] or before.get(i["owner"], {}).get("received")),
                      parties=max(int(i["parties"]), int(before.get(i["owner"], {}).get("parties", 0))))
        for i in progress.inputs
    ]


def _progress(draft: _Draft, observed: ObservedSession, admission: Admission, now: dt.datetime, *,
              api_port: int) -> Decision:
    """Fold the parties' reports into the status; deal once every input is in; finish when they do."""
    spec = admission.spec
    placed = _placed(draft)
    if "replies" not in observed:
        return draft.status(), [AskParties(spec.session_id, tuple(str(p["node"]) for p in placed))]
    ips = observed.get("pod_ips") or {}
    reports, lost = _lost_parties(draft, observed["replies"], ips, now)
    progress = session_progress(spec, reports)
    draft.new["inputs"] = _merge_inputs(draft.stored, progress)
    draft.new["inputsReceived"] = inputs_received(draft.new["inputs"])
    digest = str(draft.stored.get("planDigest"))
    if spec.preprocessing == "dealer" and progress.input_rows is not None \
            and draft.stored.get("dealtDigest") != draft.stored.get("planDigest") and not lost:
        # The dealer's turn: every input is in, the row counts are known.
        dealing = observed.get("dealing")
        if dealing is None:
            return draft.status(), [Deal(admission, placed, progress.input_rows, digest)]
        if isinstance(dealing, Dealt):
            draft.new["dealtDigest"] = digest
            draft.condition("Preprocessed", "True", "Dealt", f"each of {len(placed)} parties got its own sealed material")
        elif isinstance(dealing, PlanLost):
            return _replan(draft, dealing)
        elif isinstance(dealing, TooLarge):
            # Terminal: dealing again could never fit. Nothing was dealt; the parties learn why.
            message = too_large_message(spec, progress.input_rows, dealing)
            draft.fail(TOO_LARGE, message)
            draft.condition("Preprocessed", "False", TOO_LARGE, message)
            nodes = tuple(str(p["node"]) for p in placed)
            return draft.status(), [CancelAtParties(admission, spec.session_id, digest, nodes, TOO_LARGE, message),
                                    WriteStatus(), Requeue(NEXT_PASS_S)]
        else:
            draft.condition("Preprocessed", "False", "DealingFailed", f"retrying: {dealing.error}")
    actions: list[Action] = []
    keeping = [int(e["party"]) for e in placed if (reports.get(str(e["node"])) or {}).get("inputsKept")]
    settling = _survivors_settling(spec, reports, len(placed) - len(lost))
    if settling:
        pass  # a prss party was lost and the others still compute: their own reports say whether they keep inputs
    elif lost and spec.sharing == "additive" and progress.phase not in FINISHED:
        draft.fail("NodeLost", "; ".join(lost) + " — " + ADDITIVE_LOST)
    elif lost and spec.sharing == "shamir" and spec.preprocessing == "prss" and progress.phase not in FINISHED \
            and len(placed) - len(lost) < 2 * spec.threshold + 1:
        draft.fail("NodeLost", "; ".join(lost) + f" — fewer than 2t+1={2 * spec.threshold + 1} parties remain, and "
                   "dealer-free multiplication needs that many (a session survives a lost node only where n >= 2t+2)"
                   + (_offer_rerun(draft, spec, keeping) if keeping else
                      "; the survivors hold no inputs to keep: create a new session (owners submit again)"))
    elif lost and spec.sharing == "shamir" and len(placed) - len(lost) < spec.threshold + 1:
        draft.fail("NodeLost", "; ".join(lost) + f" — fewer than t+1={spec.threshold + 1} parties remain")
    elif progress.phase == SessionPhase.FAILED:
        offer = _offer_rerun(draft, spec, keeping) if spec.preprocessing == "prss" and keeping else ""
        draft.fail(progress.reason, (progress.message or f"a party failed: {progress.reason}") + offer)
    if draft.new.get("phase") in FINISHED:
        # Behavioural evidence for the pool's anomaly scoring (who ran it, who failed how).
        party_nodes = [str(e["node"]) for e in sorted(placed, key=lambda e: int(e["party"]))]
        evidence = SessionEvidence.from_reports(spec.session_id, party_nodes,
                                                {n: r for n, r in reports.items() if r is not None},
                                                finished_at=now.timestamp())
        draft.new["evidence"] = evidence_to_status(evidence)
        actions.append(RecordEvidence(admission.pool.name, evidence))
    elif progress.phase == SessionPhase.SUCCEEDED:
        draft.phase(SessionPhase.SUCCEEDED, "Completed", progress.message)
        draft.condition("Ready", "True", "Completed", progress.message)
        draft.new["completionTime"] = _ts(now)
        hint = result_hint(spec, placed, ips, api_port, admission.pool)
        hint["outputsReady"] = list(progress.outputs_ready)
        if progress.rejected_rows is not None:
            hint["rejectedRows"] = progress.rejected_rows
        draft.new["result"] = hint
    elif settling:
        message = ("a party was lost and fewer than 2t+1 remain; waiting for the survivors to stop and say whether "
                   "they keep every owner's input for a re-run" + (f" ({'; '.join(lost)})" if lost else ""))
        draft.phase(SessionPhase.COMPUTING, "PartyLost", message)
        draft.condition("Degraded", "True", "PartyLost", message)
    else:
        draft.phase(SessionPhase(progress.phase), progress.reason, progress.message)
        if lost:
            draft.condition("Degraded", "True", "PartyLost", "; ".join(lost))
    return draft.status(), [*actions, WriteStatus(), Requeue(NEXT_PASS_S)]


def _survivors_settling(spec: SessionSpec, reports: Mapping[str, Mapping[str, Any] | None], left: int) -> bool:
    """A ``prss`` session lost a party below ``2t + 1`` (``left`` reachable or unlost parties, or a party already
    stopped on a lost peer) while others still compute: they stop within their round timeout, and only their own
    reports say whether they keep the owners' inputs (a re-run), so the session is not failed before they do."""
    if spec.preprocessing != "prss" or spec.sharing != "shamir":
        return False
    live = [r for r in reports.values() if r is not None]
    if not any(r.get("phase") == "Computing" for r in live):
        return False
    return left < 2 * spec.threshold + 1 or any(r.get("phase") == "Failed" and r.get("reason") == "peer_lost"
                                                 for r in live)


def _rerun_hint(name: str, value: str) -> str:
    return f"kubectl annotate mpcsession {name} {RERUN_ANNOTATION}={value} --overwrite"


def _offer_rerun(draft: _Draft, spec: SessionSpec, survivors: Sequence[int]) -> str:
    """Record a re-run offer when ``survivors`` (t + 1 or more) keep every input; the message's tail ("" if none)."""
    if len(survivors) < spec.threshold + 1:
        return "; too few parties remain to keep the inputs: create a new session (owners submit again)"
    before = draft.stored.get("rerun") or {}
    name = str(draft.stored.get("sessionId") or spec.session_id)
    hint = _rerun_hint(draft.name, _next_value(str(before.get("requested") or "")))
    draft.new["rerun"] = RerunStatus(available=True, survivors=sorted(survivors),
                                     inputsHeldBy=list(before.get("inputsHeldBy") or []),
                                     requested=str(before.get("requested") or ""), hint=hint)
    if before.get("placedBefore"):  # the generations before this one, for the next re-run's placement
        draft.new["rerun"]["placedBefore"] = list(before.get("placedBefore") or [])
    return (f"; parties {sorted(survivors)} keep every owner's input until the deadline, so session {name} can "
            f"re-run with a replacement node and no owner submits again: {hint}")


def _next_value(requested: str) -> str:
    """A ``pqmpc.io/rerun`` value not acted on yet (one more than the last, when that was a number)."""
    return str(int(requested) + 1) if requested.isdigit() else ("1" if not requested else requested + "-1")


def _asked(meta: SessionMetadata) -> str:
    """The ``pqmpc.io/rerun`` annotation's value, cut to what ``status.rerun.requested`` holds."""
    return str((meta.get("annotations") or {}).get(RERUN_ANNOTATION, ""))[:253]


def _rerun_asked(body: SessionBody, now: dt.datetime) -> bool:
    """A failed session that offers a re-run, annotated with a value not acted on yet, before its deadline."""
    stored = body.get("status") or SessionStatus()
    offer = stored.get("rerun") or {}
    asked = _asked(body["metadata"])
    return (stored.get("phase") == SessionPhase.FAILED and bool(offer.get("available")) and bool(asked)
            and asked != offer.get("requested") and now < _deadline_at(body, now))


def _start_rerun(observed: ObservedSession, now: dt.datetime) -> Decision:
    """Re-run a failed session: ask the survivors who still keeps the inputs, place replacements, re-plan.

    Requests the pool, the loads, the pod IPs and the survivors' reports first. Fewer than
    t + 1 holders: the offer ends (stays Failed, says why). No free node fits: stays
    Failed and retries. Otherwise back to Preprocessing with the new placement; the next
    pass delivers the next generation with ``inputsHeldBy`` (:func:`_plan`).
    """
    body = observed["body"]
    meta = body["metadata"]
    stored: SessionStatus = body.get("status") or SessionStatus()
    draft = _Draft(stored, int(meta.get("generation", 1)), now, name=meta["name"])
    asked = _asked(meta)
    offer = stored.get("rerun") or RerunStatus()
    if "pool" not in observed:
        return stored, [ReadPool()]
    pool_body = observed["pool"]
    if pool_body is None:
        return stored, [Requeue(RETRY_POOL_S)]
    try:
        admission = admit(body, pool_body, now)
    except SpecError:
        return stored, [Requeue(RETRY_POOL_S)]
    spec = admission.spec
    placed = _placed(draft)
    survivors = [e for e in placed if int(e["party"]) in set(offer.get("survivors") or [])]
    # In the order the controller's steps serve them: pool, loads, pod IPs, the survivors' reports.
    if "loads" not in observed:
        return stored, [ReadLoads()]
    if "pod_ips" not in observed:
        return stored, [ReadPods(admission)]
    if "replies" not in observed:
        return stored, [AskParties(spec.session_id, tuple(str(e["node"]) for e in survivors))]
    holders = sorted(int(e["party"]) for e in survivors
                     if not isinstance(r := observed["replies"].get(str(e["node"]), PartyUnreachable("")),
                                       PartyUnreachable) and r.get("inputsKept"))
    if len(holders) < spec.threshold + 1:
        message = (f"re-run ({RERUN_ANNOTATION}={asked}) impossible: only parties {holders} still keep the owners' "
                   f"inputs, t + 1 = {spec.threshold + 1} are needed; create a new session (owners submit again)")
        draft.new["message"] = message
        draft.new["rerun"] = RerunStatus(**{**offer, "available": False, "requested": asked})
        return draft.status(), [WriteStatus(), Requeue(NEXT_PASS_S)]
    nodes = {str(n.get("name")): n for n in (pool_body.get("status") or {}).get("nodes") or []}
    candidates = placement.candidates_from_pool_status([e for e in nodes.values() if e.get("certFingerprint")],
                                                       admission.pool.groups, observed["loads"])
    by_name = {str(c.name): c for c in candidates}
    kept: dict[int, placement.NodeCandidate] = {}
    for e in placed:
        if int(e["party"]) in holders:
            node = str(e["node"])
            kept[int(e["party"])] = by_name.get(node) or placement.NodeCandidate(
                name=placement.NodeName(node), group="", region=str(e.get("region") or ""),
                zone=str(e.get("zone") or ""), trust_domain=str(e.get("trustDomain") or ""))
    fill = [i for i in range(spec.parties) if i not in kept]
    # Every node of every generation so far, at its one index: none may come back at another (shares are not
    # re-randomised between re-runs, so it would hold two); the holders refuse such a plan anyway.
    history = _placed_before(offer)
    for e in placed:
        history.setdefault(str(e["node"]), int(e["party"]))
    result = placement.place_replacements(candidates, spec.placement, kept, fill, placed_before=history)
    if isinstance(result, placement.PlacementInfeasible):
        draft.new["message"] = f"re-run ({RERUN_ANNOTATION}={asked}) waits for a replacement node: {result.message}"
        draft.condition("Placed", "False", result.reason, result.message)
        return draft.status(), [WriteStatus(), Requeue(RETRY_PLACEMENT_S)]
    new_nodes = [str(a.node) for a in result.assignments if a.party in fill]
    draft.new["placement"] = result.to_status()
    draft.new["planDigest"] = ""
    draft.new["unreachableSince"] = None
    draft.new["rerun"] = RerunStatus(available=False, survivors=list(offer.get("survivors") or []),
                                     inputsHeldBy=holders, requested=asked, hint="",
                                     placedBefore=[{"node": n, "party": i} for n, i in sorted(history.items())])
    message = (f"re-run ({RERUN_ANNOTATION}={asked}): parties {holders} keep every owner's input; "
               f"{', '.join(new_nodes)} replace{'s' if len(new_nodes) == 1 else ''} parties {fill}; signing and "
               "sending the next plan generation (no owner submits again)")
    draft.phase(SessionPhase.PREPROCESSING, "Rerun", message)
    draft.condition("Placed", "True", "Rerun", message)
    draft.condition("Ready", "False", "Rerun", message)
    return draft.status(), [WriteStatus(), Requeue(NEXT_PASS_S)]


def _placed_before(offer: Mapping[str, Any]) -> dict[str, int]:
    """``status.rerun.placedBefore`` as node name -> index (the nodes of the generations before the current one)."""
    return {str(e["node"]): int(e["party"]) for e in offer.get("placedBefore") or [] if isinstance(e, Mapping)}


TOO_LARGE = "PreprocessingTooLarge"


def too_large_message(spec: SessionSpec, rows: Mapping[str, int], too_large: TooLarge) -> str:
    """One line for status, the Event and the owners' CLI: how large, the limit, how many rows fit, what to do."""
    mib = 1 << 20
    submitted = ", ".join(f"{o} {n}" for o, n in sorted(rows.items()))
    fit = too_large.rows_that_fit
    fewer = f"or with at most {fit} rows per owner" if fit else "(not even one row per owner fits the dealer's material)"
    if spec.sharing == "additive" or 2 * spec.threshold < spec.parties:
        fix = f"create the session again with preprocessing: auto (dealer-free: nothing is dealt), {fewer}"
    else:
        fix = ("create the session again with additive sharing or a Shamir threshold with 2t < n (dealer-free with "
               f"preprocessing: auto), {fewer}")
    limit = f"{too_large.limit_bytes / mib:g} MiB"
    where = f"the {limit} a node takes" if too_large.limit_bytes >= PREPROCESSING_LIMIT else (
        f"the {limit} the operator deals (its memory limit; nodes take {PREPROCESSING_LIMIT // mib} MiB)")
    return (f"the dealt preprocessing would be {too_large.projected_bytes / mib:.1f} MiB per party, over {where}, "
            f"so it was not dealt (rows submitted: {submitted}); at most {fit} rows per owner fit: {fix}")


# ------------------------------------------------------------------ evidence kept in status


def evidence_to_status(evidence: SessionEvidence) -> StatusEvidence:
    """``status.evidence`` for a session's evidence (everything but the session id, which status holds)."""
    return StatusEvidence(outcome=evidence.outcome, parties=list(evidence.parties), finishedAt=evidence.finished_at,
                          blamed={n: sorted(b) for n, b in sorted(evidence.blamed.items())},
                          failureReporters=sorted(evidence.failure_reporters))


def evidence_from_status(status: Mapping[str, Any]) -> SessionEvidence | None:
    """The evidence a finished session recorded (:func:`evidence_to_status`); None when it recorded none."""
    kept = status.get("evidence")
    if status.get("phase") not in FINISHED or not isinstance(kept, Mapping) or not status.get("sessionId"):
        return None
    return SessionEvidence(
        session_id=str(status["sessionId"]), parties=tuple(str(p) for p in kept.get("parties") or ()),
        outcome=str(kept.get("outcome") or "failed"), finished_at=float(kept.get("finishedAt") or 0.0),
        blamed={str(n): frozenset(str(b) for b in named) for n, named in (kept.get("blamed") or {}).items()},
        failure_reporters=frozenset(str(r) for r in kept.get("failureReporters") or ()),
    )


# ------------------------------------------------------------------ cancel


@dataclass(frozen=True)
class CancelTarget:
    """A deleted session to cancel at its parties: the plan it ran under and where."""

    session_id: str
    plan_digest: str
    nodes: tuple[str, ...]
    pool: str


def cancel_target(body: SessionBody | Mapping[str, Any]) -> CancelTarget | None:
    """What to cancel when an MPCSession is deleted; None when nothing is (never placed, no plan, finished).

    A failed session that still offers a re-run is cancelled too: its survivors keep the
    owners' inputs for it, and the cancel makes them drop them now rather than at the deadline.
    """
    status = body.get("status") or {}
    session_id, digest = str(status.get("sessionId") or ""), str(status.get("planDigest") or "")
    placed = tuple(str(p["node"]) for p in status.get("placement") or [])
    keeping = status.get("phase") == SessionPhase.FAILED and bool((status.get("rerun") or {}).get("available"))
    if (status.get("phase") in FINISHED and not keeping) or not (session_id and digest and placed):
        return None
    return CancelTarget(session_id, digest, placed, str((body.get("spec") or {}).get("poolRef", "")))
