"""Owners' inputs no node can alter, and restarts that never reuse material (finding 3).

A node that shifts its share of an owner's input (through its masked re-input, or by
altering the raw shares the owner sealed to it, the value, the tag or the key) is caught
by the owner-key check before the valid count (or anything else unmasked) opens, in
additive and Shamir sessions, in a first attempt and in a restart with fewer parties.
An owner that sends Shamir shares not on one degree-t polynomial is refused (semi-honest
and malicious). Honest runs, restarts included, compute the plaintext answer. The dealer
deals independent material for every attempt, so a restart opens nothing an earlier
attempt opened.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_cheats import (  # noqa: E402
    FIELDS,
    OWNERS,
    PROGRAM,
    add_to_first,
    decoded,
    label_of,
    owner_shares,
    plaintext,
    run,
)
from pqmpc_node.mpc.numerics import decode_exact  # noqa: E402
from pqmpc_node.mpc.programs import compile_program, encode_column, output_decodings  # noqa: E402
from pqmpc_node.crypto.kemkeys import KemKeyPair  # noqa: E402
from pqmpc_node.crypto.suites import SuiteName, get_suite  # noqa: E402
from pqmpc_node.dealer import attempt_count, deal, open_preprocessing, party_provider
from pqmpc_node.engine import engine_config  # noqa: E402
from pqmpc_node.mpc.config import EngineConfig  # noqa: E402
from pqmpc_node.mpc.errors import MacCheckError  # noqa: E402
from pqmpc_node.mpc.inputs import InconsistentInputError, InputTamperedError, OwnerShares  # noqa: E402
from pqmpc_node.mpc.outputs import verify_delivered  # noqa: E402
from pqmpc_node.plan import FieldDecl, PlanInput, PlanOutput, PlanParty, SessionId, SessionPlan  # noqa: E402

CONFIGS = {
    "additive": EngineConfig(3, security="malicious"),
    "shamir": EngineConfig(3, threshold=1, sharing="shamir", security="malicious"),
    "shamir-restart": EngineConfig(4, threshold=1, sharing="shamir", security="malicious"),
}
LIVE = {"additive": None, "shamir": None, "shamir-restart": [0, 1, 2]}  # party 3 was lost: attempt 2
CHEATER = 2


def _assert_caught(r: object, owners: tuple[str, ...] = ("bank-a", "bank-b")) -> None:
    """Every honest party aborts on the owner-key check, before any unmasked opening."""
    for p in r.honest(CHEATER):  # type: ignore[attr-defined]
        err = r.error_at(p)  # type: ignore[attr-defined]
        assert isinstance(err, InputTamperedError), err
        assert err.check == "owner-input-key" and set(err.owners) <= set(owners) and err.owners, err
        assert "altered its share" in str(err)
        sent = [label_of(t) for t in r.sent[p]]  # type: ignore[attr-defined]
        assert "valid-count" not in sent and "output-keys" not in sent, "something unmasked opened first"


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_node_lying_in_its_reinput_is_caught_by_the_owner_key(kind: str) -> None:
    """The node re-inputs ``x_i + 1`` consistently (same ``d`` to every peer and in its own share)."""
    r = run(CONFIGS[kind], cheater=CHEATER, shift_own_reinput=1, live=LIVE[kind])
    _assert_caught(r)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_self_inconsistent_reinput_is_caught(kind: str) -> None:
    """The node sends a shifted ``d`` but keeps the true one for itself: caught before anything unmasked opens."""
    r = run(CONFIGS[kind], cheater=CHEATER, tamper=add_to_first(f"input/{CHEATER}", 1), live=LIVE[kind])
    for p in r.honest(CHEATER):
        assert isinstance(r.error_at(p), MacCheckError), r.error_at(p)
        sent = [label_of(t) for t in r.sent[p]]
        assert "valid-count" not in sent and "output-keys" not in sent


@pytest.mark.parametrize("part", ["values", "tags", "key"])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_node_altering_the_owner_shares_it_holds_is_caught(kind: str, part: str) -> None:
    """A raw share off the owner's polynomial (Shamir, more than t + 1 live) fails the degree check;
    otherwise the owner-key check refuses it. Either names the owner, before anything unmasked opens."""
    def alter(o: OwnerShares) -> OwnerShares:
        bumped = getattr(o, part).copy()
        bumped.reshape(-1)[-1] = (int(bumped.reshape(-1)[-1]) + 12345) % (2**61 - 1)
        return replace(o, **{part: bumped})

    r = run(CONFIGS[kind], cheater=CHEATER, alter_inputs=alter, live=LIVE[kind])
    for p in r.honest(CHEATER):
        err = r.error_at(p)
        expected = (InputTamperedError,) if kind == "additive" or part != "values" else (InconsistentInputError,)
        assert isinstance(err, expected), err
        assert err.owners, err  # type: ignore[attr-defined]
        sent = [label_of(t) for t in r.sent[p]]
        assert "valid-count" not in sent and "output-keys" not in sent


@pytest.mark.parametrize("correct_guess", [True, False])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_guessing_an_input_through_the_abort_is_impossible(kind: str, correct_guess: bool) -> None:
    """The node shifts its key share by ``d`` and its tags by ``d * g`` for a guess ``g`` of the input.

    Were the key not checked like a data element, ``z = d * sum rho (x - g)`` would abort
    exactly when the guess is wrong: a one-bit oracle on the owners' inputs. The session
    must abort whatever the guess.
    """
    config = CONFIGS[kind]
    d = config.domain()
    plan = compile_program(PROGRAM, FIELDS)
    guesses = {name: encode_column(plan, "amount", np.asarray([values], dtype=np.float64), d).reshape(-1)
               for name, values in OWNERS.items()}
    if not correct_guess:
        guesses["bank-a"] = d.add(guesses["bank-a"], d.asarray(np.ones(guesses["bank-a"].shape, dtype=np.uint64)))
    delta = d.asarray(np.array([777], dtype=np.uint64))

    def alter(o: OwnerShares) -> OwnerShares:
        key = o.key.copy()  # type: ignore[union-attr]
        key[:1] = d.add(key[:1], delta)
        tags = d.add(o.tags.reshape(-1), d.mul(guesses[o.owner], delta)).reshape(o.tags.shape)  # type: ignore[union-attr]
        return replace(o, key=key, tags=tags)

    r = run(config, cheater=CHEATER, alter_inputs=alter, live=LIVE[kind])
    for p in r.honest(CHEATER):
        err = r.error_at(p)
        assert isinstance(err, InputTamperedError), err
        assert set(err.owners) == {"bank-a", "bank-b"}, err


@pytest.mark.parametrize("security", ["semi-honest", "malicious"])
def test_owner_with_inconsistent_shamir_shares_is_refused(security: str) -> None:
    config = EngineConfig(4, threshold=1, sharing="shamir", security=security)  # type: ignore[arg-type]
    inputs = owner_shares(config, OWNERS, inconsistent=("bank-b", 3))
    r = run(config, inputs=inputs)
    for p in r.outcomes:
        err = r.error_at(p)
        assert isinstance(err, InconsistentInputError), err
        assert err.owners == ("bank-b",) and err.check == "owner-input-degree"


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_honest_runs_compute_the_plaintext_answer(kind: str) -> None:
    r = run(CONFIGS[kind], live=LIVE[kind])
    ctx = r.contexts[0]
    outcomes = r.outcomes
    assert all(not isinstance(o, BaseException) for o in outcomes.values()), outcomes
    y = verify_delivered(ctx.domain, ctx.scheme, {p: o.delivered["analyst"]["sum(amount)"] for p, o in outcomes.items()},  # type: ignore[union-attr]
                         authenticated=True)
    assert decoded("sum(amount)", y, ctx.domain) == plaintext()["sum(amount)"]


@pytest.mark.parametrize("label", ["input-coins/reveal", "before-count/coins/reveal", "before-outputs/sigma/reveal"])
def test_party_that_commits_then_withholds_its_reveal_ends_the_attempt(label: str) -> None:
    """Withholding a reveal after seeing the others' would choose between two outcomes of the
    coins: the honest parties discard them and end the attempt (a Shamir node restarts without it)."""
    from pqmpc_node.mpc.channel import LostPartyError

    r = run(EngineConfig(4, threshold=1, sharing="shamir", security="malicious"), cheater=3, vanish_at=label)
    for p in r.honest(3):
        err = r.error_at(p)
        assert isinstance(err, LostPartyError) and err.peer == 3, err
        sent = [label_of(t) for t in r.sent[p]]
        assert "output-keys" not in sent


# -- fresh material per attempt ----------------------------------------------------------------


def _plan(n: int, t: int) -> tuple[SessionPlan, dict[str, tuple[int, object]], dict[str, KemKeyPair]]:
    suite = get_suite(SuiteName.PQ_DEFAULT)
    owner = suite.signature.generate(os.urandom(32))
    auditor = KemKeyPair.from_seed(suite.envelope_kem, os.urandom(32))
    pairs = {f"node-{i}": KemKeyPair.from_seed(suite.envelope_kem, os.urandom(32)) for i in range(n)}
    parties = tuple(PlanParty(i, f"node-{i}", f"127.0.0.{i + 1}", f"node-{i}.pool", 7000, 8000, "ab" * 32, 1)
                    for i in range(n))
    plan = SessionPlan(
        session_id=SessionId("restart-1"), pool="pool", namespace="default", generation=1, issued_at=0,
        not_after=2**40, deadline=2**40, parties=parties, sharing="shamir", threshold=t, security="malicious",
        program={"aggregate": [{"op": "sum", "field": "amount"}]},
        inputs=(PlanInput("bank-a", owner.public_key().public_bytes_raw(), "data", (FieldDecl("amount", 0, 100),)),),
        outputs=(PlanOutput("auditor", auditor.public_bytes, ("sum(amount)",)),),
    )
    plan = SessionPlan.from_json(plan.to_json())  # as the nodes parse it
    return plan, {k: (1, v.public_key()) for k, v in pairs.items()}, pairs


class Ring:
    """A node's KEM key ring holding one key pair (what ``open_preprocessing`` asks for)."""

    def __init__(self, pair: KemKeyPair) -> None:
        self.pair = pair

    def keypair_for(self, epoch: int, *, now: object) -> KemKeyPair:
        return self.pair


def test_dealer_deals_independent_material_for_every_attempt() -> None:
    suite = get_suite(SuiteName.PQ_DEFAULT)
    signer = suite.signature.generate(os.urandom(32))
    plan, keys, pairs = _plan(4, 1)
    assert attempt_count(plan) == 3
    out = deal(plan, {"bank-a": 5}, suite=suite, signer_key=signer, node_kem_keys=keys)  # type: ignore[arg-type]

    import datetime as dt

    material = open_preprocessing(out.bodies["node-1"], plan, suite=suite, node_id="node-1",
                                  signer_key=signer.public_key(), keys=Ring(pairs["node-1"]),  # type: ignore[arg-type]
                                  now=dt.datetime.now(dt.timezone.utc))
    assert len(set(material.seeds)) == 3 and len(material.streams) == 3
    cfg = engine_config(plan)
    first = material.manifest[0]  # every attempt asks for the same material in the same order...
    assert first[0] == "input_mask"
    masks = [party_provider(plan, material, cfg, attempt=a).input_mask(tuple(first[2:]), first[1]) for a in (1, 2, 3)]
    for i in range(3):  # ...but gets fresh values: a restart opens nothing an earlier attempt opened
        for j in range(i + 1, 3):
            assert not np.array_equal(masks[i].mask.value, masks[j].mask.value), "a restart reused material"
            assert not np.array_equal(masks[i].mask.mac, masks[j].mask.mac)
    with pytest.raises(ValueError, match="attempt 4 has none"):
        party_provider(plan, material, cfg, attempt=4)


@pytest.mark.parametrize("security", ["semi-honest", "malicious"])
def test_restart_down_to_t_plus_one_runs_on_the_dealt_material(security: str) -> None:
    """n = 3, t = 1 loses a party: attempt 2 runs with 2 parties on the dealer's attempt-2 material,
    every request checked against the dealer's manifest, and computes the plaintext sum."""
    import asyncio
    import datetime as dt

    from pqmpc_node.engine import PartyInputs, execute, output_requests
    from pqmpc_node.mpc.channel import InProcessHub
    from pqmpc_node.mpc.context import MPCContext
    from pqmpc_node.mpc.fixedpoint import FixedPoint
    from pqmpc_node.mpc.inputs import share_owner_input
    from pqmpc_node.mpc.randomness import AesCtrRandom

    suite = get_suite(SuiteName.PQ_DEFAULT)
    signer = suite.signature.generate(os.urandom(32))
    plan, keys, pairs = _plan(3, 1)
    plan = SessionPlan.from_json({**plan.to_json(), "security": security})
    out = deal(plan, {"bank-a": 5}, suite=suite, signer_key=signer, node_kem_keys=keys)  # type: ignore[arg-type]

    now = dt.datetime.now(dt.timezone.utc)
    cfg = engine_config(plan)
    domain, scheme, fx = cfg.domain(), cfg.scheme(), FixedPoint(plan.frac_bits)
    values = np.array([[1.5, 20.0, 33.25, 0.0, 99.0]])
    raw = share_owner_input(domain, scheme, encode_column(plan.execution_plan(), "amount", values, domain),
                            AesCtrRandom.from_os(), keyed=security == "malicious")
    live = [0, 1]
    hub = InProcessHub(3)
    ctxs = []
    for i in live:
        material = open_preprocessing(out.bodies[f"node-{i}"], plan, suite=suite, node_id=f"node-{i}",
                                      signer_key=signer.public_key(), keys=Ring(pairs[f"node-{i}"]), now=now)  # type: ignore[arg-type]
        ctxs.append(MPCContext(party=i, channel=hub.channel(i), domain=domain, scheme=scheme,
                               provider=party_provider(plan, material, cfg, attempt=2), rng=AesCtrRandom.from_os(),
                               security=plan.security, fixed=fx, live=live))
    exec_plan = plan.execution_plan()

    async def main() -> list[object]:
        return list(await asyncio.gather(*(execute(
            c, exec_plan, ["amount"], PartyInputs([OwnerShares("bank-a", raw[c.party][0].reshape(1, 5),
                                                               raw[c.party][1], raw[c.party][2])]),
            output_requests(plan)) for c in ctxs)))

    outcomes = asyncio.run(main())
    shares = {c.party: o.delivered["auditor"]["sum(amount)"] for c, o in zip(ctxs, outcomes, strict=True)}  # type: ignore[attr-defined]
    y = verify_delivered(domain, scheme, shares, authenticated=security == "malicious")
    got = decode_exact(output_decodings(exec_plan)["sum(amount)"], [int(v) for v in domain.to_signed(y).tolist()], 5)
    assert got == [pytest.approx(values.sum(), abs=1e-6)]
