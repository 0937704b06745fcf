"""Review of the dealer-free OT preprocessing: every malformed message from a cheater ends the
attempt with a check error naming a check (or a lost party), never with a crash type.

The cheater runs the real engine with the OT provider (``engine_cheats.run(dealer_free=True)``)
and rewrites its messages in one round of making the material: one element too few, one
too many, or (for element messages) a word ``>= p``. Every honest party must end with a
:class:`~pqmpc_node.mpc.errors.MacCheckError` (``BlamedCheckError`` and its kinds included)
or :class:`~pqmpc_node.mpc.channel.LostPartyError`: a ``ValueError`` or ``IndexError`` out
of a peer's message would be a parsing gap. No honest party may start delivering outputs.
The existing tests (``test_ot_cheats``, ``test_ot_extension_cheats``, ``test_ot_base_cheats``)
cover shifted values and the extension's and base OTs' pure steps; these cover the
framing of every round the provider receives, inside the engine.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_cheats import Tamper, label_of, run  # noqa: E402
from pqmpc_node.mpc.channel import LostPartyError  # noqa: E402
from pqmpc_node.mpc.config import EngineConfig  # noqa: E402
from pqmpc_node.mpc.errors import BlamedCheckError, MacCheckError  # noqa: E402
from pqmpc_node.mpc.field import P61  # noqa: E402

MALICIOUS = EngineConfig(2, sharing="additive", security="malicious")
SEMI_HONEST = EngineConfig(2, sharing="additive", security="semi-honest")

Mutation = Callable[[bytes], bytes]


def _short(data: bytes) -> bytes:
    return data[:-8]


def _long(data: bytes) -> bytes:
    return data + bytes(8)


def _non_canonical(data: bytes) -> bytes:
    arr = np.frombuffer(data, dtype=np.uint64).copy()
    arr[0] = np.uint64((int(arr[0]) + P61) % 2**64)
    return arr.tobytes()


MUTATIONS: dict[str, Mutation] = {"short": _short, "long": _long, "non-canonical": _non_canonical}


def rewrite(label: str, mutation: Mutation) -> Tamper:
    """Apply ``mutation`` to every message of the rounds labelled ``label``."""

    def tamper(tag: str, peer: int, data: bytes) -> bytes:
        return mutation(data) if label_of(tag) == label and len(data) >= 8 else data

    return tamper


def assert_refused(config: EngineConfig, label: str, how: str, *, blamed: bool) -> None:
    r = run(config, cheater=1, tamper=rewrite(label, MUTATIONS[how]), dealer_free=True, timeout=90.0)
    for p in r.honest(1):
        err = r.error_at(p)
        assert isinstance(err, (MacCheckError, LostPartyError)), f"party {p} crashed on a malformed {label!r}: {err!r}"
        if blamed:
            assert isinstance(err, BlamedCheckError) and 1 in err.blamed_parties, f"party {p}: {err!r}"
        assert not any("output" in label_of(t) for t in r.sent[p]), f"party {p} started delivering outputs"


# Rounds whose payload the receiver parses by length (and, for field elements, canonicity):
# a malformed one names its sender.
FRAMED = [
    ("base/r", "short"), ("base/r", "long"), ("base/s", "short"), ("base/s", "long"),
    ("cope-seeds/0/u", "short"), ("cope-seeds/0/u", "long"),
    ("cope-seeds/0/challenge", "short"), ("cope-seeds/0/response", "long"),
    ("mascot-multiply/ext/0/u", "long"), ("mascot-multiply/ext/0/challenge", "long"),
    ("mascot-multiply/ext/0/response", "short"),
    ("mascot-multiply/corr", "short"), ("mascot-multiply/corr", "long"), ("mascot-multiply/corr", "non-canonical"),
    ("cope/u", "short"), ("cope/u", "long"), ("cope/u", "non-canonical"),
    ("sacrifice", "short"), ("sacrifice-check", "non-canonical"),
    ("mask/0", "short"), ("mask/0", "non-canonical"),
    ("bit-open", "long"),
]


@pytest.mark.parametrize(("label", "how"), FRAMED, ids=[f"{lb} {h}" for lb, h in FRAMED])
def test_malformed_message_is_refused_naming_its_sender(label: str, how: str) -> None:
    assert_refused(MALICIOUS, label, how, blamed=True)


# Commit-and-reveal rounds: a reveal that does not open the commitment names its sender; a
# commitment of another length simply never opens.
COINS = [("mascot-combine/commit", "short"), ("mascot-combine/reveal", "short"),
         ("mascot-combine/reveal", "long"), ("sacrifice-coin/reveal", "short")]


@pytest.mark.parametrize(("label", "how"), COINS, ids=[f"{lb} {h}" for lb, h in COINS])
def test_malformed_coin_message_is_refused(label: str, how: str) -> None:
    assert_refused(MALICIOUS, label, how, blamed=True)


# Semi-honest ring sessions: no MACs, but a malformed message must still end the attempt
# with a named check, not a numpy error.
RING = [("triple/corr", "short"), ("triple/corr", "long"), ("triple/ext/0/u", "short"),
        ("xor-bit/1/ext/0/u", "long"), ("xor-bit/1/ext/0/response", "short")]


@pytest.mark.parametrize(("label", "how"), RING, ids=[f"{lb} {h}" for lb, h in RING])
def test_malformed_message_in_a_semi_honest_ring_session_is_refused(label: str, how: str) -> None:
    assert_refused(SEMI_HONEST, label, how, blamed=True)
