"""Build and sign a session's plan, and read the nodes' reports back into session status.

Contract: pure. The plan (:class:`pqmpc_node.plan.SessionPlan`) is the operator's
decision for one MPCSession — placement, program, output policy, peer identities and
key epochs — signed with the pool's plan-signing ML-DSA key; every node checks it
before it accepts anything. :func:`session_progress` folds the parties' own session
reports (``GET /v1/sessions/{id}``) into the MPCSession's phase, input progress and
result.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pqmpc_node.crypto.suites import MLDSAPrivateKey, Suite
from pqmpc_node.plan import (
    FieldDecl,
    PlanInput,
    PlanOutput,
    PlanParty,
    SessionId,
    SessionPlan,
    SignedPlan,
    sign_plan,
)
from pqmpc_operator.session_model import SessionSpec

__all__ = ["PartyNode", "Progress", "build_signed_plan", "session_progress"]

Rng = Callable[[int], bytes]
# A plan must reach the nodes soon after it is signed; they refuse it after this long.
PLAN_VALIDITY_S = 3600


@dataclass(frozen=True)
class PartyNode:
    """What the operator knows of a placed node: address, certificate, current KEM key."""

    node_id: str
    address: str
    dns_name: str
    peer_port: int
    api_port: int
    cert_fingerprint: str
    kem_epoch: int
    kem_public_key: bytes = field(repr=False)


def build_signed_plan(
    spec: SessionSpec,
    parties: Sequence[PartyNode],
    *,
    suite: Suite,
    signer: MLDSAPrivateKey,
    generation: int,
    now: dt.datetime,
    deadline_at: dt.datetime,
    rng: Rng,
    inputs_held_by: Sequence[int] = (),
) -> SignedPlan:
    """The signed plan for ``spec`` on ``parties`` (party ``i`` is ``parties[i]``).

    Steps: (1) list the parties with their certified identities and KEM key epochs;
    (2) copy inputs (owners' ML-DSA keys and declared columns) and outputs (recipients'
    KEM keys and allow-lists); (3) sign the canonical plan with the plan-signing key.
    The plan names the provider (``spec.preprocessing``). A dealer session's material is
    dealt later, per party, once the row counts are known (:func:`pqmpc_node.dealer.deal`);
    a dealer-free session's (``ot``, ``prss``) is made by the parties. Either way no
    material travels in the plan. ``inputs_held_by``: a re-run's holders, the parties that
    kept every owner's input (:mod:`pqmpc_node.rerun`).
    """
    plan_parties = tuple(
        PlanParty(index=i, node_id=p.node_id, address=p.address, dns_name=p.dns_name, peer_port=p.peer_port,
                  api_port=p.api_port, cert_fingerprint=p.cert_fingerprint, kem_epoch=p.kem_epoch)
        for i, p in enumerate(parties)
    )
    inputs = tuple(
        PlanInput(i.owner, i.identity, i.role, tuple(FieldDecl(n, lo, hi, d) for n, lo, hi, d in i.fields))
        for i in spec.inputs
    )
    outputs = tuple(PlanOutput(o.recipient, o.kem_public_key, o.allow) for o in spec.outputs)
    issued = int(now.timestamp())
    plan = SessionPlan(
        session_id=SessionId(spec.session_id),
        pool=spec.pool,
        namespace=spec.namespace,
        generation=generation,
        issued_at=issued - 1,
        not_after=issued + PLAN_VALIDITY_S,
        deadline=max(int(deadline_at.timestamp()), issued + 1),
        parties=plan_parties,
        sharing=spec.sharing,
        threshold=spec.threshold,
        security=spec.security,
        program=dict(spec.program),
        inputs=inputs,
        outputs=outputs,
        frac_bits=spec.frac_bits,
        max_rows_per_owner=spec.max_rows_per_owner,
        suite=suite.name,
        preprocessing=spec.preprocessing,
        inputs_held_by=tuple(inputs_held_by),
    )
    return sign_plan(plan, signer)


@dataclass(frozen=True)
class Progress:
    """The session as the parties report it."""

    phase: str
    reason: str
    message: str
    inputs: list[dict[str, Any]]
    rejected_rows: int | None
    outputs_ready: tuple[str, ...]
    input_rows: Mapping[str, int] | None = None


def session_progress(spec: SessionSpec, reports: Mapping[str, Mapping[str, Any] | None]) -> Progress:
    """Fold the parties' reports (node id -> report, None when unreachable) into one view.

    A party that failed fails the session (its reason wins); the session has succeeded
    when every reachable party has and none is missing — except that a Shamir session
    succeeds once ``t + 1`` parties have (it tolerates lost parties by design); it
    computes while any party computes; otherwise it awaits inputs (the message is a party's
    ``inputsAgreement`` when the parties wait for an owner to complete a replacement or a
    part at some of them). An input counts as
    received when every reachable party has it. Only a session on the dealer waits for
    preprocessing: a party of a dealer-free session (``ot``, ``prss``) that reports
    ``awaitingPreprocessing`` is not believed (nothing is ever dealt to it).
    """
    dealt = spec.preprocessing == "dealer"
    live = {n: r for n, r in reports.items() if r is not None}
    failed = [r for r in live.values() if r.get("phase") == "Failed"]
    succeeded = [r for r in live.values() if r.get("phase") == "Succeeded"]
    need = spec.threshold + 1 if spec.sharing == "shamir" else len(reports)
    if failed and not (spec.sharing == "shamir" and len(succeeded) >= need):
        # A party whose check caught a cheat speaks for the session (a cheater's own
        # report, e.g. a lost link once the others aborted, must not hide why).
        first = next((r for r in failed if r.get("failedCheck")), failed[0])
        phase, reason, message = "Failed", str(first.get("reason") or "PartyFailed"), str(first.get("message") or "")
        if first.get("failedCheck"):
            message = f"check {first['failedCheck']!r} caught a deviation: {message}"
    elif len(succeeded) >= need and len(succeeded) == len(live):
        phase, reason, message = "Succeeded", "Completed", f"{len(succeeded)}/{len(reports)} parties finished"
    elif dealt and any(r.get("awaitingPreprocessing") for r in live.values()):
        phase, reason, message = "Preprocessing", "Dealing", "all inputs in; dealing each party its preprocessing"
    elif any(r.get("phase") == "Computing" for r in live.values()):
        phase, reason, message = "Computing", "Computing", f"{len(live)}/{len(reports)} parties reachable"
    else:
        phase, reason, message = "AwaitingInputs", "AwaitingInputs", "waiting for every data owner's shares"
        # Parties that hold different versions of an input (a replacement that reached only some) say which.
        waiting = next((str(r["inputsAgreement"]) for r in live.values() if r.get("inputsAgreement")), "")
        if waiting:
            message = waiting
    inputs = []
    for inp in spec.inputs:
        got = sum(
            1 for r in live.values()
            for i in r.get("inputs") or [] if i.get("owner") == inp.owner and i.get("received")
        )
        inputs.append({"owner": inp.owner, "role": inp.role, "received": bool(live) and got == len(live),
                       "parties": got})
    rejected = next((r.get("rejectedRows") for r in live.values() if r.get("rejectedRows") is not None), None)
    ready = tuple(sorted({o for r in live.values() for o in r.get("outputsReady") or []}))
    rows = next((r.get("inputRows") for r in live.values() if dealt and r.get("awaitingPreprocessing")), None)
    return Progress(phase, reason, message, inputs, None if rejected is None else int(rejected), ready,
                    None if rows is None else {str(k): int(v) for k, v in dict(rows).items()})
