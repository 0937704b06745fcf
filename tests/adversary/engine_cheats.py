"""A cheating party inside the real engine: the session runner's own ``execute`` over an in-process
hub, with one party's outgoing messages rewritten on the way and every party's openings recorded.

Not a test module: the adversarial tests import it (``sys.path`` as in tests/node).
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from pathlib import Path
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pqmpc_local.mpc_simulation import make_contexts
from pqmpc_node.engine import PartyInputs, RunOutcome, execute
from pqmpc_node.mpc.channel import ChannelError, InProcessHub
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.context import MPCContext
from pqmpc_node.mpc.domain import Array
from pqmpc_node.mpc.errors import MacCheckError
from pqmpc_node.mpc.field import P61, MersenneField61
from pqmpc_node.mpc.inputs import OwnerShares, share_owner_input
from pqmpc_node.mpc.outputs import OutputRequest
from pqmpc_node.mpc.preprocessing import InputMask
from pqmpc_node.mpc.numerics import decode_exact
from pqmpc_node.mpc.programs import compile_program, encode_column, output_decodings
from pqmpc_node.mpc.randomness import AesCtrRandom

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "mpc"))
from hm_run import hm_context  # noqa: E402  (tests/mpc: in-process dealer-free parties)

FIELDS = [{"name": "amount", "min": 0, "max": 1000}]
PROGRAM = {"aggregate": [{"op": "count", "field": "amount"}, {"op": "sum", "field": "amount"},
                         {"op": "mean", "field": "amount"}, {"op": "variance", "field": "amount"},
                         {"op": "max", "field": "amount"},
                         {"op": "histogram", "field": "amount", "bins": [0, 100, 1000]}]}
OWNERS = {"bank-a": [5.0, 250.5, 999.0, 1200.0], "bank-b": [17.25, 400.0, -3.0]}
RECIPIENTS = [OutputRequest("auditor", ("sum(amount)", "mean(amount)", "variance(amount)", "max(amount)",
                                        "histogram(amount)", "count(amount)")),
              OutputRequest("analyst", ("sum(amount)",))]

current_party: contextvars.ContextVar[int] = contextvars.ContextVar("current_party", default=-1)
"""The party whose task is running (set at the start of each party's coroutine)."""

Tamper = Callable[[str, int, bytes], bytes]


def label_of(tag: str) -> str:
    """The protocol label of a round tag ``"{session}/{round}:{label}"``."""
    return tag.rsplit(":", 1)[-1]


def add_to_first(label: str, delta: int, *, after: str | None = None) -> Tamper:
    """Add ``delta`` (mod 2^64) to the first uint64 element of the messages of rounds labelled ``label``.

    With ``after``, only once the cheater has sent a round labelled ``after``.
    """
    seen = [after is None]

    def tamper(tag: str, peer: int, data: bytes) -> bytes:
        if after is not None and label_of(tag) == after:
            seen[0] = True
        if label_of(tag) != label or not seen[0] or len(data) < 8:
            return data
        arr = np.frombuffer(data, dtype=np.uint64).copy()
        arr[0] = np.uint64((int(arr[0]) + delta) % 2**64)
        return arr.tobytes()

    return tamper


def assert_caught(r: Any, cheater: int, checks: set[str]) -> None:
    """Every honest party ended on a MAC/consistency check in ``checks`` and none started delivering outputs."""
    for p in r.honest(cheater):
        err = r.error_at(p)
        assert isinstance(err, MacCheckError), f"party {p}: {err!r}"
        assert err.check in checks, f"party {p} failed {err.check!r}, expected one of {checks}: {err}"
        assert not any("output" in label_of(t) for t in r.sent[p]), f"party {p} started delivering outputs"


def non_canonical(label: str) -> Tamper:
    """Send ``s + p`` instead of ``s`` (equal mod p, not a field element) in rounds labelled ``label``."""
    return add_to_first(label, P61)


class CheatingChannel:
    """The cheater's channel: every outgoing payload passes ``tamper``; every tag sent is logged."""

    def __init__(self, inner: Any, tamper: Tamper | None, log: list[str], vanish_at: str | None = None) -> None:
        self._inner = inner
        self._tamper = tamper
        self._log = log
        self._vanish_at = vanish_at

    @property
    def party(self) -> int:
        return int(self._inner.party)

    @property
    def n(self) -> int:
        return int(self._inner.n)

    async def send_many(self, tag: str, payloads: Mapping[int, bytes]) -> None:
        if self._vanish_at is not None and label_of(tag) == self._vanish_at:
            # Hang up instead of sending this round (the in-process hub's simulated link loss).
            self._inner._hub.disconnect(self.party)
            raise ChannelError(f"party {self.party} vanished at {tag!r}")
        self._log.append(tag)
        if self._tamper is not None:
            payloads = {p: self._tamper(tag, p, bytes(d)) for p, d in payloads.items()}
        await self._inner.send_many(tag, payloads)

    async def receive_many(self, tag: str, peers: Iterable[int]) -> dict[int, bytes]:
        return dict(await self._inner.receive_many(tag, peers))

    def discard(self, tag: str, peers: Iterable[int]) -> None:
        discard = getattr(self._inner, "discard", None)
        if discard is not None:
            discard(tag, peers)


class LyingMaskProvider:
    """The cheater's provider: it claims its input mask is ``r - delta``.

    The cheater then broadcasts ``d = x_i - r + delta`` to every peer alike and uses the
    same ``d`` itself, so its re-input is a consistent sharing of ``x_i + delta``: exactly
    what a node that lies about its share of an owner's input does (no broadcast
    mismatch, no inconsistent share for the other checks to see).
    """

    def __init__(self, inner: Any, party: int, delta: int) -> None:
        self._inner = inner
        self._party = party
        self._delta = delta

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def input_mask(self, shape: tuple[int, ...], owner: int) -> InputMask:
        mask = self._inner.input_mask(shape, owner)
        if owner != self._party or mask.clear is None:
            return mask
        d = MersenneField61()  # the adversarial runs compute on numpy
        return InputMask(mask.mask, d.sub(mask.clear, d.asarray(np.full(shape, self._delta, dtype=np.uint64))))


@dataclass
class Run:
    """The outcome at every party: a :class:`RunOutcome` or the exception it raised."""

    config: EngineConfig
    outcomes: dict[int, RunOutcome | BaseException]
    sent: dict[int, list[str]] = field(default_factory=dict)
    opened: dict[int, list[tuple[str, Array]]] = field(default_factory=dict)
    contexts: list[MPCContext] = field(default_factory=list)

    def honest(self, cheater: int | None) -> list[int]:
        return [p for p in self.outcomes if p != cheater]

    def error_at(self, party: int) -> BaseException:
        out = self.outcomes[party]
        if not isinstance(out, BaseException):
            raise AssertionError(f"party {party} finished without noticing the attack")
        return out


def owner_shares(config: EngineConfig, owners: Mapping[str, Sequence[float]], *, seed: bytes = b"owners-seed-0123456789abcdef0123",
                 inconsistent: tuple[str, int] | None = None) -> list[list[OwnerShares]]:
    """Per party, its raw shares of each owner's table (one field), as the client makes them.

    ``inconsistent``: (owner, party) whose share the *owner* perturbs (an owner sending a
    set of Shamir shares that is not one degree-t polynomial).
    """
    domain, scheme = config.domain(), config.scheme()
    plan = compile_program(PROGRAM, FIELDS)
    rng = AesCtrRandom(seed)
    per_party: list[list[OwnerShares]] = [[] for _ in range(config.parties)]
    for name, values in owners.items():
        encoded = encode_column(plan, "amount", np.asarray([values], dtype=np.float64), domain)
        parts = share_owner_input(domain, scheme, encoded, rng, keyed=config.security == "malicious")
        for i, (x, t, k) in enumerate(parts):
            if inconsistent == (name, i):
                x = domain.add(x, domain.asarray(np.ones(x.shape, dtype=np.uint64)))
            per_party[i].append(OwnerShares(name, x.reshape(encoded.shape), t, k))
    return per_party


def run(
    config: EngineConfig,
    *,
    cheater: int | None = None,
    tamper: Tamper | None = None,
    live: Sequence[int] | None = None,
    inputs: list[list[OwnerShares]] | None = None,
    alter_inputs: Callable[[OwnerShares], OwnerShares] | None = None,
    shift_own_reinput: int = 0,
    vanish_at: str | None = None,
    program: Mapping[str, Any] = PROGRAM,
    recipients: Sequence[OutputRequest] = RECIPIENTS,
    seed: bytes = b"adversary-seed-0123456789abcdef0",
    timeout: float = 120.0,
    dealer_free: bool = False,
) -> Run:
    """Run the session program at every live party with ``cheater`` tampering; collect outcomes.

    Honest parties that detect the attack raise; the cheater (and anyone stuck waiting on a
    party that stopped) is cancelled once every honest party has finished.
    """
    plan = compile_program(program, FIELDS)
    shares = inputs if inputs is not None else owner_shares(config, OWNERS)
    result = Run(config, {})
    contexts = [] if dealer_free else make_contexts(config, seed=seed, live=live)[0]
    for ctx in contexts:
        log: list[str] = []
        result.sent[ctx.party] = log
        mine = ctx.party == cheater
        ctx.channel = CheatingChannel(ctx.channel, tamper if mine else None, log,  # type: ignore[assignment]
                                      vanish_at if mine else None)
        _spy_openings(ctx, result, shift_own_reinput if mine else 0)
    result.contexts = list(contexts)

    async def party(ctx: MPCContext) -> RunOutcome:
        current_party.set(ctx.party)
        mine = shares[ctx.party]
        if alter_inputs is not None and ctx.party == cheater:
            mine = [alter_inputs(o) for o in mine]
        return await execute(ctx, plan, ["amount"], PartyInputs(mine), recipients)

    async def dealer_free_party(i: int, hub: InProcessHub, parties: Sequence[int]) -> RunOutcome:
        """Agree PRSS keys over the (cheater's) channel, then run: nothing is dealt."""
        current_party.set(i)
        log: list[str] = []
        result.sent[i] = log
        mine = i == cheater
        channel = CheatingChannel(hub.channel(i), tamper if mine else None, log, vanish_at if mine else None)
        ctx = await hm_context(config, channel, live=parties, seed=seed)
        _spy_openings(ctx, result, 0)
        result.contexts.append(ctx)
        return await party(ctx)

    async def main() -> None:
        if dealer_free:
            hub = InProcessHub(config.parties)
            parties = list(range(config.parties)) if live is None else sorted(live)
            tasks = {i: asyncio.ensure_future(dealer_free_party(i, hub, parties)) for i in parties}
        else:
            tasks = {ctx.party: asyncio.ensure_future(party(ctx)) for ctx in contexts}
        honest = [t for p, t in tasks.items() if p != cheater]
        await asyncio.wait(honest, timeout=timeout)
        for p, t in tasks.items():
            if not t.done():
                t.cancel()
            try:
                result.outcomes[p] = await t
            except asyncio.CancelledError as exc:
                result.outcomes[p] = exc
            except Exception as exc:  # noqa: BLE001 - the outcome under test
                result.outcomes[p] = exc

    asyncio.run(main())
    return result


def _spy_openings(ctx: MPCContext, result: Run, shift_own_reinput: int) -> None:
    """Record every value ``ctx`` opens; a cheater shifting its re-input gets the lying provider."""
    opened: list[tuple[str, Array]] = []
    result.opened[ctx.party] = opened
    original = ctx.open

    async def spy(xs: Any, label: str = "open", _orig: Any = original, _rec: list[Any] = opened) -> Any:
        values = await _orig(xs, label)
        _rec.extend((label, v) for v in values)
        return values

    ctx.open = spy  # type: ignore[method-assign]
    if shift_own_reinput:
        ctx.provider = LyingMaskProvider(ctx.provider, ctx.party, shift_own_reinput)


def decoded(name: str, y: Any, domain: Any, program: Mapping[str, Any] = PROGRAM) -> Any:
    """An output's reconstructed elements as the recipient decodes them (exactly, as the client does)."""
    plan = compile_program(program, FIELDS)
    values = decode_exact(output_decodings(plan)[name], [int(v) for v in domain.to_signed(y).reshape(-1).tolist()],
                          plaintext()["count(amount)"])
    return values if name.startswith("histogram(") else values[0]


def output_units(name: str) -> int:
    """The integer an output's sharing holds for :data:`OWNERS` (the sum for sum and mean, the max for max)."""
    num = compile_program(PROGRAM, FIELDS).numerics["amount"]  # type: ignore[union-attr]
    units = [num.units(v, "row") for v in np.array([v for vs in OWNERS.values() for v in vs]) if 0 <= v <= 1000]
    return max(units) if name == "max(amount)" else sum(units)


def plaintext() -> dict[str, Any]:
    """The true results over the valid rows of :data:`OWNERS`."""
    rows = np.array([v for vs in OWNERS.values() for v in vs])
    ok = rows[(rows >= 0) & (rows <= 1000)]
    return {"count(amount)": len(ok), "sum(amount)": float(ok.sum()), "mean(amount)": float(ok.mean()),
            "max(amount)": float(ok.max()), "histogram(amount)": np.histogram(ok, [0, 100, 1000])[0].tolist()}
