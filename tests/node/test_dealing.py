"""The split dealer: each node learns only its own preprocessing, sessions still compute correctly.

Engine level (one process): a party's seed and correction stream do not determine another
party's material, and the dealt material is consistent (c = a*b, MACs = alpha * value).
Node level: semi-honest and malicious, additive and Shamir sessions across node
processes with the harness as dealer; the preprocessing endpoint refuses material that is
not signed by the plan signer, not addressed to this node, or dealt for other inputs.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np
import pytest

from harness import Operator
from pqmpc_node.client import Identity, SessionClient
from pqmpc_node.crypto.suites import SuiteName, get_suite
from pqmpc_node.dealer import deal
from pqmpc_node.mpc import protocols as proto
from pqmpc_node.mpc.channel import InProcessHub
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.fixedpoint import FixedPoint
from pqmpc_node.mpc.mac import check_macs
from pqmpc_node.mpc.randomness import AesCtrRandom
from pqmpc_node.dealer.seeded import DealingProvider, PreprocessingMismatchError, SplitProvider
from pqmpc_node.plan import FieldDecl

CONFIGS = {
    "additive-semi": EngineConfig(3),
    "additive-mal": EngineConfig(3, security="malicious"),
    "shamir-semi": EngineConfig(5, threshold=2, sharing="shamir"),
    "shamir-mal": EngineConfig(3, threshold=1, sharing="shamir", security="malicious"),
}


async def _program(ctx: MPCContext, values: Any) -> list[Any]:
    x = await proto.share_input(ctx, 1, values if ctx.party == 1 else None, (6,))
    y = await proto.share_input(ctx, 0, values if ctx.party == 0 else None, (6,))
    z = await proto.multiply(ctx, x, y)
    m = await proto.matmul(ctx, x.reshape(6, 1), y.reshape(1, 6))
    lt = await proto.less_than_zero(ctx, x)
    out = await ctx.open([z, m, lt])
    await check_macs(ctx)
    return out


def _run(cfg: EngineConfig, providers: list[Any]) -> list[list[Any]]:
    domain, scheme = cfg.domain(), cfg.scheme()
    hub = InProcessHub(cfg.parties)
    ctxs = [MPCContext(party=i, channel=hub.channel(i), domain=domain, scheme=scheme, provider=providers[i],
                       rng=AesCtrRandom.from_os(), security=cfg.security, fixed=FixedPoint(cfg.frac_bits))
            for i in range(cfg.parties)]
    values = domain.from_signed(np.array([3, -2, 0, 7, -5, 1]))

    async def main() -> list[list[Any]]:
        return list(await asyncio.wait_for(asyncio.gather(*(_program(c, values) for c in ctxs)), 60))

    return asyncio.run(main())


def _dealt(cfg: EngineConfig) -> tuple[list[bytes], list[DealingProvider]]:
    domain, scheme = cfg.domain(), cfg.scheme()
    seeds = [os.urandom(32) for _ in range(cfg.parties)]
    dealer_seed = os.urandom(32)
    providers = [DealingProvider(domain, scheme, i, seeds=seeds, dealer_seed=dealer_seed,
                                 authenticated=cfg.security == "malicious") for i in range(cfg.parties)]
    _run(cfg, providers)  # the dealer's simulation records each party's corrections
    return seeds, providers


def _split(cfg: EngineConfig, party: int, seed: bytes, stream: Any, manifest: Any) -> SplitProvider:
    return SplitProvider(cfg.domain(), cfg.scheme(), party, seed=seed, stream=stream, manifest=manifest,
                         authenticated=cfg.security == "malicious")


def _first_triple(p: SplitProvider) -> Any:
    p.input_mask((6,), 1)  # the program's requests, in order
    p.input_mask((6,), 0)
    return p.triples((6,))


def _curious(cfg: EngineConfig, target: int, seed: bytes, stream: Any) -> SplitProvider:
    """What a party holding ``seed`` and ``stream`` computes when it plays ``target`` (zeros where it has nothing)."""
    padded = np.concatenate([stream, np.zeros(100_000, dtype=np.uint64)])
    return _split(cfg, target, seed, padded, None)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_party_view_does_not_determine_another_party_material(name: str) -> None:
    cfg = CONFIGS[name]
    seeds, dealt = _dealt(cfg)
    manifest = dealt[0].requests
    assert all(p.requests == manifest for p in dealt)
    assert len(set(seeds)) == cfg.parties
    real = [_split(cfg, i, seeds[i], dealt[i].stream, manifest) for i in range(cfg.parties)]
    triples = [_first_triple(p) for p in real]
    domain, scheme = cfg.domain(), cfg.scheme()

    def open_(values: dict[int, Any]) -> Any:
        return scheme.reconstruct(domain, values)

    a = open_({i: t.a.value for i, t in enumerate(triples)})
    b = open_({i: t.b.value for i, t in enumerate(triples)})
    c = open_({i: t.c.value for i, t in enumerate(triples)})
    assert np.array_equal(domain.mul(a, b), c)
    if cfg.security == "malicious":
        alpha = open_({i: p.mac_key_share() for i, p in enumerate(real)})
        assert np.array_equal(open_({i: t.c.mac for i, t in enumerate(triples)}), domain.mul(c, alpha))
    # Party 1 is curious: from its own seed and stream it tries to compute party 2's material.
    guessed = _first_triple(_curious(cfg, 2, seeds[1], dealt[1].stream))
    assert not np.array_equal(guessed.a.value, triples[2].a.value)
    assert not np.array_equal(guessed.c.value, triples[2].c.value)
    # ...and with its guesses in place of party 2's shares the triple does not open to a*b = c.
    # (Shamir opens from the first t+1 shares given: leave party 0 out so party 2's share counts.)
    keep = range(cfg.parties) if cfg.sharing == "additive" else range(1, cfg.parties)
    shares_a = {i: triples[i].a.value for i in keep} | {2: guessed.a.value}
    shares_c = {i: triples[i].c.value for i in keep} | {2: guessed.c.value}
    assert not np.array_equal(open_(shares_a), a) and not np.array_equal(open_(shares_c), c)
    # Party 0's stream (the largest correction) is no substitute for another party's seed either.
    assert not np.array_equal(_first_triple(_curious(cfg, 1, seeds[0], dealt[0].stream)).b.value, triples[1].b.value)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_split_material_computes_correctly(name: str) -> None:
    cfg = CONFIGS[name]
    seeds, dealt = _dealt(cfg)
    providers = [_split(cfg, i, seeds[i], dealt[i].stream, dealt[i].requests) for i in range(cfg.parties)]
    out = _run(cfg, providers)
    domain = cfg.domain()
    x = np.array([3, -2, 0, 7, -5, 1])
    z, m, lt = out[0]
    assert list(domain.to_signed(z)) == list(x * x)
    assert np.array_equal(domain.to_signed(m), np.outer(x, x))
    assert list(domain.to_signed(lt)) == [int(v < 0) for v in x]
    assert all(np.array_equal(domain.to_signed(o[0]), domain.to_signed(z)) for o in out)


def test_requests_other_than_the_dealt_ones_are_refused() -> None:
    cfg = CONFIGS["additive-semi"]
    seeds, dealt = _dealt(cfg)
    p = _split(cfg, 0, seeds[0], dealt[0].stream, dealt[0].requests)
    with pytest.raises(PreprocessingMismatchError, match="dealer dealt"):
        p.edabits((6,))  # the program's first request is an input mask


# -- across node processes ----------------------------------------------------------------------

FIELDS = [FieldDecl("x1", -10, 10), FieldDecl("x2", -10, 10)]
ROWS = np.array([[1.5, -2.0], [3.0, 4.0], [0.0, 0.5], [-7.0, 2.0]])


def _session(op: Operator, nodes: list[Any], sid: str, program: dict[str, Any], model: dict[str, Any] | None,
             allow: list[str], **kw: Any) -> dict[str, Any]:
    owner, insurer, auditor = Identity.generate("bank-a"), Identity.generate("insurer"), Identity.generate("auditor")
    plan = op.plan(sid, nodes, program=program, owners=[owner], fields=FIELDS, recipients={auditor: allow},
                   model_owner=insurer if model is not None else None, **kw)
    op.post_plan(plan, nodes)
    with SessionClient(node_url=nodes[0].url, session_id=sid, ca_certificate=op.ca.certificate,
                       plan_signer=op.signer.public_key()) as c:
        c.submit_rows(owner, {"x1": [str(v) for v in ROWS[:, 0]], "x2": [str(v) for v in ROWS[:, 1]]})
        if model is not None:
            c.submit_model(insurer, model)
        for n in nodes:
            st = op.wait_phase(n, sid, {"Succeeded", "Failed"}, timeout=120)
            assert st["phase"] == "Succeeded", (st, op.dealer_errors, n.log_text()[-2000:])
        return c.collect_result(auditor, wait_s=20)["outputs"]


@pytest.fixture(scope="module")
def quintet(operator: Operator) -> list[Any]:
    nodes = operator.start_nodes(5)
    operator.certify(nodes)
    return nodes


def test_malicious_additive_aggregate_and_linear_score(operator: Operator, quintet: Any) -> None:
    nodes = quintet[:3]
    program = {"aggregate": [{"op": "sum", "field": "x1"}, {"op": "mean", "field": "x2"}]}
    out = _session(operator, nodes, "deal-agg-mal", program, None, ["sum(x1)", "mean(x2)"], security="malicious")
    assert out["sum(x1)"] == pytest.approx(ROWS[:, 0].sum(), abs=1e-2)
    assert out["mean(x2)"] == pytest.approx(ROWS[:, 1].mean(), abs=1e-2)
    w, b = np.array([0.5, -0.25]), np.array([0.125])
    program = {"linearScore": {"modelOwner": "insurer", "features": ["x1", "x2"]}}
    out = _session(operator, nodes, "deal-lin-mal", program, {"weights": w.tolist(), "bias": b.tolist()},
                   ["score"], security="malicious")
    assert np.allclose(out["score"], ROWS @ w + b[0], atol=1e-2)


@pytest.mark.parametrize("security", ["semi-honest", "malicious"])
def test_shamir_mlp(operator: Operator, quintet: Any, security: str) -> None:
    rng = np.random.default_rng(3)
    w0, b0 = rng.uniform(-1, 1, (2, 3)), rng.uniform(-1, 1, 3)
    w1, b1 = rng.uniform(-1, 1, (3, 1)), rng.uniform(-1, 1, 1)
    program = {"mlp": {"modelOwner": "insurer", "features": ["x1", "x2"], "layers": [3, 1]}}
    model = {"W0": w0.tolist(), "b0": b0.tolist(), "W1": w1.tolist(), "b1": b1.tolist()}
    out = _session(operator, quintet, f"deal-mlp-{security}", program, model, ["score"], sharing="shamir",
                   threshold=2, security=security)
    expected = np.maximum(ROWS @ w0 + b0, 0) @ w1 + b1
    assert np.allclose(np.asarray(out["score"]).reshape(-1), expected.reshape(-1), atol=5e-2)


def test_preprocessing_endpoint_refusals(operator: Operator, quintet: Any) -> None:
    nodes = quintet[:3]
    owner, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    plan = operator.plan("deal-refuse", nodes, program={"aggregate": [{"op": "sum", "field": "x1"}]}, owners=[owner],
                         fields=FIELDS, recipients={auditor: ["sum(x1)"]})
    operator.post_plan(plan, nodes, dealer=False)
    good = operator.deal(plan, {"bank-a": len(ROWS)})

    def post(node: Any, body: bytes) -> tuple[int, str]:
        r = operator.http.post(f"{node.url}/v1/sessions/deal-refuse/preprocessing", content=body)
        return r.status_code, r.json().get("error", {}).get("reason", "") if r.status_code >= 400 else ""

    # Another party's material (sealed to another node) is refused.
    code, reason = post(nodes[0], good.bodies[nodes[1].node_id])
    assert code in (403, 422) and reason, (code, reason)
    # Material dealt by anyone but the plan signer is refused.
    suite = get_suite(SuiteName.PQ_DEFAULT)
    mallory = suite.signature.generate(os.urandom(32))
    keys = {}
    for p in plan.parties:
        epoch, key = operator.kem_key_of(operator.node_of(p.node_id))
        keys[p.node_id] = (epoch, key)
    forged = deal(plan, {"bank-a": len(ROWS)}, suite=suite, signer_key=mallory, node_kem_keys=keys)
    assert post(nodes[0], forged.bodies[nodes[0].node_id])[0] == 403
    assert post(nodes[0], b"PQMPCPP1garbage")[0] == 422
    # Material for other row counts is refused once the inputs are in.
    wrong = operator.deal(plan, {"bank-a": len(ROWS) + 1})
    with SessionClient(node_url=nodes[0].url, session_id="deal-refuse", ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as c:
        c.submit_rows(owner, {"x1": [str(v) for v in ROWS[:, 0]], "x2": [str(v) for v in ROWS[:, 1]]})
    assert post(nodes[0], wrong.bodies[nodes[0].node_id]) == (409, "rows_mismatch")
    st = operator.http.get(f"{nodes[0].url}/v1/sessions/deal-refuse").json()
    assert st["awaitingPreprocessing"] and st["inputRows"] == {"bank-a": len(ROWS)}
    # The right material starts the session; posting it again is idempotent.
    assert all(code == 202 for code in operator.post_preprocessing(plan, good).values())
    assert post(nodes[0], good.bodies[nodes[0].node_id])[0] in (202, 409)
    for n in nodes:
        assert operator.wait_phase(n, "deal-refuse", {"Succeeded", "Failed"})["phase"] == "Succeeded"
