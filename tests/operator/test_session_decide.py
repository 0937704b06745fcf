"""The pure MPCSession decision, ``decide(observed, now)``, step by step: no I/O, no fakes.

Each test hands it what a pass would have observed (the stored session, the pool, loads,
pod IPs, the plan delivery, the parties' replies, the dealing) and checks the status and
the ordered actions: which observation it asks for next, what it writes, when it ends
the pass. Also: the Events a status change calls for, and what a deletion cancels.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from pqmpc_node.client import Identity
from pqmpc_operator.session_decide import (
    AskParties,
    CancelAtParties,
    CountPlacementFailure,
    Deal,
    DealingFailed,
    Dealt,
    DeleteSession,
    DeliverPlan,
    ObservedSession,
    PartyUnreachable,
    PlanAccepted,
    PlanRefused,
    ReadLoads,
    ReadPods,
    ReadPool,
    RecordEvidence,
    Requeue,
    SessionEvent,
    SessionPhase,
    TooLarge,
    WriteStatus,
    cancel_target,
    decide,
    session_events,
)

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.timezone.utc)
IDS = {n: Identity.generate(n).public_document() for n in ("bank-a", "bank-b", "auditor")}
IPS = {"n-a": "10.0.0.1", "n-b": "10.0.0.2", "n-c": "10.0.0.3"}
PORT = 8443


def ts(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def session(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    fields = [{"name": "amount", "min": 0, "max": 100}]
    base: dict[str, Any] = {
        "poolRef": "banks", "parties": 2, "threshold": 1, "deadline": "10m", "ttlSecondsAfterFinished": 60,
        "inputs": [{"owner": o, "identity": IDS[o]["identity"], "fields": fields} for o in ("bank-a", "bank-b")],
        "program": {"aggregate": [{"op": "mean", "field": "amount"}]},
        "outputs": [{"recipient": "auditor", "identity": IDS["auditor"]["kemPublicKey"], "allow": ["mean(amount)"]}],
    }
    base.update(spec)
    return {"metadata": {"name": "s", "namespace": "ns", "uid": "0123abcd-ffff", "generation": 2,
                         "creationTimestamp": ts(NOW - dt.timedelta(minutes=1))},
            "spec": base, "status": status or {}}


POOL = {
    "metadata": {"name": "banks", "namespace": "ns", "uid": "pool-uid", "generation": 1},
    "spec": {"groups": [{"name": g, "replicas": 1, "region": "eu-west", "zone": f"z-{g}", "trustDomain": f"td-{g}"}
                        for g in ("a", "b", "c")]},
    "status": {"nodes": [{"name": f"n-{g}", "group": g, "region": "eu-west", "zone": f"z-{g}", "trustDomain": f"td-{g}",
                          "ready": True, "phase": "Running", "certFingerprint": "f" * 64} for g in ("a", "b", "c")]},
}
PLACED = [{"party": 0, "node": "n-a", "region": "eu-west", "zone": "z-a", "trustDomain": "td-a"},
          {"party": 1, "node": "n-b", "region": "eu-west", "zone": "z-b", "trustDomain": "td-b"}]
RUNNING = {"phase": "AwaitingInputs", "reason": "PlanDelivered", "message": "m", "placement": PLACED,
           "planGeneration": 1, "planDigest": "d" * 64, "sessionId": "ns.s.0123abcd", "startTime": ts(NOW),
           "conditions": [{"type": "Placed", "status": "True", "reason": "Placed", "message": "m",
                           "observedGeneration": 1, "lastTransitionTime": "2026-12-03T11:59:00Z"}]}


def observed(body: dict[str, Any], **seen: Any) -> ObservedSession:
    return ObservedSession(body=body, **seen)  # type: ignore[typeddict-item]


def running(spec: dict[str, Any] | None = None, **seen: Any) -> ObservedSession:
    return observed(session(copy.deepcopy(RUNNING), **(spec or {})), pool=POOL, pod_ips=IPS, **seen)


DEALER = {"preprocessing": "dealer"}
"""An additive session that asks for the dealer by name (auto runs it dealer-free on ot)."""


def step(obs: ObservedSession, now: dt.datetime = NOW) -> tuple[dict[str, Any], list[Any]]:
    status, actions = decide(obs, now, api_port=PORT)
    return dict(status), actions


class TestAdmission:
    def test_first_it_asks_for_the_pool_and_writes_nothing(self) -> None:
        status, actions = step(observed(session()))
        assert actions == [ReadPool()]
        assert status["sessionId"] == "ns.s.0123abcd" and status["startTime"] == ts(NOW)
        assert status["observedGeneration"] == 2

    def test_a_missing_pool_waits_in_pending(self) -> None:
        status, actions = step(observed(session(), pool=None))
        assert actions == [WriteStatus(), Requeue(5.0)]
        assert (status["phase"], status["reason"]) == ("Pending", "PoolNotFound")
        assert status["conditions"][0]["type"] == "Ready" and status["conditions"][0]["status"] == "False"

    def test_an_unusable_spec_fails_with_the_field(self) -> None:
        status, actions = step(observed(session(outputs=[]), pool=POOL))
        assert actions == [WriteStatus(), Requeue(1.0)]
        assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
        assert "spec.outputs" in status["message"] and status["completionTime"] == ts(NOW)

    def test_the_deadline_counts_from_creation(self) -> None:
        body = session(copy.deepcopy(RUNNING))
        _, actions = step(observed(body), NOW + dt.timedelta(minutes=8, seconds=59))
        assert actions == [ReadPool()]
        status, actions = step(observed(body), NOW + dt.timedelta(minutes=9))
        assert actions == [WriteStatus(), Requeue(1.0)]
        assert (status["phase"], status["reason"]) == ("Failed", "DeadlineExceeded")
        assert "spec.deadline (10m)" in status["message"]

    def test_an_unparseable_deadline_means_one_hour(self) -> None:
        body = session(deadline="soon")
        assert step(observed(body), NOW + dt.timedelta(minutes=58))[1] == [ReadPool()]
        assert step(observed(body), NOW + dt.timedelta(minutes=59))[0]["reason"] == "DeadlineExceeded"


class TestFinished:
    @pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
    def test_waits_out_the_ttl_then_deletes(self, phase: str) -> None:
        body = session({"phase": phase, "completionTime": ts(NOW)})
        assert step(observed(body), NOW + dt.timedelta(seconds=20)) == (body["status"], [Requeue(40.0)])
        assert step(observed(body), NOW + dt.timedelta(seconds=60))[1] == [DeleteSession(60)]

    def test_a_long_ttl_is_rechecked_hourly(self) -> None:
        body = session({"phase": "Succeeded", "completionTime": ts(NOW)}, ttlSecondsAfterFinished=86400)
        assert step(observed(body))[1] == [Requeue(3600.0)]


class TestPlacement:
    def test_asks_for_loads_then_places_and_asks_for_pods(self) -> None:
        assert step(observed(session(), pool=POOL))[1] == [ReadLoads()]
        status, actions = step(observed(session(), pool=POOL, loads={"n-a": 3}))
        assert [type(a) for a in actions] == [ReadPods]
        assert [p["node"] for p in status["placement"]] == ["n-b", "n-c"]  # the least loaded
        assert (status["phase"], status["reason"]) == ("Preprocessing", "Placed")
        assert status["message"] == "placed on n-b, n-c; signing and sending the plan"

    def test_infeasible_is_counted_written_and_retried(self) -> None:
        status, actions = step(observed(session(parties=4, sharing="shamir"), pool=POOL, loads={}))
        assert actions == [CountPlacementFailure("NotEnoughReadyNodes"), WriteStatus(), Requeue(5.0)]
        assert status["phase"] == "Placing" and "need 4" in status["message"]

    def test_a_retry_of_the_same_failure_is_not_counted_again(self) -> None:
        # placement_failures_total counts placements that failed, not the 5-second retries.
        first, _ = step(observed(session(parties=4, sharing="shamir"), pool=POOL, loads={}))
        body = session(first, parties=4, sharing="shamir")
        status, actions = step(observed(body, pool=POOL, loads={}), NOW + dt.timedelta(seconds=5))
        assert actions == [WriteStatus(), Requeue(5.0)]
        assert (status["phase"], status["reason"]) == ("Placing", "NotEnoughReadyNodes")

    def test_a_new_failure_reason_is_counted(self) -> None:
        body = session({"phase": "Placing", "reason": "ZoneCap", "message": "m"}, parties=4, sharing="shamir")
        _, actions = step(observed(body, pool=POOL, loads={}))
        assert actions[0] == CountPlacementFailure("NotEnoughReadyNodes")

    def test_a_stored_placement_is_kept(self) -> None:
        body = session({**copy.deepcopy(RUNNING), "phase": "Preprocessing", "planDigest": ""})
        status, actions = step(observed(body, pool=POOL))
        assert [type(a) for a in actions] == [ReadPods] and status["placement"] == PLACED

    def test_a_pending_session_is_placed_again(self) -> None:
        body = session({**copy.deepcopy(RUNNING), "phase": "Pending"})
        assert step(observed(body, pool=POOL))[1] == [ReadLoads()]


class TestPlan:
    def obs(self, spec: dict[str, Any] | None = None, **seen: Any) -> ObservedSession:
        return observed(session({"planGeneration": 3}, **(spec or {})), pool=POOL, loads={}, pod_ips=IPS, **seen)

    def test_asks_to_deliver_the_next_generation(self) -> None:
        status, actions = step(self.obs())
        (deliver,) = actions
        assert isinstance(deliver, DeliverPlan) and deliver.generation == 4 and status["planGeneration"] == 4
        assert [p["node"] for p in deliver.placement] == ["n-a", "n-b"]
        assert deliver.admission.spec.session_id == "ns.s.0123abcd"
        assert deliver.admission.deadline_at == NOW + dt.timedelta(minutes=9)

    def test_a_refused_delivery_is_retried(self) -> None:
        status, actions = step(self.obs(delivery=PlanRefused("POST https://10.0.0.2:8443/v1/sessions: HTTP 503")))
        assert actions == [WriteStatus(), Requeue(2.0)]
        assert (status["phase"], status["reason"]) == ("Preprocessing", "PlanNotDelivered")
        assert status["message"].startswith("retrying: POST") and "planDigest" not in status

    def test_a_delivered_plan_awaits_inputs(self) -> None:
        status, actions = step(self.obs(delivery=PlanAccepted("e" * 64, 2)))
        assert actions == [WriteStatus(), Requeue(1.0)]
        assert (status["phase"], status["planDigest"], status["planGeneration"]) == ("AwaitingInputs", "e" * 64, 4)
        assert "generation 4" in status["message"] and "all 2 parties" in status["message"]
        assert status["result"]["nodes"] == ["https://10.0.0.1:8443", "https://10.0.0.2:8443"]
        assert status["result"]["recipients"][0]["recipient"] == "auditor"
        assert "externalNodes" not in status["result"] and "fetchFromOutside" not in status["result"]["recipients"][0]
        assert status["preprocessing"] == {"provider": "ot", "dealerFree": "true", "note": (
            "auto: additive session, dealer-free (ot: ML-KEM base OTs + OT extension)")}
        assert status["inputsReceived"] == "0/2"
        assert [(c["type"], c["status"]) for c in status["conditions"]] == [("Placed", "True"), ("PlanDelivered", "True")]

    def test_with_a_gateway_the_result_says_how_to_fetch_from_outside(self) -> None:
        pool = copy.deepcopy(POOL)
        pool["spec"]["externalAccess"] = {"domain": "banks.example.com", "service": {"port": 8443}}
        obs = observed(session({"planGeneration": 3}), pool=pool, loads={}, pod_ips=IPS,
                       delivery=PlanAccepted("e" * 64, 2))
        status, _ = step(obs)
        result = status["result"]
        assert result["externalNodes"] == ["https://n-a.banks.example.com", "https://n-b.banks.example.com"]
        fetch = result["recipients"][0]["fetchFromOutside"]
        assert "--gateway <address of Service banks-gateway>:8443" in fetch
        assert "--node https://n-a.banks.example.com" in fetch and "--session ns.s.0123abcd" in fetch
        assert status["preprocessing"]["provider"] == "ot"
        assert status["inputsReceived"] == "0/2"
        assert [(c["type"], c["status"]) for c in status["conditions"]] == [("Placed", "True"), ("PlanDelivered", "True")]

    @pytest.mark.parametrize(("spec", "provider", "free", "words"), [
        (DEALER, "dealer", "false", ["trusted dealer", "could read every input", "dealer-free"]),
        ({"preprocessing": "ot"}, "ot", "true", ["ot: made by the parties", "the operator sees no key, seed or triple"]),
        ({"sharing": "shamir", "parties": 3}, "prss", "true", ["auto: honest-majority Shamir session, dealer-free (prss)"]),
    ])
    def test_the_status_names_the_provider_and_why(self, spec: dict[str, Any], provider: str, free: str,
                                                   words: list[str]) -> None:
        status, _ = step(self.obs(spec, delivery=PlanAccepted("e" * 64, 2)))
        assert (status["preprocessing"]["provider"], status["preprocessing"]["dealerFree"]) == (provider, free)
        for word in words:
            assert word in status["preprocessing"]["note"], (word, status["preprocessing"])


def report(phase: str = "AwaitingInputs", **extra: Any) -> dict[str, Any]:
    return {"phase": phase, **extra}


class TestProgress:
    def test_asks_every_placed_party(self) -> None:
        assert step(running())[1] == [AskParties("ns.s.0123abcd", ("n-a", "n-b"))]

    def test_input_progress_and_unchanged_conditions(self) -> None:
        replies = {n: report(inputs=[{"owner": "bank-a", "received": True}]) for n in ("n-a", "n-b")}
        status, actions = step(running(replies=replies))
        assert actions == [WriteStatus(), Requeue(1.0)]
        assert status["inputs"] == [{"owner": "bank-a", "role": "data", "received": True, "parties": 2},
                                    {"owner": "bank-b", "role": "data", "received": False, "parties": 0}]
        assert status["inputsReceived"] == "1/2"  # the INPUTS column of kubectl get mpcs
        assert status["conditions"] == RUNNING["conditions"]  # transition times kept

    def test_input_progress_only_grows(self) -> None:
        body = session({**copy.deepcopy(RUNNING), "inputs": [
            {"owner": "bank-a", "role": "data", "received": True, "parties": 2},
            {"owner": "bank-b", "role": "data", "received": False, "parties": 1}]})
        status, _ = step(observed(body, pool=POOL, pod_ips=IPS, replies={"n-a": report(), "n-b": report()}))
        assert [(i["received"], i["parties"]) for i in status["inputs"]] == [(True, 2), (False, 1)]
        assert status["inputsReceived"] == "1/2"

    def test_all_inputs_in_asks_to_deal_then_records_it(self) -> None:
        replies = {n: report(awaitingPreprocessing=True, inputRows={"bank-a": 4, "bank-b": 5}) for n in IPS}
        status, actions = step(running(DEALER, replies=replies))
        (deal,) = actions
        assert isinstance(deal, Deal) and deal.rows == {"bank-a": 4, "bank-b": 5} and deal.digest == "d" * 64
        status, actions = step(running(DEALER, replies=replies, dealing=Dealt()))
        assert actions == [WriteStatus(), Requeue(1.0)]
        assert status["dealtDigest"] == "d" * 64 and (status["phase"], status["reason"]) == ("Preprocessing", "Dealing")
        status, _ = step(running(DEALER, replies=replies, dealing=DealingFailed("HTTP 503")))
        assert "dealtDigest" not in status
        cond = next(c for c in status["conditions"] if c["type"] == "Preprocessed")
        assert (cond["status"], cond["reason"], cond["message"]) == ("False", "DealingFailed", "retrying: HTTP 503")

    def test_material_that_cannot_fit_fails_the_session_and_tells_the_parties(self) -> None:
        """Terminal, not retried: Failed with the projected size, the limit, the rows that fit and what to do."""
        replies = {n: report(awaitingPreprocessing=True, inputRows={"bank-a": 4000, "bank-b": 4000}) for n in IPS}
        too_large = TooLarge(projected_bytes=279 << 20, limit_bytes=256 << 20, rows_that_fit=3670)
        status, actions = step(running(DEALER, replies=replies, dealing=too_large))
        message = status["message"]
        assert (status["phase"], status["reason"]) == ("Failed", "PreprocessingTooLarge")
        assert message.startswith("the dealt preprocessing would be 279.0 MiB per party, over the 256 MiB a node takes")
        assert "rows submitted: bank-a 4000, bank-b 4000" in message and "at most 3670 rows per owner fit" in message
        assert "preprocessing: auto" in message and "completionTime" in status and "dealtDigest" not in status
        (cancel, write, requeue) = actions
        assert isinstance(cancel, CancelAtParties) and (write, requeue) == (WriteStatus(), Requeue(1.0))
        assert (cancel.reason, cancel.message, cancel.digest, cancel.nodes) == (
            "PreprocessingTooLarge", message, "d" * 64, ("n-a", "n-b"))
        assert session_events(RUNNING, status) == [SessionEvent("Warning", "PreprocessingTooLarge", message)]
        # A finished session is not dealt again, whatever the parties still say.
        _, actions = step(observed(session(status), pool=POOL, pod_ips=IPS, replies=replies))
        assert not any(isinstance(a, (Deal, CancelAtParties)) for a in actions)

    def test_material_that_cannot_fit_a_single_row(self) -> None:
        replies = {n: report(awaitingPreprocessing=True, inputRows={"bank-a": 1, "bank-b": 1}) for n in IPS}
        status, _ = step(running(DEALER, replies=replies, dealing=TooLarge(300 << 20, 256 << 20, 0)))
        assert "not even one row per owner fits" in status["message"]

    @pytest.mark.parametrize("spec", [{}, {"preprocessing": "ot", "parties": 3}, {"preprocessing": "auto"}])
    def test_an_ot_session_is_never_dealt(self, spec: dict[str, Any]) -> None:
        """Parties claiming to await material (rows and all) get no Deal in a dealer-free additive session."""
        replies = {n: report(awaitingPreprocessing=True, inputRows={"bank-a": 4, "bank-b": 5},
                             inputs=[{"owner": o, "received": True} for o in ("bank-a", "bank-b")]) for n in IPS}
        status, actions = step(running(spec, replies=replies))
        assert actions == [WriteStatus(), Requeue(1.0)]
        assert not any(isinstance(a, Deal) for a in actions)
        assert status["phase"] == "AwaitingInputs" and "dealtDigest" not in status
        assert "Preprocessed" not in {c["type"] for c in status["conditions"]}

    def test_dealt_once_per_plan(self) -> None:
        body = session({**copy.deepcopy(RUNNING), "dealtDigest": "d" * 64})
        replies = {n: report(awaitingPreprocessing=True, inputRows={"bank-a": 4, "bank-b": 5}) for n in IPS}
        _, actions = step(observed(body, pool=POOL, pod_ips=IPS, replies=replies))
        assert actions == [WriteStatus(), Requeue(1.0)]

    def test_success_sets_the_result_and_completion(self) -> None:
        replies = {n: report("Succeeded", outputsReady=["mean(amount)"], rejectedRows=1) for n in ("n-a", "n-b")}
        status, actions = step(running(replies=replies))
        assert actions == [WriteStatus(), Requeue(1.0)]
        assert (status["phase"], status["reason"], status["completionTime"]) == ("Succeeded", "Completed", ts(NOW))
        assert status["result"]["outputsReady"] == ["mean(amount)"] and status["result"]["rejectedRows"] == 1

    def test_a_failed_party_fails_it_and_leaves_evidence(self) -> None:
        replies = {"n-a": report("Failed", reason="input_rejected", message="row 3 out of range"), "n-b": report()}
        status, actions = step(running(replies=replies))
        assert [type(a) for a in actions] == [RecordEvidence, WriteStatus, Requeue]
        assert isinstance(actions[0], RecordEvidence) and actions[0].pool == "banks"
        assert actions[0].evidence.session_id == "ns.s.0123abcd"
        assert (status["phase"], status["reason"], status["message"]) == ("Failed", "input_rejected", "row 3 out of range")


class TestLostParties:
    def test_unreachable_is_remembered_and_lost_after_20s(self) -> None:
        replies = {"n-a": report(), "n-b": PartyUnreachable("ConnectError")}
        status, _ = step(running(replies=replies))
        assert status["unreachableSince"] == {"n-b": ts(NOW)} and status["phase"] == "AwaitingInputs"
        body = session({**copy.deepcopy(RUNNING), "unreachableSince": {"n-b": ts(NOW)}})
        obs = observed(body, pool=POOL, pod_ips=IPS, replies=replies)
        assert step(obs, NOW + dt.timedelta(seconds=19))[0]["phase"] == "AwaitingInputs"
        status, actions = step(obs, NOW + dt.timedelta(seconds=20))
        assert (status["phase"], status["reason"]) == ("Failed", "NodeLost")
        assert status["message"].startswith("party 1 (n-b): ConnectError — additive sharing needs every party")
        assert "every owner's input is kept secret" in status["message"]
        assert isinstance(actions[0], RecordEvidence)

    @pytest.mark.parametrize("spec", [{}, DEALER, {"parties": 3}])
    def test_a_lost_party_ends_an_additive_session_on_any_provider_with_inputs_kept(self, spec: dict[str, Any]) -> None:
        body = session({**copy.deepcopy(RUNNING), "unreachableSince": {"n-b": ts(NOW)}}, **spec)
        replies = {"n-a": report("Computing"), "n-b": PartyUnreachable("ConnectError")}
        status, _ = step(observed(body, pool=POOL, pod_ips=IPS, replies=replies), NOW + dt.timedelta(seconds=20))
        assert (status["phase"], status["reason"]) == ("Failed", "NodeLost"), status
        assert "additive sharing needs every party" in status["message"]
        assert "every owner's input is kept secret" in status["message"] and "no output was released" in status["message"]

    def test_a_prss_session_below_2t_plus_1_offers_a_re_run_with_the_survivors(self) -> None:
        placed = [*PLACED, {"party": 2, "node": "n-c", "region": "eu-west", "zone": "z-c", "trustDomain": "td-c"}]
        body = session({**copy.deepcopy(RUNNING), "placement": placed}, parties=3, sharing="shamir")
        ips = {"n-a": IPS["n-a"], "n-b": IPS["n-b"]}
        replies: dict[str, Any] = {"n-a": report("Computing"), "n-b": report("Computing"),
                                   "n-c": PartyUnreachable("no pod IP")}
        status, _ = step(observed(body, pool=POOL, pod_ips=ips, replies=replies))
        # The survivors still compute: only their own reports can say they keep the inputs, so it waits for them.
        assert (status["phase"], status["reason"]) == ("Computing", "PartyLost"), status
        assert "rerun" not in status
        replies["n-a"] = replies["n-b"] = report("Failed", reason="peer_lost", inputsKept=True,
                                                 message="lost party 2; dealer-free multiplication needs 2t + 1 = 3")
        status, actions = step(observed(body, pool=POOL, pod_ips=ips, replies=replies))
        assert (status["phase"], status["reason"]) == ("Failed", "peer_lost"), status  # the parties' word wins
        assert status["message"].startswith("lost party 2; dealer-free multiplication needs 2t + 1 = 3")
        assert "parties [0, 1] keep every owner's input until the deadline" in status["message"]
        assert "kubectl annotate mpcsession s pqmpc.io/rerun=1 --overwrite" in status["message"]
        assert "resubmit" not in status["message"]
        assert status["rerun"] == {"available": True, "survivors": [0, 1], "inputsHeldBy": [], "requested": "",
                                   "hint": "kubectl annotate mpcsession s pqmpc.io/rerun=1 --overwrite"}
        assert isinstance(actions[0], RecordEvidence)
        finished = session(status, parties=3, sharing="shamir")
        assert step(observed(finished))[1] == [Requeue(5.0)]  # it looks for the annotation while the offer stands
        finished["metadata"]["annotations"] = {"pqmpc.io/rerun": "1"}
        assert step(observed(finished))[1] == [ReadPool()]  # the re-run begins: pool, loads, pods, survivors

    def test_a_prss_session_that_lost_a_party_before_computing_has_nothing_to_re_run(self) -> None:
        placed = [*PLACED, {"party": 2, "node": "n-c", "region": "eu-west", "zone": "z-c", "trustDomain": "td-c"}]
        body = session({**copy.deepcopy(RUNNING), "placement": placed}, parties=3, sharing="shamir")
        replies = {"n-a": report(), "n-b": report(), "n-c": PartyUnreachable("no pod IP")}
        status, _ = step(observed(body, pool=POOL, pod_ips={"n-a": IPS["n-a"], "n-b": IPS["n-b"]}, replies=replies))
        assert (status["phase"], status["reason"]) == ("Failed", "NodeLost"), status
        assert "create a new session (owners submit again)" in status["message"] and "rerun" not in status

    def test_a_party_without_a_pod_is_lost_at_once(self) -> None:
        obs = observed(session(copy.deepcopy(RUNNING)), pool=POOL, pod_ips={"n-a": IPS["n-a"]},
                       replies={"n-a": report(), "n-b": PartyUnreachable("no pod IP")})
        assert step(obs)[0]["reason"] == "NodeLost"

    def test_an_answer_clears_the_mark(self) -> None:
        body = session({**copy.deepcopy(RUNNING), "unreachableSince": {"n-b": ts(NOW)}})
        status, _ = step(observed(body, pool=POOL, pod_ips=IPS, replies={"n-a": report(), "n-b": report()}),
                         NOW + dt.timedelta(minutes=1))
        # Merge-patched status: None removes the map, so describe shows no empty "Unreachable Since".
        assert status["unreachableSince"] is None

    def test_no_empty_map_is_written_when_every_party_answers(self) -> None:
        status, _ = step(running(replies={"n-a": report(), "n-b": report()}))
        assert "unreachableSince" not in status


class TestPurity:
    def test_same_input_same_answer_and_the_input_untouched(self) -> None:
        replies = {"n-a": report(), "n-b": PartyUnreachable("x")}
        obs = running(replies=replies)
        before = copy.deepcopy(obs)
        assert step(obs) == step(obs)
        assert obs == before

    def test_phases_are_the_stored_strings(self) -> None:
        assert [p.value for p in SessionPhase] == ["Pending", "Placing", "Preprocessing", "AwaitingInputs",
                                                    "Computing", "Succeeded", "Failed"]
        status, _ = step(running(replies={"n-a": report("Computing"), "n-b": report("Computing")}))
        assert type(status["phase"]) is str and status["phase"] == SessionPhase.COMPUTING


class TestEvents:
    @pytest.mark.parametrize(
        ("old", "new", "events"),
        [
            ({}, {"phase": "Pending", "reason": "PoolNotFound", "message": "m"},
             [SessionEvent("Normal", "PoolNotFound", "m")]),
            # A placement failure is one Warning, not a Warning plus a Normal phase change.
            ({"phase": "Pending"}, {"phase": "Placing", "reason": "ZoneCap", "message": "m"},
             [SessionEvent("Warning", "ZoneCap", "m")]),
            # The recovery: placed after failing, one Normal Event.
            ({"phase": "Placing", "reason": "ZoneCap"}, {"phase": "Preprocessing", "reason": "Placed", "message": "m"},
             [SessionEvent("Normal", "Placed", "m")]),
            ({"phase": "Placing", "reason": "ZoneCap"}, {"phase": "Placing", "reason": "ZoneCap", "message": "m"}, []),
            ({"phase": "Placing", "reason": "ZoneCap"}, {"phase": "Placing", "reason": "Other", "message": "m"},
             [SessionEvent("Warning", "Other", "m")]),
            ({"phase": "Computing"}, {"phase": "Failed", "reason": "NodeLost", "message": "m"},
             [SessionEvent("Warning", "NodeLost", "m")]),
            ({"phase": "AwaitingInputs", "reason": "a"}, {"phase": "AwaitingInputs", "reason": "b", "message": "m"}, []),
        ],
    )
    def test_events_follow_the_status_change(self, old: Any, new: Any, events: list[SessionEvent]) -> None:
        assert session_events(old, new) == events


class TestCancelTarget:
    def test_a_running_session_is_cancelled_under_its_plan(self) -> None:
        target = cancel_target(session(copy.deepcopy(RUNNING)))
        assert target is not None
        assert (target.session_id, target.plan_digest, target.nodes, target.pool) == (
            "ns.s.0123abcd", "d" * 64, ("n-a", "n-b"), "banks")

    @pytest.mark.parametrize("change", [{"phase": "Succeeded"}, {"phase": "Failed"}, {"planDigest": ""},
                                        {"placement": []}, {"sessionId": ""}])
    def test_nothing_to_cancel(self, change: dict[str, Any]) -> None:
        assert cancel_target(session({**copy.deepcopy(RUNNING), **change})) is None

    def test_a_failed_session_that_keeps_inputs_for_a_re_run_is_cancelled(self) -> None:
        offer = {"available": True, "survivors": [0, 1], "inputsHeldBy": [], "requested": "", "hint": "h"}
        target = cancel_target(session({**copy.deepcopy(RUNNING), "phase": "Failed", "rerun": offer}))
        assert target is not None and target.nodes == ("n-a", "n-b") and target.plan_digest == "d" * 64
        taken = {**offer, "available": False}
        assert cancel_target(session({**copy.deepcopy(RUNNING), "phase": "Failed", "rerun": taken})) is None
