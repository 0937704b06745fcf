"""Every element that crosses a channel is canonical (finding 2).

F_p elements travel as uint64 words; ``s + p`` equals ``s`` mod p, so it passes a MAC
check, while comparisons, truncations and signed decodings read the raw word. A cheating
party sends ``s + p`` in each kind of round of a real session run (Beaver openings,
comparison masks and the exact splits of the variance's limbs, its own masked input, the owners' degree check, the valid
count, the output keys, the MAC check's sigma): every honest party aborts with a
:class:`NonCanonicalError` that names the sender. A short sigma is blamed the same way.
Owners' inputs, recipients' outputs and the dealer's stream are checked at their parsers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_cheats import current_party, non_canonical, run  # noqa: E402
from pqmpc_node.mpc import mac  # noqa: E402
from pqmpc_node.mpc.config import EngineConfig  # noqa: E402
from pqmpc_node.mpc.errors import NonCanonicalError  # noqa: E402
from pqmpc_node.mpc.field import P61, MersenneField61  # noqa: E402
from pqmpc_node.mpc.outputs import DeliveredShare, OutputForgeryError, verify_delivered  # noqa: E402
from pqmpc_node.dealer.seeded import PreprocessingMismatchError, SplitProvider  # noqa: E402
from pqmpc_node.mpc.sharing import AdditiveScheme  # noqa: E402
from pqmpc_node.payloads import InputPayload, OutputPayload, OutputShare, PayloadError  # noqa: E402

CONFIGS = {
    "additive": EngineConfig(3, security="malicious"),
    "shamir": EngineConfig(4, threshold=1, sharing="shamir", security="malicious"),
    "shamir-semi-honest": EngineConfig(4, threshold=1, sharing="shamir"),
}
CHEATER = 2
LABELS = ["beaver", "ltz", "split", f"input/{CHEATER}", "input-degree", "input-check", "valid-count", "output-keys"]


def _cases() -> list[Any]:
    cases = []
    for kind in CONFIGS:
        for label in LABELS:
            if label == "input-degree" and not kind.startswith("shamir"):
                continue  # additive sessions have no degree check
            if kind == "shamir-semi-honest" and label != "input-degree":
                # Semi-honest sessions have no re-input, key check or output keys, and their
                # openings read only the first t replies; the degree check reads every share.
                continue
            cases.append(pytest.param(kind, label, id=f"{kind}-{label}"))
    return cases


@pytest.mark.parametrize(("kind", "label"), _cases())
def test_non_canonical_element_aborts_and_blames_its_sender(kind: str, label: str) -> None:
    r = run(CONFIGS[kind], cheater=CHEATER, tamper=non_canonical(label))
    for p in r.honest(CHEATER):
        err = r.error_at(p)
        assert isinstance(err, NonCanonicalError), err
        assert err.blamed_parties == (CHEATER,) and err.check == "canonical-element", err
        assert "not a canonical element" in str(err)


@pytest.fixture
def cheating_sigma(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make party CHEATER commit to (and reveal) a doctored sigma: how is chosen per test."""
    original = mac.encode_payload
    how: dict[str, Any] = {}

    def doctored(array: Any) -> bytes:
        data = original(array)
        if current_party.get() != CHEATER or array.size != 1:
            return data
        if how["mode"] == "short":
            return data[:4]
        return np.array([int(array[0]) + P61], dtype=np.uint64).tobytes()

    monkeypatch.setattr(mac, "encode_payload", doctored)
    return how


@pytest.mark.parametrize("mode", ["plus-p", "short"])
@pytest.mark.parametrize("kind", ["additive", "shamir"])
def test_doctored_sigma_is_blamed_not_an_index_error(cheating_sigma: Any, kind: str, mode: str) -> None:
    cheating_sigma["mode"] = mode
    r = run(CONFIGS[kind], cheater=CHEATER)
    for p in r.honest(CHEATER):
        err = r.error_at(p)
        assert isinstance(err, NonCanonicalError), err
        assert err.blamed_parties == (CHEATER,)
        assert err.check == ("canonical-element" if mode == "plus-p" else "element-format")


def test_owner_payload_with_non_canonical_share_is_refused() -> None:
    good = np.array([1, 2, 3], dtype=np.uint64)
    bad = np.array([1, 2 + P61, 3], dtype=np.uint64)
    body = InputPayload("rows", "mersenne61", {"amount": bad}, {}, 3, {"amount": good}, np.array([5, 25], dtype=np.uint64))
    with pytest.raises(PayloadError, match="outside the field"):
        InputPayload.decode(body.encode(), domain="mersenne61", fields=["amount"], keyed=True)
    body = InputPayload("rows", "mersenne61", {"amount": good}, {}, 3, {"amount": bad}, np.array([5, 25], dtype=np.uint64))
    with pytest.raises(PayloadError, match="outside the field"):
        InputPayload.decode(body.encode(), domain="mersenne61", fields=["amount"], keyed=True)


def test_output_share_with_non_canonical_word_is_refused_by_the_recipient() -> None:
    d, scheme = MersenneField61(), AdditiveScheme(2)
    payload = OutputPayload("s", 0, "mersenne61", "additive", 1, 16,
                            {"sum(x)": OutputShare("fixed", np.array([P61 + 1], dtype=np.uint64),
                                                   np.array([1], dtype=np.uint64), np.array([1], dtype=np.uint64))}, {})
    with pytest.raises(PayloadError, match="outside the field"):
        OutputPayload.decode(payload.encode())
    one = np.array([1], dtype=np.uint64)
    shares = {0: DeliveredShare(np.array([P61 + 1], dtype=np.uint64), one, one), 1: DeliveredShare(one, one, one)}
    with pytest.raises(OutputForgeryError, match="not a mersenne61 element"):
        verify_delivered(d, scheme, shares, authenticated=True)


def test_dealer_stream_with_non_canonical_word_is_refused() -> None:
    d, scheme = MersenneField61(), AdditiveScheme(2)
    stream = np.full(64, P61 + 7, dtype=np.uint64)
    provider = SplitProvider(d, scheme, 0, seed=b"s" * 32, stream=stream, manifest=None, authenticated=False)
    with pytest.raises(PreprocessingMismatchError, match="not a canonical"):
        provider.triples((4,))
