"""The trusted dealer's simulation: one run of the program with every party simulated, recording each party's material.

Operator API (pure; randomness is passed in, no I/O)::

    out = deal(plan, rows={"bank-a": 1000, "bank-b": 250}, suite=suite, signer_key=plan_signer,
               node_kem_keys={node_id: (epoch, kem_public_key), ...})
    for node_id, body in out.bodies.items():
        POST {node}/v1/sessions/{plan.session_id}/preprocessing   (application/octet-stream, body)

``rows`` are the row counts of the data owners (public: every node sees the length of the
shares it holds). For each attempt the session may need (:func:`~pqmpc_node.dealer.provider.attempt_count`)
:func:`deal` draws one fresh seed per party, runs the compiled program once with all
parties simulated in this process on dummy inputs of the declared shapes (MPC control
flow does not depend on secret data) through
:class:`~pqmpc_node.dealer.seeded.DealingProvider`, which records each party's
corrections in request order, and seals each party's material to that party's KEM key
(:mod:`pqmpc_node.dealer.wire`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pqmpc_node.crypto.kemkeys import KemPublicKey
from pqmpc_node.crypto.suites import MLDSAPrivateKey, Suite
from pqmpc_node.dealer.provider import attempt_count
from pqmpc_node.dealer.seeded import DealingProvider
from pqmpc_node.dealer.wire import PartyMaterial, PreprocessingError, check_rows, seal_preprocessing
from pqmpc_node.engine import PartyInputs, engine_config, execute, output_requests
from pqmpc_node.mpc.channel import InProcessHub
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.fixedpoint import FixedPoint
from pqmpc_node.mpc.inputs import OwnerShares, share_owner_input
from pqmpc_node.mpc.programs import encode_column, model_shapes
from pqmpc_node.mpc.randomness import AesCtrRandom
from pqmpc_node.plan import SessionPlan

__all__ = ["DealerOutput", "deal", "deal_async", "simulate"]


@dataclass(frozen=True)
class DealerOutput:
    """:func:`deal`'s result: one sealed preprocessing body per party node, plus public facts."""

    session_id: str
    plan_digest: str
    rows: Mapping[str, int]
    bodies: Mapping[str, bytes] = field(repr=False)
    stream_words: Mapping[str, int]


async def simulate(plan: SessionPlan, rows: Mapping[str, int], seeds: Sequence[bytes], dealer_seed: bytes,
                    rng: Callable[[int], bytes]) -> list[DealingProvider]:
    """Run the program once with every party simulated on dummy inputs of the real shapes.

    Each returned provider holds its party's manifest (``requests``) and correction
    ``stream``; :func:`deal` seals them, :mod:`pqmpc_node.dealer.size` only measures them.
    """
    cfg = engine_config(plan)
    domain, scheme = cfg.domain(), cfg.scheme()
    exec_plan = plan.execution_plan()
    fx = FixedPoint(plan.frac_bits)
    fields = plan.data_fields()
    keyed = plan.security == "malicious"
    share_rng = AesCtrRandom(rng(32))
    per_party: list[list[OwnerShares]] = [[] for _ in plan.parties]
    for owner in (i.owner for i in plan.inputs if i.role == "data"):
        encoded = np.stack([encode_column(exec_plan, f.name, np.full(rows[owner], (f.min + f.max) / 2.0), domain)
                            for f in fields])
        for i, (x, t, k) in enumerate(share_owner_input(domain, scheme, encoded, share_rng, keyed=keyed)):
            per_party[i].append(OwnerShares(owner, x.reshape(encoded.shape), t, k))
    model: list[OwnerShares | None] = [None] * len(plan.parties)
    shapes = model_shapes(exec_plan)
    if shapes:
        owner = next(i.owner for i in plan.inputs if i.role == "model")
        zeros = domain.zeros((sum(int(np.prod(s)) for s in shapes.values()),))
        for i, (x, t, k) in enumerate(share_owner_input(domain, scheme, zeros, share_rng, keyed=keyed)):
            model[i] = OwnerShares(owner, x, t, k)
    hub = InProcessHub(cfg.parties)
    providers = [DealingProvider(domain, scheme, i, seeds=seeds, dealer_seed=dealer_seed,
                                 authenticated=plan.security == "malicious") for i in range(cfg.parties)]
    ctxs = [MPCContext(party=i, channel=hub.channel(i), domain=domain, scheme=scheme, provider=providers[i],
                       rng=AesCtrRandom(rng(32)), security=plan.security, fixed=fx, session="deal")
            for i in range(cfg.parties)]
    names = [f.name for f in fields]
    requests = output_requests(plan)
    await asyncio.gather(*(execute(ctx, exec_plan, names, PartyInputs(per_party[ctx.party], model[ctx.party]), requests)
                           for ctx in ctxs))
    return providers


async def deal_async(
    plan: SessionPlan,
    rows: Mapping[str, int],
    *,
    suite: Suite,
    signer_key: MLDSAPrivateKey,
    node_kem_keys: Mapping[str, tuple[int, KemPublicKey]],
    rng: Callable[[int], bytes] = os.urandom,
) -> DealerOutput:
    """:func:`deal` for callers inside an event loop (the simulation runs on the current loop)."""
    plan = SessionPlan.from_json(plan.to_json())  # as the nodes parse it, so the digests agree
    counts = check_rows(plan, rows)
    missing = [p.node_id for p in plan.parties if p.node_id not in node_kem_keys]
    if missing:
        raise PreprocessingError(f"no KEM key for party nodes {missing}", "missing_kem_key")
    runs = []
    for _ in range(attempt_count(plan)):  # fresh, independent material per attempt
        seeds = [rng(32) for _ in plan.parties]
        runs.append((seeds, await simulate(plan, counts, seeds, rng(32), rng)))
    digest = plan.digest()
    bodies: dict[str, bytes] = {}
    words: dict[str, int] = {}
    for p in plan.parties:
        manifests = {tuple(prov[p.index].requests) for _, prov in runs}
        if len(manifests) != 1:
            raise PreprocessingError("the attempts' simulations requested different material", "dealing_failed")
        material = PartyMaterial(plan.session_id, digest, p.index, p.node_id, counts, manifests.pop(),
                                 tuple(seeds[p.index] for seeds, _ in runs), tuple(prov[p.index].stream for _, prov in runs))
        epoch, key = node_kem_keys[p.node_id]
        bodies[p.node_id] = seal_preprocessing(material, suite=suite, key_epoch=epoch, node_kem_key=key,
                                               signer_key=signer_key, generation=plan.generation, rng=rng)
        words[p.node_id] = sum(int(st.size) for st in material.streams)
    return DealerOutput(plan.session_id, digest, counts, bodies, words)


def deal(
    plan: SessionPlan,
    rows: Mapping[str, int],
    *,
    suite: Suite,
    signer_key: MLDSAPrivateKey,
    node_kem_keys: Mapping[str, tuple[int, KemPublicKey]],
    rng: Callable[[int], bytes] = os.urandom,
) -> DealerOutput:
    """Deal the session's preprocessing: one sealed body per party node (see the module docstring).

    CPU-bound (it runs the program once for all parties); call it from a worker thread in
    an async operator, or use :func:`deal_async`.
    """
    return asyncio.run(deal_async(plan, rows, suite=suite, signer_key=signer_key, node_kem_keys=node_kem_keys, rng=rng))
