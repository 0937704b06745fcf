"""Session execution at one node: plans, sealed inputs, PQ peer mesh, engine run, sealed outputs.

Life of a session here (phases as in ``MPCSession.status.phase``):

1. ``AwaitingInputs``: the operator posts a signed plan (:meth:`SessionManager.accept_plan`);
   the node fences its KEM key epoch so the key is not retired under the session. The
   dealer (the operator) posts this party's own preprocessing material
   (:meth:`SessionManager.accept_preprocessing`, :mod:`pqmpc_node.dealer`): its seed and
   correction stream, sealed to this node and signed with the plan-signing key; no node
   ever receives another party's material. A dealer-free session (plan provider ``prss``
   or ``ot``) gets nothing from the operator and refuses dealt material: its parties make
   their own when the computation starts (step 3).
2. Data owners post sealed input envelopes (:meth:`SessionManager.accept_input`): checked
   (sender key from the plan, signature, epoch, replay), opened, validated against the
   declared fields, and the *sealed* envelope is kept under ``PQMPC_STATE_DIR`` until
   the session ends. An owner may replace its input with a higher signed version, and
   send a large table in parts (:mod:`pqmpc_node.input_versions`,
   :mod:`pqmpc_node.input_parts`: the held version is swapped atomically once the new
   one is complete). When every owner has delivered and the material is here (its row
   counts must match the inputs'), computing starts; the status reports ``inputRows``
   and ``awaitingPreprocessing`` for the dealer.
3. ``Computing``: the party with the lower index dials each peer over a PQ mutual-TLS
   :class:`~pqmpc_node.net.link.PeerLink`, the peer's certificate must name the node
   the plan names with the plan's fingerprint (a party still lacking an input is woken
   by a peer's dial and joins). The attempt begins with the parties agreeing on which
   content of every owner's input each holds (:mod:`pqmpc_node.input_agreement`); until
   they do, nobody computes and inputs reopen for the owner to complete a replacement.
   Then the engine runs the program over a
   :class:`~pqmpc_node.net.pq_channel.PqChannel` (:func:`pqmpc_node.engine.execute`:
   owners' inputs authenticated, program, every opening MAC-checked before outputs).
   The attempt's preprocessing provider is made first: the dealt material, or a
   dealer-free provider agreed with the live parties over the same links
   (:class:`~pqmpc_node.mpc.honest_majority.HonestMajorityProvider` for ``prss``,
   :class:`~pqmpc_node.mpc.ot.provider.OtProvider` for ``ot``: ML-KEM base OTs, then OT
   extension as the program consumes triples).
   A lost peer aborts an additive session (every owner's input stays secret: nothing
   unmasked was opened, no output released); a Shamir session restarts the computation
   (next attempt, fresh round tags, the next attempt's fresh material) with the
   remaining parties while at least ``t + 1`` remain and material is left. A failed
   check aborts and sends the peers an abort notice (they stop with ``peer-abort``);
   the status names the check (``failedCheck``) and, where the evidence is the
   culprit's own message, the culprit (``blamedParties``). A ``prss`` session left with
   fewer than ``2t + 1`` parties cannot multiply and fails, but where ``t + 1`` or more
   remain the survivors keep every owner's input for a re-run (step 4). A re-run plan
   (``inputsHeldBy``, :mod:`pqmpc_node.rerun`) replaces such a failed session with a
   replacement node at each lost index: it takes no envelopes, and each attempt, right
   after the inputs agreement, the holders reshare every owner's input to the
   replacements (:mod:`pqmpc_node.input_resharing`); the engine's input checks then
   authenticate the reshared shares like any other.
4. ``Succeeded``: each recipient's allowed outputs — this party's shares, with its shares
   of per-output MAC keys and tags in malicious sessions — are sealed to its KEM key,
   signed with the node identity key, and served at ``/v1/sessions/{id}/outputs``; no
   node ever holds an output in the clear. Or ``Failed`` with a reason. Fences are
   released and the stored envelopes deleted — except at the survivors of a ``prss``
   session that failed for want of ``2t + 1`` parties with ``t + 1`` or more left: they
   keep the inputs, envelopes and fences (status ``inputsKept``) until a re-run plan
   takes them over, a cancel comes, or the session's deadline passes.
5. Cancelled (the MPCSession was deleted): the operator posts a cancel signed with the
   plan-signing key (:meth:`SessionManager.cancel`, :func:`pqmpc_node.plan.verify_cancel`);
   the run stops, and the session ends ``Failed`` with reason ``cancelled`` as in step 4.

Restart: identity and KEM keys live in memory only, so a restarted node is a new node
(new CSR) and envelopes sealed to the old KEM key cannot be opened; the operator
re-plans and owners resubmit — or, for a ``prss`` session whose survivors kept the
inputs (step 4), the restarted node joins a re-run as a replacement. See docs/node.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import hashlib
import hmac
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pqmpc_node.crypto.envelopes import (
    EnvelopeError,
    EnvelopeHeader,
    MalformedEnvelopeError,
    ReplayError,
    ReplayGuard,
    SealedEnvelope,
    key_fingerprint,
    open_envelope,
    seal_envelope,
)
from pqmpc_node.crypto.kemkeys import KeyRetiredError, kem_public_key_from_bytes
from pqmpc_node.crypto.pki import NodeId
from pqmpc_node.crypto.suites import MLDSAPublicKey
from pqmpc_node.dealer import (
    PartyMaterial,
    PreprocessingError,
    PreprocessingMismatchError,
    open_preprocessing,
    party_provider,
)
from pqmpc_node.input_agreement import OwnerView, PartyView, agree_inputs, encode_view
from pqmpc_node.input_resharing import HeldInput, ReshareError, exchange_placements, reshare_inputs
from pqmpc_node.mpc.resharing import resharing_senders
from pqmpc_node.input_ids import InputId, InputIdError
from pqmpc_node.input_parts import assemble
from pqmpc_node.input_versions import Decision, Pending, decide
from pqmpc_node.engine import CompiledSession, PartyInputs, RunOutcome, compile_session, execute
from pqmpc_node.keystore import NodeKeys
from pqmpc_node.metrics import NodeMetrics
from pqmpc_node.mpc.backend import to_host
from pqmpc_node.mpc.channel import LostPartyError
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.domain import Domain
from pqmpc_node.mpc.errors import MacCheckError, PeerAbortedError
from pqmpc_node.mpc.fixedpoint import FixedPoint
from pqmpc_node.mpc.honest_majority import HonestMajorityProvider
from pqmpc_node.mpc.ot.provider import OtProvider
from pqmpc_node.mpc.preprocessing import AnyProvider
from pqmpc_node.mpc.sharing import AdditiveScheme, ShamirScheme
from pqmpc_node.mpc.errors import BlamedCheckError
from pqmpc_node.mpc.inputs import OwnerShares
from pqmpc_node.mpc.programs import ModelOutOfRangeError, ProgramError, model_shapes
from pqmpc_node.mpc.randomness import AesCtrRandom
from pqmpc_node.net.counters import RefusalCounters
from pqmpc_node.net.link import STREAM_LIMIT, LinkClosed, LinkConfig, LinkRefused, PeerLink
from pqmpc_node.crypto.transparency import LogForkError, require_same_history
from pqmpc_node.net.pq_channel import HELLO_TAG, Hello, PeerLostError, PqChannel
from pqmpc_node.net.tls import TlsIdentity
from pqmpc_node.payloads import DomainName, InputPayload, OutputPayload, OutputShare, PayloadError, domain_for
from pqmpc_node.rerun import RerunMismatchError, check_rerun, merge_placements, record_placements
from pqmpc_node.plan import (
    DEALER_FREE,
    PlanError,
    SessionPlan,
    check_supersedes,
    verify_cancel,
    verify_signed_plan,
)

__all__ = ["InputRejected", "Phase", "SessionError", "SessionManager", "SessionRuntime", "UnknownSessionError"]

log = logging.getLogger("pqmpc_node.sessions")


class Phase(str, enum.Enum):
    """Where a session is at this node."""

    AWAITING_INPUTS = "AwaitingInputs"
    COMPUTING = "Computing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class SessionError(Exception):
    """A session request that cannot be served; ``status`` and ``reason`` shape the HTTP answer."""

    def __init__(self, message: str, *, reason: str, status: int, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.extra = extra or {}


class UnknownSessionError(SessionError):
    """No plan for this session id at this node."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} is unknown at this node; check the id or wait for the operator's plan",
                         reason="unknown_session", status=404)


class InputRejected(SessionError):
    """An input envelope was refused."""


@dataclass(frozen=True)
class _AttemptProvider:
    """One attempt's preprocessing provider, and what the run does with a dealer-free one.

    A dealer-free provider (``prss``, ``ot``) draws on its context's channel, coins and
    MAC checks, so it is bound to the context that takes it (``bind``); afterwards the
    node counts the material it made (``made``: kind -> count, public numbers). Dealt
    material needs neither.
    """

    provider: AnyProvider
    bind: Callable[[MPCContext], None] | None = None
    made: Callable[[], dict[str, int]] | None = None


def _prss_made(provider: HonestMajorityProvider) -> dict[str, int]:
    st = provider.stats
    return {"triples": st.triples, "bits": st.bits, "reduced": st.reduced_elements}


def _ot_made(provider: OtProvider) -> dict[str, int]:
    st = provider.stats
    return {"triples": st.triples, "bits": st.bits, "extended_ots": st.extended_ots, "base_ots": st.base_ots}


def _lost_detail(exc: LostPartyError) -> str:
    """The cause of a lost party, without the ``lost party N:`` prefix a re-raise adds again."""
    return str(exc).removeprefix(f"lost party {exc.peer}: ")


ADDITIVE_LOST = ("additive sharing needs every party, so the session ends here; every owner's input is kept "
                 "secret (nothing unmasked was opened, no output was released): create a new session and the "
                 "owners submit again")
"""Why an additive session ends on a lost party (the node's message; the operator's NodeLost says the same)."""


POKE_AFTER_S = 1.0
"""How long a party waits for a lower party's link before dialing it once to wake it (:meth:`SessionManager._poke`)."""


class ForkedPeerError(ValueError):
    """A peer's CA-signed transparency log forks from this node's: the two were shown different histories."""


@dataclass
class _PartsArriving:
    """A version of one owner's input whose parts are still arriving at this node (:mod:`pqmpc_node.input_parts`)."""

    id: InputId
    """The whole input's id (its ``parts`` is 1); ``parts`` below is the signed part count."""
    parts: int
    payloads: dict[int, InputPayload] = field(default_factory=dict, repr=False)
    digests: set[str] = field(default_factory=set)

    def pending(self) -> Pending:
        return Pending(InputId(self.id.owner, self.id.tag, self.id.version, 1, self.parts), frozenset(self.payloads))


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``path`` atomically: a temporary file, fsync, rename over; the old file stays if anything fails."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)


@dataclass
class SessionRuntime:
    """Mutable state of one session at this node (owned by :class:`SessionManager`)."""

    plan: SessionPlan
    body: bytes = field(repr=False)
    party: int
    started: float
    compiled: CompiledSession = field(repr=False)
    """The plan's program, compiled once when the plan is accepted (:func:`~pqmpc_node.engine.compile_session`)."""
    phase: Phase = Phase.AWAITING_INPUTS
    reason: str = ""
    message: str = ""
    inputs: dict[str, InputPayload] = field(default_factory=dict, repr=False)
    """Each owner's held (complete) input; a table sent in parts is held assembled."""
    input_digests: dict[str, set[str]] = field(default_factory=dict)
    """SHA-256 of every envelope of each owner's held version (an exact re-post is idempotent)."""
    input_ids: dict[str, InputId] = field(default_factory=dict)
    """The held version's id per owner (content tag, version); outlives the inputs a run consumed."""
    arriving: dict[str, _PartsArriving] = field(default_factory=dict, repr=False)
    """Per owner, a version whose parts are still arriving (not used until complete)."""
    inputs_frozen: bool = False
    """The parties are committing to their inputs (:mod:`pqmpc_node.input_agreement`): hold new ones back."""
    inputs_changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    disagreement: str = ""
    """Why the parties wait instead of computing (different versions held), while they do."""
    outputs: dict[str, bytes] = field(default_factory=dict, repr=False)
    attempts: int = 0
    live: tuple[int, ...] = ()
    rejected_rows: int | None = None
    blamed_parties: tuple[int, ...] = ()
    failed_check: str = ""
    links: dict[int, PeerLink] = field(default_factory=dict, repr=False)
    incoming: dict[int, asyncio.Future[PeerLink]] = field(default_factory=dict, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    material: PartyMaterial | None = field(default=None, repr=False)
    material_digest: str = ""
    cancelled_by: str = ""
    inputs_kept: bool = False
    """Failed with too few parties to multiply but t + 1 or more left: every owner's input (and its sealed
    envelopes, and the KEM-key fence) stays here for a re-run until the session's deadline or a cancel."""
    kept_timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    reshared_from: tuple[int, ...] = ()
    """A re-run's replacement: the parties whose resharing gave it its input shares (last attempt)."""
    placements: dict[str, int] = field(default_factory=dict, repr=False)
    """Node id -> index of every party of this session's plans whose inputs this runtime carries (this plan's,
    the original one's and every accepted re-run's): a re-run may never place one of them at another index
    (:func:`pqmpc_node.rerun.check_rerun`). Kept and dropped with the inputs."""

    def cancelled(self) -> bool:
        """Whether the session ended on a cancel (the operator's, or the node's shutdown)."""
        return self.phase is Phase.FAILED and self.reason == "cancelled"

    def input_rows(self) -> dict[str, int]:
        """Rows each data owner delivered (public: every party holds shares of this length)."""
        return {o: p.rows for o, p in self.inputs.items() if p.kind == "rows"}

    def _input_status(self, owner: str, role: str) -> dict[str, Any]:
        """One owner's input here: held (``received``, ``version``, ``inputId``) and a version arriving in parts."""
        held = self.input_ids.get(owner)
        arriving = self.arriving.get(owner)
        return {
            "owner": owner, "role": role, "received": owner in self.inputs,
            "version": held.version if held is not None else None,
            "inputId": held.text() if held is not None else None,
            "arriving": None if arriving is None else {
                "version": arriving.id.version, "inputId": arriving.id.text(), "parts": arriving.parts,
                "partsReceived": len(arriving.payloads)},
        }

    def status(self) -> dict[str, Any]:
        """The public status document (no secrets, no results)."""
        p = self.plan
        return {
            "sessionId": p.session_id,
            "generation": p.generation,
            "planDigest": p.digest(),
            "phase": self.phase.value,
            "reason": self.reason,
            "message": self.message,
            "party": self.party,
            "parties": len(p.parties),
            "sharing": p.sharing,
            "security": p.security,
            "inputs": [self._input_status(i.owner, i.role) for i in p.inputs],
            "inputsAgreement": self.disagreement,
            "inputRows": self.input_rows(),
            "preprocessing": p.preprocessing,
            "preprocessingReceived": self.material is not None,
            "awaitingPreprocessing": p.preprocessing == "dealer" and self.phase is Phase.AWAITING_INPUTS
            and self.material is None and all(i.owner in self.inputs for i in p.inputs),
            "outputsReady": sorted(self.outputs),
            "liveParties": list(self.live),
            "attempts": self.attempts,
            "rejectedRows": self.rejected_rows,
            "blamedParties": list(self.blamed_parties),
            "failedCheck": self.failed_check,
            "deadline": p.deadline,
            "inputsKept": self.inputs_kept,
            "inputsKeptOwners": len(self.inputs) if self.inputs_kept else 0,
            "inputsHeldBy": list(p.inputs_held_by),
            "inputsResharedFrom": list(self.reshared_from),
        }


@dataclass(frozen=True)
class SessionSettings:
    """Tunables of session execution."""

    mesh_timeout_s: float = 30.0
    round_timeout_s: float = 120.0
    backend: str = "numpy"


class SessionManager:
    """All sessions of this node, the peer listener, and the engine runs."""

    def __init__(
        self,
        *,
        node_id: str,
        pool: str,
        keys: NodeKeys,
        signer_key: MLDSAPublicKey,
        metrics: NodeMetrics,
        counters: RefusalCounters,
        state_dir: Path,
        clock: Callable[[], dt.datetime],
        settings: SessionSettings = SessionSettings(),
    ) -> None:
        self.node_id = node_id
        self.pool = pool
        self.keys = keys
        self.signer_key = signer_key
        self.metrics = metrics
        self.counters = counters
        self.state_dir = state_dir
        self.clock = clock
        self.settings = settings
        self.sessions: dict[str, SessionRuntime] = {}
        self.replay = ReplayGuard()
        self._server: asyncio.Server | None = None
        self._accepting: set[asyncio.Task[None]] = set()
        self._pokes: set[asyncio.Task[None]] = set()

    # -- plans ------------------------------------------------------------------------

    def accept_plan(self, body: bytes) -> tuple[SessionRuntime, bool]:
        """Verify and hold a posted plan; returns (runtime, created). Raises :class:`PlanError`/:class:`SessionError`."""
        now = self.clock()
        try:
            plan = verify_signed_plan(body, signer_key=self.signer_key, pool=self.pool, node_id=self.node_id, now=now)
            held = self.sessions.get(plan.session_id)
            if not check_supersedes(plan, held.plan if held else None):
                assert held is not None  # check_supersedes returns False only for a held plan
                return held, False
        except PlanError as exc:
            self.metrics.plans_refused.labels(exc.reason).inc()
            raise
        if plan.suite is not self.keys.suite.name:
            self.metrics.plans_refused.labels("wrong_suite").inc()
            raise SessionError(f"the plan is for suite {plan.suite.value}, but this node's pool runs "
                               f"{self.keys.suite.name.value}", reason="wrong_suite", status=422)
        rerun = held is not None and held.inputs_kept and held.phase is Phase.FAILED
        if rerun:
            assert held is not None  # rerun implies a held session (mypy)
            try:
                check_rerun(plan, held.plan, party=held.party, placed_before=held.placements)
            except RerunMismatchError as exc:
                self.metrics.plans_refused.labels(exc.reason).inc()
                raise SessionError(str(exc), reason=exc.reason, status=409) from None
        elif held is not None and (held.phase is not Phase.AWAITING_INPUTS
                                   or (held.task is not None and not held.task.done())):
            raise SessionError(f"session {plan.session_id} is already {held.phase.value}; a re-plan cannot replace it",
                               reason="session_running", status=409)
        party = plan.party_of(self.node_id)
        try:
            compiled = compile_session(plan, self.settings.backend)
        except ProgramError as exc:  # the operator compiled it at admission: a plan it signed passes
            raise SessionError(f"the plan's program cannot run exactly: {exc}", reason="bad_program", status=422) from None
        try:
            self.keys.ring.fence(self._fence_id(plan.session_id, party.kem_epoch), party.kem_epoch)
        except KeyRetiredError as exc:
            raise SessionError(str(exc), reason=exc.reason, status=409) from None
        rt = SessionRuntime(plan=plan, body=body, party=party.index, started=time.monotonic(), compiled=compiled,
                            live=tuple(range(len(plan.parties))), placements=record_placements({}, plan))
        if rerun and held is not None:
            # A re-run of the failed session (check_rerun): the inputs kept here carry over (with their sealed
            # envelopes on disk and the key fence, now the new runtime's to end); no owner submits again.
            rt.inputs, rt.input_digests, rt.input_ids = held.inputs, held.input_digests, held.input_ids
            rt.placements = record_placements(held.placements, plan)
            self._hand_over_kept(held)
            log.info("session %s: re-run generation %d takes the %d input(s) kept here since generation %d failed",
                     plan.session_id, plan.generation, len(rt.inputs), held.plan.generation)
        elif held is not None and held.plan.terms_digest() == plan.terms_digest() and plan.deadline <= held.plan.deadline:
            # Same parties, program, fields and outputs, no later deadline (the operator re-sent
            # the plan): the owners consented to these terms, so the inputs accepted stay.
            rt.inputs, rt.input_digests, rt.input_ids = held.inputs, held.input_digests, held.input_ids
            rt.arriving = held.arriving
            rt.placements = record_placements(held.placements, plan)
        elif held is not None and held.inputs:
            # Other terms: an input is valid only under the plan its owner sealed it for.
            log.info("session %s: plan generation %d changes the session's terms; dropping the %d input(s) "
                     "accepted under generation %d (their owners must submit again)", plan.session_id,
                     plan.generation, len(held.inputs), held.plan.generation)
            self.replay.forget_session(plan.session_id)
        self.sessions[plan.session_id] = rt
        sdir = self._session_dir(plan.session_id)
        sdir.mkdir(parents=True, exist_ok=True)
        (sdir / "plan.json").write_bytes(body)
        log.info("session %s: plan generation %d accepted, party %d of %d", plan.session_id, plan.generation,
                 party.index, len(plan.parties))
        self._maybe_start(rt)
        return rt, True

    def get(self, session_id: str) -> SessionRuntime:
        rt = self.sessions.get(session_id)
        if rt is None:
            raise UnknownSessionError(session_id)
        return rt

    @staticmethod
    def _fence_id(session_id: str, epoch: int) -> str:
        return f"{session_id}@{epoch}"

    def _session_dir(self, session_id: str) -> Path:
        return self.state_dir / "sessions" / hashlib.sha256(session_id.encode()).hexdigest()[:32]

    # -- inputs -----------------------------------------------------------------------

    def _screen(self, rt: SessionRuntime, h: EnvelopeHeader, data: bytes) -> tuple[InputId, str]:
        """Cheap checks before opening: an exact re-post, and the version rules (:func:`decide`).

        Returns the envelope's parsed input id and the SHA-256 of its bytes; raises
        :class:`InputRejected` (with ``alreadyAccepted`` when nothing needs to change).
        """
        plan = rt.plan
        digest = hashlib.sha256(data).hexdigest()
        arriving = rt.arriving.get(h.sender)
        if digest in rt.input_digests.get(h.sender, set()) or (arriving is not None and digest in arriving.digests):
            # The very envelope accepted before (a client's retry, even after the session ended
            # and its replay ids were forgotten): idempotent, nothing changes.
            raise InputRejected(
                f"input {h.input_id!r} from {h.sender!r} was already accepted in session {plan.session_id!r}",
                reason=ReplayError.reason, status=409, extra={"alreadyAccepted": True, **self._held_extra(rt, h.sender)},
            )
        try:
            incoming = InputId.parse(h.input_id, h.sender)
        except InputIdError as exc:
            raise InputRejected(str(exc), reason="bad_input_id", status=422) from None
        decision: Decision = decide(incoming, held=rt.input_ids.get(h.sender),
                                    pending=None if arriving is None else arriving.pending(),
                                    open_for_inputs=rt.phase is Phase.AWAITING_INPUTS,
                                    closed_because=f"session {plan.session_id} is {rt.phase.value}")
        if decision.action == "already":
            raise InputRejected(f"{decision.message} in session {plan.session_id}", reason="already_accepted",
                                status=409, extra={"alreadyAccepted": True, **self._held_extra(rt, h.sender)})
        if decision.action == "refuse":
            raise InputRejected(decision.message, reason=decision.reason, status=decision.status,
                                extra={"alreadyAccepted": False, **self._held_extra(rt, h.sender)})
        if self.replay.seen(plan.session_id, h.sender, h.input_id):  # the same id, other bytes
            raise InputRejected(
                f"input {h.input_id!r} from {h.sender!r} was already accepted in session {plan.session_id!r}",
                reason=ReplayError.reason, status=409, extra={"alreadyAccepted": False},
            )
        if rt.inputs_frozen:
            raise InputRejected(f"the parties of session {plan.session_id} are committing to their inputs this "
                                "moment; retry in a second", reason="inputs_busy", status=503)
        return incoming, digest

    @staticmethod
    def _held_extra(rt: SessionRuntime, owner: str) -> dict[str, Any]:
        held = rt.input_ids.get(owner)
        return {} if held is None else {"version": held.version}

    def _decode_input(self, rt: SessionRuntime, sender: str, plaintext: bytes) -> InputPayload:
        """An opened input's payload (one part of it, for a table in parts), checked against the plan's declarations."""
        plan = rt.plan
        owner = plan.input_of(sender)
        domain: DomainName = domain_for(plan.sharing, plan.security)
        if owner.role == "data":
            payload = InputPayload.decode(plaintext, domain=domain, fields=[f.name for f in owner.fields],
                                          keyed=plan.security == "malicious")
            if payload.kind != "rows":
                raise PayloadError("a data owner must send rows")
        else:
            shapes = model_shapes(rt.compiled.program)
            payload = InputPayload.decode(plaintext, domain=domain, model_shapes=shapes,
                                          keyed=plan.security == "malicious")
            if payload.kind != "model":
                raise PayloadError("the model owner must send model parameters")
        return payload

    def _check_rows(self, rt: SessionRuntime, sender: str, payload: InputPayload) -> None:
        """A whole input's row count (a table in parts: assembled) against maxRowsPerOwner and dealt material."""
        plan = rt.plan
        if payload.kind != "rows":
            return
        if payload.rows > plan.max_rows_per_owner:
            raise InputRejected(
                f"{sender!r} sent {payload.rows} rows; the session accepts at most {plan.max_rows_per_owner} "
                "per owner (spec.maxRowsPerOwner, which the program's numbers are proven for): split the data "
                "or ask for a session with a larger maxRowsPerOwner", reason="too_many_rows", status=422)
        if rt.material is not None and rt.material.rows.get(sender) != payload.rows:
            raise InputRejected(
                f"{sender!r} sent {payload.rows} rows; the session's preprocessing was dealt for "
                f"{rt.material.rows.get(sender)} (a replacement keeps the row count once the material is dealt)",
                reason="rows_mismatch", status=422)

    def accept_input(self, session_id: str, data: bytes) -> dict[str, Any]:
        """Check, open and keep (sealed) one input envelope, a whole input or one part of it.

        See the module docstring, step 2, and :mod:`pqmpc_node.input_versions` for
        replacements: a higher signed version replaces the held input atomically (the
        held one stays until the new one is complete and stored).
        """
        rt = self.get(session_id)
        plan = rt.plan
        if plan.inputs_held_by:
            self.metrics.envelopes_refused.labels("rerun_holds_inputs").inc()
            raise InputRejected(f"session {session_id} is a re-run: its surviving parties {list(plan.inputs_held_by)} "
                                "kept every owner's input, so no owner submits again (a new version is not taken: "
                                "create a new session for other inputs)", reason="rerun_holds_inputs",
                                status=409, extra={"alreadyAccepted": False})
        try:
            env = SealedEnvelope.from_bytes(data)
            h = env.header
            incoming, digest = self._screen(rt, h, data)
            senders = {i.owner: self.keys.suite.signature.public_key_from_bytes(i.identity) for i in plan.inputs}
            opened = open_envelope(
                data, suite=self.keys.suite, session_id=plan.session_id, plan=plan.binding(), node_id=self.node_id,
                party_index=rt.party,
                senders=senders, keys=self.keys.ring, replay_guard=ReplayGuard(), now=self.clock(),
            )
            payload = self._decode_input(rt, h.sender, opened.plaintext)
            if incoming.parts > 1 and payload.kind != "rows":
                raise PayloadError("only a table is sent in parts; model parameters travel in one envelope")
            arriving: _PartsArriving | None = None
            whole: InputPayload | None = payload
            if incoming.parts > 1:
                arriving = rt.arriving.get(h.sender)
                if arriving is None or arriving.id.version != incoming.version:
                    arriving = _PartsArriving(incoming.whole(), incoming.parts)  # a newer version supersedes older parts
                got = {**arriving.payloads, incoming.part: payload}
                so_far = sum(p.rows for p in got.values())
                if so_far > plan.max_rows_per_owner or incoming.parts > plan.max_rows_per_owner:
                    raise InputRejected(  # checked as parts arrive: memory stays bounded by the session's limit
                        f"{h.sender!r}'s parts hold {so_far} rows so far in {incoming.parts} parts; the session "
                        f"accepts at most {plan.max_rows_per_owner} rows per owner (spec.maxRowsPerOwner)",
                        reason="too_many_rows", status=422)
                whole = assemble([got[i] for i in range(1, incoming.parts + 1)]) if len(got) == incoming.parts else None
            if whole is not None:
                self._check_rows(rt, h.sender, whole)
        except EnvelopeError as exc:
            self.metrics.envelopes_refused.labels(exc.reason).inc()
            raise InputRejected(str(exc), reason=exc.reason, status=422 if isinstance(exc, MalformedEnvelopeError) else 403) from None
        except InputRejected as exc:
            self.metrics.envelopes_refused.labels(exc.reason).inc()
            raise
        except (PayloadError, ProgramError, ValueError) as exc:
            self.metrics.envelopes_refused.labels("bad_payload").inc()
            raise InputRejected(f"input does not match the session's declarations: {exc}", reason="bad_payload",
                                status=422) from None
        try:
            self._store_envelope(plan.session_id, incoming, data)
            if whole is not None:
                self._store_held(plan.session_id, incoming.owner, incoming.version)
        except OSError as exc:
            self.metrics.envelopes_refused.labels("storage_error").inc()
            raise InputRejected(f"the node could not store the input ({exc.strerror or exc}); retry",
                                reason="storage_error", status=503) from None
        self.replay.record(plan.session_id, h.sender, h.input_id)
        if h.key_epoch != plan.party_of(self.node_id).kem_epoch:
            self.keys.ring.fence(self._fence_id(plan.session_id, h.key_epoch), h.key_epoch)
        previous = rt.input_ids.get(h.sender)
        if whole is None and arriving is not None:
            arriving.payloads[incoming.part] = payload
            arriving.digests.add(digest)
            rt.arriving[h.sender] = arriving
        elif whole is not None:
            rt.inputs[h.sender] = whole
            rt.input_ids[h.sender] = incoming.whole()
            rt.input_digests[h.sender] = {digest} | (arriving.digests if arriving is not None else set())
            rt.arriving.pop(h.sender, None)  # any version still arriving is older than this one (decide)
            if previous is not None:
                log.info("session %s: %s replaced its input version %d with version %d", plan.session_id, h.sender,
                         previous.version, incoming.version)
        rt.inputs_changed.set()
        self.metrics.envelopes_accepted.inc()
        self._maybe_start(rt)
        here = rt.arriving.get(h.sender)
        return {"sessionId": session_id, "owner": h.sender, "inputId": h.input_id, "keyEpoch": h.key_epoch,
                "accepted": True, "phase": rt.phase.value, "version": incoming.version, "part": incoming.part,
                "parts": incoming.parts, "complete": whole is not None,
                "partsReceived": incoming.parts if whole is not None else len(here.payloads) if here else 0,
                "replaced": previous.version if whole is not None and previous is not None else None}

    def _owner_dir(self, session_id: str, owner: str) -> Path:
        return self._session_dir(session_id) / "inputs" / hashlib.sha256(owner.encode()).hexdigest()[:32]

    def _store_envelope(self, session_id: str, incoming: InputId, data: bytes) -> None:
        """Keep one accepted (sealed) envelope under its owner's version directory, durably."""
        vdir = self._owner_dir(session_id, incoming.owner) / f"v{incoming.version}"
        vdir.mkdir(parents=True, exist_ok=True)
        _write_durably(vdir / f"part-{incoming.part}-of-{incoming.parts}.sealed", data)

    def _store_held(self, session_id: str, owner: str, version: int) -> None:
        """Make ``version`` the owner's held input on disk: the ``held`` pointer is replaced atomically, then the
        other versions' envelopes are deleted (a crash in between leaves both, never neither)."""
        odir = self._owner_dir(session_id, owner)
        _write_durably(odir / "held", f"{version}\n".encode())
        for other in odir.glob("v*"):
            if other.name != f"v{version}":
                shutil.rmtree(other, ignore_errors=True)

    # -- preprocessing ----------------------------------------------------------------

    def accept_preprocessing(self, session_id: str, body: bytes) -> dict[str, Any]:
        """Verify (the plan signer's signature), open and hold this party's preprocessing material."""
        rt = self.get(session_id)
        if rt.plan.preprocessing != "dealer":
            raise SessionError(f"session {session_id} makes its own preprocessing ({rt.plan.preprocessing!r}, no dealer); "
                               "dealt material is refused", reason="dealer_free_session", status=409)
        digest = hashlib.sha256(body).hexdigest()
        if rt.material is not None:
            if hmac.compare_digest(digest, rt.material_digest):
                return {"sessionId": session_id, "accepted": True, "alreadyAccepted": True, "phase": rt.phase.value}
            raise SessionError(f"session {session_id} already holds preprocessing material", reason="duplicate_preprocessing",
                               status=409)
        if rt.phase is not Phase.AWAITING_INPUTS:
            raise SessionError(f"session {session_id} is {rt.phase.value}; preprocessing is closed",
                               reason="session_running", status=409)
        try:
            material = open_preprocessing(body, rt.plan, suite=self.keys.suite, node_id=self.node_id,
                                          signer_key=self.signer_key, keys=self.keys.ring, now=self.clock())
        except EnvelopeError as exc:
            self.metrics.envelopes_refused.labels(f"preprocessing_{exc.reason}").inc()
            raise SessionError(f"preprocessing refused: {exc}", reason=exc.reason,
                               status=422 if isinstance(exc, MalformedEnvelopeError) else 403) from None
        except PreprocessingError as exc:
            self.metrics.envelopes_refused.labels(f"preprocessing_{exc.reason}").inc()
            raise SessionError(f"preprocessing refused: {exc}", reason=exc.reason,
                               status=409 if exc.reason == "stale_preprocessing" else 422) from None
        have = rt.input_rows()
        wrong = {o: (n, material.rows.get(o)) for o, n in have.items() if material.rows.get(o) != n}
        if wrong:
            raise SessionError(f"preprocessing was dealt for other row counts than the inputs held: {wrong}",
                               reason="rows_mismatch", status=409)
        rt.material, rt.material_digest = material, digest
        rt.inputs_changed.set()  # a party waiting for it in the inputs agreement goes on
        log.info("session %s: preprocessing accepted (%d requests, %d correction words)", session_id,
                 len(material.manifest), sum(int(st.size) for st in material.streams))
        self._maybe_start(rt)
        return {"sessionId": session_id, "accepted": True, "phase": rt.phase.value}

    def _maybe_start(self, rt: SessionRuntime) -> None:
        ready = rt.material is not None or rt.plan.preprocessing in DEALER_FREE  # dealer-free: nothing to wait for
        # A re-run's replacement takes no envelopes: it gets its shares by resharing once the run starts.
        inputs_here = rt.plan.is_replacement(rt.party) or all(i.owner in rt.inputs for i in rt.plan.inputs)
        if rt.phase is Phase.AWAITING_INPUTS and ready and rt.task is None and inputs_here:
            rt.phase = Phase.COMPUTING
            rt.task = asyncio.get_running_loop().create_task(self._run(rt))

    def _join(self, rt: SessionRuntime) -> None:
        """A peer started the session: take part in its inputs agreement even before everything is here.

        This node then links and reports what it lacks (an owner's input, a missing part,
        its material) instead of leaving the started parties waiting on a silent peer;
        the agreement keeps everyone from computing, and inputs open, until it has it all
        (:mod:`pqmpc_node.input_agreement`). The phase stays ``AwaitingInputs``.
        """
        if rt.phase is Phase.AWAITING_INPUTS and rt.task is None:
            log.info("session %s: a peer started the session; joining its inputs agreement", rt.plan.session_id)
            rt.task = asyncio.get_running_loop().create_task(self._run(rt))

    # -- cancellation -----------------------------------------------------------------

    async def cancel(self, session_id: str, body: bytes) -> dict[str, Any]:
        """Stop a session on the operator's signed request; idempotent, a finished session stays as it is."""
        rt = self.get(session_id)
        try:
            order = verify_cancel(body, signer_key=self.signer_key, session_id=rt.plan.session_id,
                                  plan_digest=rt.plan.digest(), now=self.clock())
        except PlanError as exc:
            self.metrics.plans_refused.labels(f"cancel_{exc.reason}").inc()
            status = {"malformed": 400, "unsigned": 401, "cancel_mismatch": 409}.get(exc.reason, 403)
            raise SessionError(f"cancel refused: {exc}", reason=exc.reason, status=status) from None
        answer = {"sessionId": session_id, "planDigest": rt.plan.digest()}
        if rt.phase in (Phase.SUCCEEDED, Phase.FAILED):
            if rt.inputs_kept:
                self._drop_kept(rt, "cancelled")
            return {**answer, "cancelled": rt.cancelled(), "alreadyFinished": True, "phase": rt.phase.value,
                    "reason": rt.reason}
        message = order.message or "cancelled by the operator (the MPCSession was deleted)"
        rt.cancelled_by = message
        if rt.task is not None and not rt.task.done():
            rt.task.cancel()
            # _run ends the session (Failed/cancelled, fences, envelopes, metric); never
            # await the task itself, whose CancelledError would read as this request's own.
            await asyncio.wait([rt.task], timeout=30.0)
        elif rt.task is None:
            # Not started yet (awaiting inputs or preprocessing): nothing runs, end it here.
            self._fail(rt, order.reason or "cancelled", message)
            self.metrics.sessions.labels("cancelled").inc()
            self.metrics.session_duration.labels("cancelled").observe(time.monotonic() - rt.started)
            self._end(rt)
        log.info("session %s: cancelled by the operator", session_id)
        return {**answer, "cancelled": rt.cancelled(), "alreadyFinished": False,
                "phase": rt.phase.value, "reason": rt.reason}

    # -- outputs ----------------------------------------------------------------------

    def output_for(self, session_id: str, recipient: str) -> bytes:
        """The sealed output for ``recipient``; refuses recipients the plan does not name."""
        rt = self.get(session_id)
        try:
            rt.plan.output_of(recipient)
        except KeyError:
            raise SessionError(f"{recipient!r} is not an output recipient of session {session_id}",
                               reason="not_a_recipient", status=403) from None
        if rt.phase is Phase.FAILED:
            raise SessionError(f"session {session_id} failed: {rt.message}", reason="session_failed", status=409,
                               extra={"sessionReason": rt.reason})
        if rt.phase is not Phase.SUCCEEDED:
            raise SessionError(f"session {session_id} is {rt.phase.value}; outputs are not ready yet",
                               reason="not_ready", status=409)
        return rt.outputs[recipient]

    # -- peer mesh --------------------------------------------------------------------

    def _link_config(self) -> LinkConfig:
        cert = self.keys.certificate
        return LinkConfig(tls=TlsIdentity(self.keys.identity, cert.certificate, self.keys.ca_certificate),
                          log=self.keys.log, clock=self.clock)

    def _expected_peers(self) -> set[NodeId]:
        return {NodeId(p.node_id) for rt in self.sessions.values() if rt.phase is not Phase.SUCCEEDED
                for p in rt.plan.parties if p.node_id != self.node_id}

    async def start_listener(self, host: str, port: int) -> None:
        """Listen for peer links on ``host:port``."""
        self._server = await asyncio.start_server(self._on_peer, host, port, limit=STREAM_LIMIT)

    async def _on_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        expected = self._expected_peers()
        if not self.keys.certified or not expected:
            writer.close()
            return
        try:
            link = await PeerLink.accept(reader, writer, config=self._link_config(), expected_peers=expected,
                                         counters=self.counters)
        except (LinkRefused, ConnectionError, OSError):
            return
        try:
            hello = Hello.decode(await asyncio.wait_for(link.recv(HELLO_TAG), 10.0))
            rt = self.sessions[hello.session_id]
            if rt.phase in (Phase.SUCCEEDED, Phase.FAILED):
                # Ended here: a peer dialing now runs a newer generation (a re-run) whose plan this node has
                # not taken yet. No hello back: the peer retries its dial until the plan lands.
                raise ValueError(f"session {hello.session_id} has ended here ({rt.phase.value}); no link for it")
            party = rt.plan.parties[hello.party]
            att = link.attestation()
            if att.peer_node_id != party.node_id or att.peer_fingerprint != party.cert_fingerprint:
                raise ValueError(f"peer {att.peer_node_id} is not party {hello.party} of the plan")
            self._same_log(party.node_id, hello)
            await link.send(HELLO_TAG, self._hello(rt))
            self._join(rt)  # a peer runs the session: take part, even if this node lacks inputs yet
            if hello.party > rt.party:
                # A higher party only dials to wake this one (see _poke): the real link is this node's own dial.
                await link.close()
                return
            fut = rt.incoming.setdefault(hello.party, asyncio.get_running_loop().create_future())
            if fut.done():
                raise ValueError(f"party {hello.party} connected twice")
            fut.set_result(link)
        except (ValueError, KeyError, IndexError, TimeoutError, Exception) as exc:  # noqa: BLE001 - any bad hello closes the link
            reason = "log_fork" if isinstance(exc, ForkedPeerError) else "unexpected_session"
            self.counters.count(reason, link.peer_node_id)  # authenticated by the handshake
            log.warning("peer link refused after handshake: %s", exc)
            await link.close()

    def _hello(self, rt: SessionRuntime) -> bytes:
        chain = self.keys.log.chain()
        return Hello(rt.plan.session_id, rt.party, len(chain), chain[-1] if chain else b"").encode()

    def _same_log(self, peer_node: str, hello: Hello) -> None:
        """Refuse a peer whose log head is not in this node's history (when this node's log is at least as long).

        A longer peer log is checked by the peer itself (it receives this node's head).
        """
        chain = self.keys.log.chain()
        if not hello.log_size or hello.log_size > len(chain):
            return
        try:
            require_same_history(chain, chain[: hello.log_size - 1] + (hello.log_head,), what=f"peer {peer_node}")
        except LogForkError:
            self.metrics.log_forks.labels(peer_node).inc()
            log.error("peer %s shows a transparency log that forks from this node's at entry %d: link refused",
                      peer_node, hello.log_size - 1)
            raise ForkedPeerError(f"peer {peer_node}'s transparency log forks from this node's at entry "
                                  f"{hello.log_size - 1} (the pool CA signed two histories)") from None

    async def _dial(self, rt: SessionRuntime, peer: int, deadline: float) -> PeerLink:
        p = rt.plan.parties[peer]
        delay = 0.05
        while True:
            try:
                link = await PeerLink.connect(p.address, p.peer_port, config=self._link_config(),
                                              expected_peer=NodeId(p.node_id), counters=self.counters)
                if link.attestation().peer_fingerprint != p.cert_fingerprint:
                    await link.close()
                    raise LinkRefused(f"peer {p.node_id} presents a certificate other than the plan's", "wrong_fingerprint")
                await link.send(HELLO_TAG, self._hello(rt))
                try:
                    answer = Hello.decode(await asyncio.wait_for(link.recv(HELLO_TAG), 10.0))
                    if answer.session_id != rt.plan.session_id:
                        raise ValueError(f"peer {p.node_id} answered for session {answer.session_id!r}")
                    self._same_log(p.node_id, answer)
                except ForkedPeerError as exc:
                    await link.close()
                    raise PeerLostError(peer, str(exc)) from None  # no retry: the histories will not converge
                except (ValueError, TimeoutError, LinkClosed) as exc:
                    await link.close()
                    raise LinkRefused(f"peer {p.node_id}: {exc}", "bad_hello") from None
                return link
            except (LinkRefused, ConnectionError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise PeerLostError(peer, f"could not link to {p.node_id} at {p.address}:{p.peer_port}: {exc}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _poke(self, rt: SessionRuntime, peer: int, deadline: float) -> None:
        """Dial a lower party that has not linked to this one yet, only to tell it the session runs (it joins:
        :meth:`_join`) and then dials this node itself. Best effort: a peer that is gone is found out by the wait."""
        p = rt.plan.parties[peer]
        await asyncio.sleep(POKE_AFTER_S)  # a party that started with this one links sooner: no poke then
        delay = 0.2
        while time.monotonic() + delay < deadline and peer not in rt.links and not rt.incoming[peer].done():
            try:
                link = await PeerLink.connect(p.address, p.peer_port, config=self._link_config(),
                                              expected_peer=NodeId(p.node_id), counters=self.counters)
            except (LinkRefused, ConnectionError, OSError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            try:
                await link.send(HELLO_TAG, self._hello(rt))
                await asyncio.wait_for(link.recv(HELLO_TAG), 10.0)
            except (LinkClosed, LinkRefused, TimeoutError, ConnectionError, OSError):
                pass  # told or not, the wait for its link decides
            finally:
                await link.close()
            return

    async def _mesh(self, rt: SessionRuntime) -> None:
        """Links to every live peer: dial higher indexes, wait for lower ones."""
        deadline = time.monotonic() + self.settings.mesh_timeout_s
        loop = asyncio.get_running_loop()
        for peer in rt.live:
            if peer == rt.party or peer in rt.links:
                continue
            if peer > rt.party:
                rt.links[peer] = await self._dial(rt, peer, deadline)
            else:
                fut = rt.incoming.setdefault(peer, loop.create_future())
                if not fut.done():
                    poke = loop.create_task(self._poke(rt, peer, deadline))
                    self._pokes.add(poke)
                    poke.add_done_callback(self._pokes.discard)
                try:
                    rt.links[peer] = await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise PeerLostError(peer, f"party {peer} ({rt.plan.parties[peer].node_id}) never linked") from None
            att = rt.links[peer].attestation()
            self.metrics.link_info.labels(att.peer_node_id, att.group, att.signature_algorithm).set(1)

    # -- computation ------------------------------------------------------------------

    async def _run(self, rt: SessionRuntime) -> None:
        plan = rt.plan
        outcome = "failed"
        try:
            remaining = plan.deadline - self.clock().timestamp()
            await asyncio.wait_for(self._attempts(rt), max(1.0, remaining))
            outcome = "succeeded"
            rt.phase = Phase.SUCCEEDED
        except MacCheckError as exc:
            self.metrics.mac_failures.inc()
            rt.failed_check = exc.check  # which check caught it (MAC, canonical element, owner input key...)
            if isinstance(exc, BlamedCheckError):
                rt.blamed_parties = tuple(p for p in exc.blamed_parties if p != rt.party)
            self._fail(rt, "mac_check_failed", str(exc))
            outcome = "mac_check_failed"
        except PreprocessingMismatchError as exc:
            self._fail(rt, "preprocessing_mismatch", str(exc))
            outcome = "preprocessing_mismatch"
        except LostPartyError as exc:
            self._fail(rt, "peer_lost", str(exc))
            outcome = "peer_lost"
        except ReshareError as exc:  # a re-run's replacement could not use the holders' resharing
            self._fail(rt, "reshare_failed", str(exc))
            outcome = "reshare_failed"
        except TimeoutError:
            if rt.disagreement:  # the parties were still waiting for an owner to complete a replacement
                self._fail(rt, "inputs_disagree", f"session passed its deadline ({plan.deadline}) before its parties "
                           f"held the same inputs; {rt.disagreement.split(': ', 1)[-1]}")
                outcome = "inputs_disagree"
            else:
                self._fail(rt, "deadline_exceeded", f"session passed its deadline ({plan.deadline})")
                outcome = "deadline_exceeded"
        except ModelOutOfRangeError as exc:  # the model owner's parameters break the program's proven bounds
            self._fail(rt, "model_out_of_range", str(exc))
            outcome = "model_out_of_range"
        except asyncio.CancelledError:
            self._fail(rt, "cancelled", rt.cancelled_by or "the node is shutting down")
            outcome = "cancelled"
            raise
        except Exception as exc:  # noqa: BLE001 - any engine failure ends the session with its reason
            log.exception("session %s: engine error", plan.session_id)
            self._fail(rt, "engine_error", f"{type(exc).__name__}: {exc}")
            outcome = "engine_error"
        finally:
            self.metrics.sessions.labels(outcome).inc()
            self.metrics.session_duration.labels(outcome).observe(time.monotonic() - rt.started)
            for link in rt.links.values():
                await link.close()
            rt.links.clear()
            self._end(rt)
            log.info("session %s: %s %s", plan.session_id, rt.phase.value, rt.message)

    def _fail(self, rt: SessionRuntime, reason: str, message: str) -> None:
        rt.phase, rt.reason, rt.message = Phase.FAILED, reason, message

    def _end(self, rt: SessionRuntime) -> None:
        plan = rt.plan
        rt.arriving.clear()
        rt.inputs_frozen = False
        self.replay.forget_session(plan.session_id)  # inputs are closed for good; the guard stays bounded
        rt.material = None  # the seed and corrections are single-use
        if rt.inputs_kept:
            # Kept for a re-run (_attempts): until the session's deadline at most, never for good.
            left = max(0.0, plan.deadline - self.clock().timestamp())
            rt.kept_timer = asyncio.get_running_loop().call_later(left, self._drop_kept, rt, "deadline")
            log.info("session %s: keeping the %d owner input(s) for a re-run until the deadline (%d)",
                     plan.session_id, len(rt.inputs), plan.deadline)
            return
        self._release_inputs(rt)

    def _drop_kept(self, rt: SessionRuntime, why: str) -> None:
        """End the keeping of a failed session's inputs (its deadline passed, or a cancel came)."""
        if not rt.inputs_kept:
            return
        log.info("session %s: dropping the inputs kept for a re-run (%s)", rt.plan.session_id, why)
        self._release_inputs(rt)

    def _hand_over_kept(self, rt: SessionRuntime) -> None:
        """A re-run took the kept inputs: this runtime no longer keeps (or deletes) them."""
        if rt.kept_timer is not None:
            rt.kept_timer.cancel()
            rt.kept_timer = None
        rt.inputs_kept = False

    def _release_inputs(self, rt: SessionRuntime) -> None:
        """Release the session's key fences and delete its stored envelopes and held inputs."""
        plan = rt.plan
        self._hand_over_kept(rt)
        for p in plan.parties:
            self.keys.ring.release(self._fence_id(plan.session_id, p.kem_epoch))
        for epoch in range(1, self.keys.current_epoch() + 2):
            self.keys.ring.release(self._fence_id(plan.session_id, epoch))
        shutil.rmtree(self._session_dir(plan.session_id) / "inputs", ignore_errors=True)
        rt.inputs.clear()
        rt.placements.clear()

    async def _attempts(self, rt: SessionRuntime) -> None:
        plan = rt.plan
        while True:
            try:
                await self._mesh(rt)
                outcome, ctx, channel = await self._compute(rt)
                # Closing barrier: a peer closes its links only once every party is done, so no
                # in-flight message is cut off by a close (PeerLink drops bytes that share a read
                # with the peer's close_notify).
                await channel.send_many("session/finished", {p: b"" for p in rt.live if p != rt.party})
                await channel.receive_many("session/finished", [p for p in rt.live if p != rt.party])
                channel.release()
                self._record_traffic(plan, channel)
                break
            except LostPartyError as exc:  # a broken link, or a party that stopped answering mid-check
                self.metrics.peers_lost.labels(plan.parties[exc.peer].node_id).inc()
                lost = rt.links.pop(exc.peer, None)
                if lost is not None:
                    await lost.close()
                survivors = tuple(p for p in rt.live if p != exc.peer)
                if plan.sharing != "shamir":
                    raise PeerLostError(exc.peer, f"{_lost_detail(exc)}; {ADDITIVE_LOST}") from None
                if len(survivors) < plan.threshold + 1:
                    raise
                if plan.preprocessing == "prss" and len(survivors) < 2 * plan.threshold + 1:
                    rt.live = survivors
                    rt.inputs_kept = all(i.owner in rt.inputs for i in plan.inputs)  # t + 1 shares define each input
                    kept = (f"; every owner's input stays at the surviving parties {list(survivors)} until the "
                            f"session's deadline, so a re-run with a replacement node needs no resubmission"
                            if rt.inputs_kept else "")
                    raise PeerLostError(exc.peer, f"{_lost_detail(exc)}; dealer-free multiplication needs 2t + 1 = "
                                        f"{2 * plan.threshold + 1} live parties and only {len(survivors)} remain "
                                        f"(a session survives a lost node only where n >= 2t + 2){kept}") from None
                if plan.preprocessing == "dealer" and (rt.material is None or rt.attempts >= len(rt.material.seeds)):
                    raise PeerLostError(exc.peer, f"{_lost_detail(exc)}; no fresh preprocessing is left for another attempt "
                                        "(a restart never reuses material)") from None
                log.warning("session %s: %s; carrying on with parties %s", plan.session_id, exc, survivors)
                rt.live = survivors
                rt.incoming.pop(exc.peer, None)
        rt.rejected_rows = outcome.result.rejected_rows
        self.metrics.rows_rejected.inc(outcome.result.rejected_rows)
        self._seal_outputs(rt, outcome)

    async def _compute(self, rt: SessionRuntime) -> tuple[RunOutcome, MPCContext, PqChannel]:
        plan = rt.plan
        n = len(plan.parties)
        rt.attempts += 1
        cfg = rt.compiled.config
        domain = cfg.domain()
        channel = PqChannel(party=rt.party, n=n, links={p: rt.links[p] for p in rt.live if p != rt.party},
                            attempt=rt.attempts, round_timeout_s=self.settings.round_timeout_s)
        try:
            await self._agree_inputs(rt, channel)
            if any(plan.is_replacement(p) for p in rt.live):
                await self._reshare(rt, channel)
        except BaseException:
            channel.release()
            raise
        self.metrics.preprocessing_sessions.labels(plan.preprocessing).inc()
        try:
            attempt = await self._provider(rt, cfg, domain, channel)  # fresh per attempt
            ctx = MPCContext(party=rt.party, channel=channel, domain=domain, scheme=cfg.scheme(),
                             provider=attempt.provider, rng=AesCtrRandom.from_os(), security=plan.security,
                             fixed=FixedPoint(plan.frac_bits), live=rt.live)
            if attempt.bind is not None:
                attempt.bind(ctx)
            outcome = await execute(ctx, rt.compiled.program, rt.compiled.fields, self._party_inputs(rt),
                                    rt.compiled.requests)
            if attempt.made is not None:
                for kind, count in attempt.made().items():
                    self.metrics.preprocessing_material.labels(plan.preprocessing, kind).inc(count)
        except MacCheckError as exc:
            # Tell the others (so they stop on a check too, not on a lost party); a notice
            # received is answered with one, so nobody closes a link under a notice in flight.
            await channel.abort("peer-abort" if isinstance(exc, PeerAbortedError) else exc.check)
            channel.release()
            raise
        except BaseException:
            channel.release()
            raise
        return outcome, ctx, channel

    async def _agree_inputs(self, rt: SessionRuntime, channel: PqChannel) -> None:
        """The attempt's first step: the live parties agree on every owner's input version
        (:mod:`pqmpc_node.input_agreement`); until they do, inputs stay open for the owner to
        complete a replacement. Agreed, inputs close and the run goes on with exactly these."""
        plan = rt.plan

        def view() -> bytes:
            rt.inputs_changed.clear()  # a change after this snapshot wakes the wait below
            owners = {}
            for i in plan.inputs:
                held, payload, arriving = rt.input_ids.get(i.owner), rt.inputs.get(i.owner), rt.arriving.get(i.owner)
                owners[i.owner] = OwnerView(
                    held.version if held else 0, held.tag if held else "", payload.rows if payload else 0,
                    arriving.id.version if arriving else 0, len(arriving.payloads) if arriving else 0,
                    arriving.parts if arriving else 0)
            return encode_view(PartyView(owners, rt.material is not None or plan.preprocessing in DEALER_FREE,
                                         reshared=plan.is_replacement(rt.party)))

        def freeze(on: bool) -> None:
            rt.inputs_frozen = on

        def waiting(why: str) -> None:
            if why != rt.disagreement:
                log.warning("session %s: %s", plan.session_id, why)
            rt.phase, rt.message, rt.disagreement = Phase.AWAITING_INPUTS, why, why

        async def changed(timeout: float) -> None:
            try:
                await asyncio.wait_for(rt.inputs_changed.wait(), timeout)
            except TimeoutError:
                pass

        await agree_inputs(channel, peers=[p for p in rt.live if p != rt.party], view=view, freeze=freeze,
                           waiting=waiting, changed=changed, node_of=lambda p: plan.parties[p].node_id)
        if rt.disagreement:
            log.info("session %s: the parties now hold the same inputs; computing", plan.session_id)
            rt.message = ""
        # Nothing awaits between the last commit and here: the inputs agreed are the inputs used.
        rt.phase, rt.inputs_frozen, rt.disagreement = Phase.COMPUTING, False, ""

    async def _reshare(self, rt: SessionRuntime, channel: PqChannel) -> None:
        """A re-run's step after the inputs agreement: the holders give each replacement its shares
        (:mod:`pqmpc_node.input_resharing`); the engine's input authentication then checks them."""
        plan = rt.plan
        replacements = [p for p in rt.live if plan.is_replacement(p)]
        held = {} if plan.is_replacement(rt.party) else {
            i.owner: HeldInput(rt.input_ids[i.owner], rt.inputs[i.owner]) for i in plan.inputs}

        def validate(owner: str, payload: InputPayload) -> InputPayload:
            decoded = self._decode_input(rt, owner, payload.encode())  # an owner's envelope gets the same checks
            self._check_rows(rt, owner, decoded)
            return decoded

        try:
            got = await reshare_inputs(channel, threshold=plan.threshold, live=rt.live, replacements=replacements,
                                       owners=[i.owner for i in plan.inputs], held=held,
                                       rng=AesCtrRandom.from_os(), validate=validate)
            # The session's earlier generations, as the holders saw them: this replacement, a holder in a later
            # re-run, refuses to let any of their nodes move to another index (check_rerun).
            reports = await exchange_placements(channel, live=rt.live, replacements=replacements,
                                                placements=rt.placements)
        except (ReshareError, PayloadError, InputRejected) as exc:
            raise ReshareError(f"resharing the kept inputs to the replacement failed: {exc}") from None
        if reports:
            rt.placements = merge_placements(rt.placements, reports)
        if got is not None:
            rt.inputs = {o: h.payload for o, h in got.items()}
            rt.input_ids = {o: h.id for o, h in got.items()}
            rt.reshared_from = resharing_senders([p for p in rt.live if not plan.is_replacement(p)], plan.threshold)
            log.info("session %s: got the shares of %d owner input(s) by resharing from parties %s", plan.session_id,
                     len(got), list(rt.reshared_from))

    async def _provider(self, rt: SessionRuntime, cfg: EngineConfig, domain: Domain,
                        channel: PqChannel) -> _AttemptProvider:
        """This attempt's preprocessing: the dealt material, or a dealer-free provider set up now with the live
        parties (PRSS keys for ``prss``; base OTs and OT extension for ``ot``)."""
        plan = rt.plan
        session = f"{plan.session_id}/attempt-{rt.attempts}"
        authenticated = plan.security == "malicious"
        scheme = cfg.scheme()
        if plan.preprocessing == "prss":
            if not isinstance(scheme, ShamirScheme):  # the plan's own consistency check refuses this
                raise ValueError("dealer-free 'prss' preprocessing needs Shamir sharing")
            hm = await HonestMajorityProvider.create(channel, domain=domain, scheme=scheme, live=rt.live,
                                                     session=session, authenticated=authenticated)
            return _AttemptProvider(hm, bind=hm.bind, made=lambda: _prss_made(hm))
        if plan.preprocessing == "ot":
            if not isinstance(scheme, AdditiveScheme):  # the plan's own consistency check refuses this
                raise ValueError("dealer-free 'ot' preprocessing needs additive sharing")
            ot = await OtProvider.create(channel, domain=domain, scheme=scheme, live=rt.live, session=session,
                                         authenticated=authenticated)
            for seconds in ot.stats.base_ot_seconds:
                self.metrics.ot_base_seconds.observe(seconds)
            return _AttemptProvider(ot, bind=ot.bind, made=lambda: _ot_made(ot))
        if rt.material is None:  # _maybe_start waits for it
            raise RuntimeError("dealt preprocessing missing at start")
        return _AttemptProvider(party_provider(plan, rt.material, cfg, domain.xp, attempt=rt.attempts))

    def _party_inputs(self, rt: SessionRuntime) -> PartyInputs:
        """The owners' raw shares held here, as the engine takes them (kept for every attempt)."""
        plan = rt.plan
        names = [f.name for f in plan.data_fields()]
        data = []
        for i in plan.inputs:
            if i.role != "data":
                continue
            p = rt.inputs[i.owner]
            tags = None if p.tags is None else np.stack([p.tags[f] for f in names])
            data.append(OwnerShares(i.owner, np.stack([p.columns[f] for f in names]), tags, p.key))
        model = None
        for i in plan.inputs:
            if i.role == "model":
                p = rt.inputs[i.owner]
                keys = sorted(p.params)
                flat = np.concatenate([p.params[k].reshape(-1) for k in keys])
                tags = None if p.tags is None else np.concatenate([p.tags[k].reshape(-1) for k in keys])
                model = OwnerShares(i.owner, flat, tags, p.key)
        return PartyInputs(data, model)

    def _record_traffic(self, plan: SessionPlan, channel: PqChannel) -> None:
        t = channel.traffic
        for wait in t.round_waits:
            self.metrics.round_latency.observe(wait)
        for peer, waits in t.peer_waits.items():
            histogram = self.metrics.peer_wait.labels(plan.parties[peer].node_id)
            for wait in waits:
                histogram.observe(wait)
        for peer in set(t.sent) | set(t.received):
            node = plan.parties[peer].node_id
            sent, recv = t.sent.get(peer, 0), t.received.get(peer, 0)
            self.metrics.peer_bytes.labels(node, "sent").inc(sent)
            self.metrics.peer_bytes.labels(node, "received").inc(recv)
            self.metrics.traffic_deviation.labels(node).set(abs(recv - sent) / max(sent, 1))

    def _seal_outputs(self, rt: SessionRuntime, outcome: RunOutcome) -> None:
        """Seal each recipient's checked output shares to its KEM key; only what the policy names."""
        plan = rt.plan
        suite = self.keys.suite
        domain = domain_for(plan.sharing, plan.security)
        result = outcome.result
        for out in plan.outputs:
            shares: dict[str, OutputShare] = {}
            for name, share in outcome.delivered.get(out.recipient, {}).items():
                kind: Literal["fixed", "integer"] = "integer" if name in result.integer_outputs else "fixed"
                shares[name] = OutputShare(kind, np.asarray(to_host(share.value), dtype=np.uint64),
                                           None if share.key is None else np.asarray(to_host(share.key), dtype=np.uint64),
                                           None if share.tag is None else np.asarray(to_host(share.tag), dtype=np.uint64))
            public = {name: _jsonable(v) for name, v in result.public.items() if name in out.allow}
            undefined = tuple(sorted(n for n in result.undefined if n in out.allow))
            payload = OutputPayload(plan.session_id, rt.party, domain, plan.sharing, plan.threshold, plan.frac_bits,
                                    shares, public, undefined, result.valid_rows)
            header = EnvelopeHeader(
                suite=suite.name, session_id=plan.session_id, node_id=out.recipient, party_index=rt.party,
                input_id=f"output/{self.node_id}", key_epoch=1, sender=self.node_id,
                sender_key_fingerprint=key_fingerprint(self.keys.identity.public_key),
                plan_digest=plan.binding()[0], generation=plan.generation,
            )
            recipient_key = kem_public_key_from_bytes(suite.envelope_kem, out.kem_public_key)
            sealed = seal_envelope(payload.encode(), suite=suite, header=header, recipient_key=recipient_key,
                                   sender_key=self.keys.identity.private_key)
            rt.outputs[out.recipient] = sealed
            out_dir = self._session_dir(plan.session_id) / "outputs"
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{hashlib.sha256(out.recipient.encode()).hexdigest()[:32]}.sealed").write_bytes(sealed)

    async def close(self) -> None:
        """Stop the listener, cancel running sessions and drop the inputs kept for re-runs.

        Kept inputs live in this process (shares in memory, the sealed envelopes and KEM-key
        fences on disk for them); a restarted node cannot take a re-run, and the deadline
        timer that would delete them dies with the event loop, so they go now.
        """
        if self._server is not None:
            self._server.close()
        for poke in list(self._pokes):
            poke.cancel()
        for rt in self.sessions.values():
            if rt.task is not None and not rt.task.done():
                rt.task.cancel()
                try:
                    await rt.task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                    pass
        for rt in self.sessions.values():
            self._drop_kept(rt, "the node is shutting down")


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v

