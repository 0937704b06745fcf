"""MPCSession planning without a cluster: spec checks, the signed plan, folding party reports."""

from __future__ import annotations

import base64
import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from pqmpc_node.client import Identity
from pqmpc_node.crypto.suites import get_suite
from pqmpc_node.plan import PLAN_SIGNATURE_CONTEXT, canonical_bytes
from pqmpc_operator.model import SpecError
from pqmpc_operator.session_model import parse_mpcsession
from pqmpc_operator.session_plan import PartyNode, build_signed_plan, session_progress

SUITE = get_suite("pq-default")
NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.timezone.utc)
IDS = {n: Identity.generate(n).public_document() for n in ("bank-a", "bank-b", "insurer", "auditor")}


REPO = Path(__file__).resolve().parents[2]


def body(**spec: Any) -> dict[str, Any]:
    fields = [{"name": "amount", "min": 0, "max": 100}]
    base: dict[str, Any] = {
        "poolRef": "banks", "parties": 2, "threshold": 1,
        "inputs": [{"owner": o, "identity": IDS[o]["identity"], "fields": fields} for o in ("bank-a", "bank-b")],
        "program": {"aggregate": [{"op": "mean", "field": "amount"}]},
        "outputs": [{"recipient": "auditor", "identity": IDS["auditor"]["kemPublicKey"], "allow": ["mean(amount)"]}],
    }
    base.update(spec)
    if "aggregate" not in base["program"] and "outputs" not in spec:  # a model's result is its score
        base["outputs"] = [dict(base["outputs"][0], allow=["score"])]
    return {"metadata": {"name": "s", "namespace": "ns", "uid": "0123456789abcdef", "generation": 1}, "spec": base}


class TestSpec:
    def test_defaults_and_session_id(self) -> None:
        spec = parse_mpcsession(body(), SUITE)
        assert spec.session_id == "ns.s.01234567"
        assert spec.sharing == "additive" and spec.security == "malicious"
        assert [i.role for i in spec.inputs] == ["data", "data"]
        assert spec.deadline_s == 3600

    def test_model_owner_is_an_input_without_fields(self) -> None:
        inputs = body()["spec"]["inputs"] + [{"owner": "insurer", "identity": IDS["insurer"]["identity"]}]
        spec = parse_mpcsession(body(inputs=inputs, program={"linearScore": {"modelOwner": "insurer", "features": ["amount"]}}), SUITE)
        assert [i.role for i in spec.inputs] == ["data", "data", "model"]

    @pytest.mark.parametrize(
        ("change", "field", "words"),
        [
            # ot runs additive sessions only: a Shamir session is told to use prss or auto.
            ({"preprocessing": "ot", "sharing": "shamir", "parties": 3}, "preprocessing",
             "runs additive sessions only, this one is shamir"),
            ({"preprocessing": "ot", "sharing": "shamir", "parties": 3}, "preprocessing", "use prss or auto"),
            ({"preprocessing": "prss"}, "preprocessing", "needs Shamir sharing with an honest majority"),
            ({"preprocessing": "sometimes"}, "preprocessing", "use auto (the default), ot, prss, or dealer"),
            ({"program": {"mlp": {"modelOwner": "insurer", "features": ["amount"], "layers": [2, 1]}}}, "inputs", "modelOwner"),
        ],
    )
    def test_unusable_specs(self, change: dict[str, Any], field: str, words: str) -> None:
        with pytest.raises(SpecError) as err:
            parse_mpcsession(body(**change), SUITE)
        assert err.value.field_path == field and words in str(err.value)

    @pytest.mark.parametrize(
        ("change", "provider", "note"),
        [
            # additive, any n >= 2, semi-honest or malicious: auto runs it dealer-free on ot
            ({}, "ot", "auto: additive session, dealer-free (ot: ML-KEM base OTs + OT extension)"),
            ({"parties": 3}, "ot", "auto: additive session, dealer-free (ot"),
            ({"security": "semi-honest"}, "ot", "auto: additive session, dealer-free (ot"),
            ({"preprocessing": "auto"}, "ot", "dealer-free (ot"),
            ({"preprocessing": "ot", "parties": 3}, "ot", ""),  # named: no note of auto's
            ({"preprocessing": "dealer"}, "dealer", ""),  # the dealer stays an explicit choice
            ({"sharing": "shamir", "parties": 3, "threshold": 1}, "prss", "dealer-free (prss)"),
            ({"sharing": "shamir", "parties": 5, "threshold": 2, "preprocessing": "prss"}, "prss", ""),
            ({"sharing": "shamir", "parties": 3, "threshold": 1, "preprocessing": "dealer"}, "dealer", ""),
            # 2t = n: no honest majority, and ot is for additive sessions: the dealer, and the note says why
            ({"sharing": "shamir", "parties": 4, "threshold": 2}, "dealer", "trusted dealer"),
            ({"sharing": "shamir", "parties": 4, "threshold": 2}, "dealer", "ot runs additive sessions only"),
        ],
    )
    def test_preprocessing_provider_is_resolved_at_admission(self, change: dict[str, Any], provider: str,
                                                             note: str) -> None:
        spec = parse_mpcsession(body(**change), SUITE)
        assert spec.preprocessing == provider
        assert note in spec.preprocessing_note and (note != "" or spec.preprocessing_note == "")

    def test_wrong_keys_are_named(self) -> None:
        b = body()
        b["spec"]["inputs"][1]["identity"] = base64.b64encode(b"short").decode()
        with pytest.raises(SpecError, match=r"inputs\[1\]\.identity.*pqmpc identity new"):
            parse_mpcsession(b, SUITE)
        b = body()
        b["spec"]["outputs"][0]["identity"] = IDS["bank-a"]["identity"]  # a signing key, not a KEM key
        with pytest.raises(SpecError, match=r"outputs\[0\]\.identity"):
            parse_mpcsession(b, SUITE)

    def test_the_examples_placeholder_identities_say_what_to_do(self) -> None:
        """The example sessions ship placeholders; applying one as is names the field and the command."""
        example = yaml.safe_load((REPO / "examples" / "mpcsession-fraud-stats.yaml").read_text())
        example["metadata"].update(namespace="ns", uid="0123456789abcdef", generation=1)
        with pytest.raises(SpecError) as err:
            parse_mpcsession(example, SUITE)
        assert err.value.field_path == "inputs[0].identity"
        assert "still the example's placeholder" in str(err.value) and "pqmpc identity new" in str(err.value)
        b = body()
        b["spec"]["outputs"][0]["identity"] = example["spec"]["outputs"][0]["identity"]
        with pytest.raises(SpecError, match=r"outputs\[0\]\.identity.*placeholder.*kemPublicKey"):
            parse_mpcsession(b, SUITE)

    def test_a_session_nobody_can_read_is_refused(self) -> None:
        b = body()
        b["spec"]["outputs"] = []
        with pytest.raises(SpecError, match=r"outputs.*is empty.*nobody can ever read"):
            parse_mpcsession(b, SUITE)

    def test_data_owners_must_share_columns(self) -> None:
        b = body()
        b["spec"]["inputs"][1]["fields"] = [{"name": "amount", "min": 0, "max": 5}]
        with pytest.raises(SpecError, match=r"inputs\[1\]\.fields.*same min/max"):
            parse_mpcsession(b, SUITE)


class TestNumbersAtAdmission:
    """The operator compiles the program against the ranges and the row bound before anything is placed."""

    def test_a_program_that_could_overflow_is_refused_with_what_to_change(self) -> None:
        fields = [{"name": "amount", "min": -1e9, "max": 1e9, "decimals": 6}]
        b = body(maxRowsPerOwner=100_000, program={"aggregate": [{"op": "variance", "field": "amount"}]},
                 outputs=[{"recipient": "auditor", "identity": IDS["auditor"]["kemPublicKey"],
                           "allow": ["variance(amount)"]}])
        for i in b["spec"]["inputs"]:
            i["fields"] = fields
        with pytest.raises(SpecError) as err:
            parse_mpcsession(b, SUITE)
        assert err.value.field_path == "program.aggregate[variance(amount)]"
        assert str(err.value) == (
            "spec.program.aggregate[variance(amount)]: the variance of up to 200000 rows (2 owners x maxRowsPerOwner "
            "100000) of amount spanning 2000000000000000 units of 10^-6 ([-1e+09, 1e+09]) needs (rows x span)^2 / 4 = "
            "2^134.9, beyond what 4 60-bit limbs carry exactly; set spec.maxRowsPerOwner to at most 27270, declare "
            "fewer decimals, or narrow [min, max] of amount")

    def test_automatic_decimals_and_the_row_bound_are_signed_into_the_plan(self) -> None:
        spec = parse_mpcsession(body(maxRowsPerOwner=500), SUITE)
        assert spec.inputs[0].fields == (("amount", 0.0, 100.0, 6),) and spec.max_rows_per_owner == 500
        signer = SUITE.signature.generate(os.urandom(32))
        parties = [PartyNode(f"n{i}", f"127.0.0.{10 + i}", f"n{i}.svc", 9443, 8443, "ab" * 32, 1,
                             base64.b64decode(IDS["auditor"]["kemPublicKey"])) for i in range(2)]
        plan = build_signed_plan(spec, parties, suite=SUITE, signer=signer, generation=1, now=NOW,
                                 deadline_at=NOW + dt.timedelta(hours=1), rng=os.urandom).plan
        assert plan.max_rows_per_owner == 500 and plan.data_fields()[0].decimals == 6
        assert plan.execution_plan().numerics["amount"].decimals == 6  # type: ignore[union-attr]

    def test_model_precision_is_resolved_at_admission(self) -> None:
        inputs = body()["spec"]["inputs"] + [{"owner": "insurer", "identity": IDS["insurer"]["identity"]}]
        spec = parse_mpcsession(body(inputs=inputs, program={"mlp": {"modelOwner": "insurer", "features": ["amount"],
                                                                     "layers": [256, 256, 1], "weightBound": 16}}), SUITE)
        assert 8 <= spec.frac_bits < 16


def test_signed_plan_verifies_and_carries_no_dealer_material() -> None:
    spec = parse_mpcsession(body(), SUITE)
    signer = SUITE.signature.generate(os.urandom(32))
    parties = [PartyNode(f"n{i}", f"127.0.0.{10 + i}", f"n{i}.svc", 9443, 8443, "ab" * 32, 1,
                         base64.b64decode(IDS["auditor"]["kemPublicKey"])) for i in range(2)]
    signed = build_signed_plan(spec, parties, suite=SUITE, signer=signer, generation=3, now=NOW,
                               deadline_at=NOW + dt.timedelta(hours=1), rng=os.urandom)
    doc = signed.to_json()
    signer.public_key().verify(base64.b64decode(doc["signature"]), canonical_bytes(doc["plan"]), PLAN_SIGNATURE_CONTEXT)
    assert [p["nodeId"] for p in doc["plan"]["parties"]] == ["n0", "n1"]
    assert doc["plan"]["generation"] == 3 and doc["plan"]["sessionId"] == spec.session_id
    assert not signed.plan.sealed_dealer_seeds
    # auto on an additive session: the plan names the dealer-free ot provider, with no seed.
    assert doc["plan"]["preprocessing"] == {"provider": "ot", "sealedSeeds": {}}


class TestProgress:
    spec = parse_mpcsession(body(preprocessing="dealer"), SUITE)

    def report(self, phase: str, received: tuple[bool, bool], **extra: Any) -> dict[str, Any]:
        return {"phase": phase, "inputs": [{"owner": "bank-a", "received": received[0]},
                                           {"owner": "bank-b", "received": received[1]}], **extra}

    def test_awaiting_then_dealing_then_computing(self) -> None:
        p = session_progress(self.spec, {"n0": self.report("AwaitingInputs", (True, False)),
                                         "n1": self.report("AwaitingInputs", (True, False))})
        assert p.phase == "AwaitingInputs" and [i["received"] for i in p.inputs] == [True, False]
        p = session_progress(self.spec, {"n0": self.report("AwaitingInputs", (True, True), awaitingPreprocessing=True,
                                                           inputRows={"bank-a": 3, "bank-b": 2}),
                                         "n1": self.report("AwaitingInputs", (True, True))})
        assert p.phase == "Preprocessing" and p.input_rows == {"bank-a": 3, "bank-b": 2}
        p = session_progress(self.spec, {"n0": self.report("Computing", (True, True)), "n1": None})
        assert p.phase == "Computing"

    def test_parties_waiting_for_a_replacement_say_why(self) -> None:
        why = "the parties do not hold the same inputs yet (...): 'bank-a': version 2 at party 0 (n0); version 1 ..."
        p = session_progress(self.spec, {"n0": self.report("AwaitingInputs", (True, True), inputsAgreement=why),
                                         "n1": self.report("AwaitingInputs", (True, True), inputsAgreement=why)})
        assert (p.phase, p.reason, p.message) == ("AwaitingInputs", "AwaitingInputs", why)

    def test_failure_wins_and_names_its_reason(self) -> None:
        p = session_progress(self.spec, {"n0": self.report("Failed", (True, True), reason="mac_check_failed"),
                                         "n1": self.report("Succeeded", (True, True))})
        assert p.phase == "Failed" and p.reason == "mac_check_failed"

    def test_the_party_whose_check_caught_a_cheat_names_the_check(self) -> None:
        cheater = self.report("Failed", (True, True), reason="peer_lost", message="lost party 1")
        honest = self.report("Failed", (True, True), reason="mac_check_failed", message="MAC check failed",
                             failedCheck="owner-input-key")
        p = session_progress(self.spec, {"n0": cheater, "n1": honest})
        assert p.phase == "Failed" and p.reason == "mac_check_failed"
        assert "owner-input-key" in p.message and "lost party" not in p.message

    def test_a_dealer_free_party_claiming_to_await_material_is_not_believed(self) -> None:
        """Only a session on the dealer waits for dealing: an ot (or prss) session never shows Dealing."""
        claim = self.report("AwaitingInputs", (True, True), awaitingPreprocessing=True, inputRows={"bank-a": 3, "bank-b": 2})
        for dealer_free in (parse_mpcsession(body(), SUITE),
                            parse_mpcsession(body(sharing="shamir", parties=3, threshold=1), SUITE)):
            assert dealer_free.preprocessing in ("ot", "prss")
            p = session_progress(dealer_free, {"n0": claim, "n1": claim})
            assert p.phase == "AwaitingInputs" and p.input_rows is None, dealer_free.preprocessing
        p = session_progress(self.spec, {"n0": claim, "n1": claim})  # the same claims, on the dealer
        assert p.phase == "Preprocessing" and p.input_rows == {"bank-a": 3, "bank-b": 2}

    def test_success_needs_every_party_for_additive(self) -> None:
        ok = self.report("Succeeded", (True, True), outputsReady=["auditor"])
        assert session_progress(self.spec, {"n0": ok, "n1": ok}).phase == "Succeeded"
        assert session_progress(self.spec, {"n0": ok, "n1": None}).phase != "Succeeded"


def test_an_allow_entry_the_program_does_not_compute_is_refused_naming_it() -> None:
    """The admission policy refuses it at the API server; the operator refuses it too, for clusters without it."""
    b = body()
    b["spec"]["outputs"][0]["allow"] = [*b["spec"]["outputs"][0]["allow"], "sum(amount)"]
    with pytest.raises(SpecError) as err:
        parse_mpcsession(b, SUITE)
    assert err.value.field_path == "outputs[0].allow[1]"
    assert str(err.value).startswith("spec.outputs[0].allow[1]: sum(amount) is not a result the program computes; "
                                     "allow only results of spec.program (mean(amount))")


def test_the_preprocessing_limit_is_the_nodes_unless_lowered() -> None:
    """The operator deals nothing a node would refuse; a test may lower the limit, never raise it."""
    from pqmpc_node.dealer.size import PREPROCESSING_LIMIT
    from pqmpc_operator.settings import settings_from_env

    assert settings_from_env({}).preprocessing_limit == PREPROCESSING_LIMIT == 256 << 20
    assert settings_from_env({"PQMPC_PREPROCESSING_LIMIT_BYTES": "1048576"}).preprocessing_limit == 1 << 20
    for bad in ("0", "-1", "1MiB", str(PREPROCESSING_LIMIT + 1)):
        with pytest.raises(ValueError, match="PQMPC_PREPROCESSING_LIMIT_BYTES"):
            settings_from_env({"PQMPC_PREPROCESSING_LIMIT_BYTES": bad})
