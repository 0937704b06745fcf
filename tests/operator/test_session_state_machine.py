"""The whole MPCSession state machine, driven through the real controller with the package's fakes.

``reconcile_session`` runs against :class:`~pqmpc_operator.testing.FakeKubeApi` and
:class:`~pqmpc_operator.testing.FakeNodeClient`, with real cryptography (pool PKI made by
``ensure_pki``, nodes certified by it, plans signed, preprocessing dealt and sealed to
the nodes' KEM keys) and an injected clock: every phase, every failure (invalid spec,
missing pool, placement failure, plan not delivered, node lost, dealing failure, a party
failing), an operator restart (state rebuilt from the API, not from memory), the
deadline, TTL clean-up and cancel. No cluster, no sockets; seconds in all.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from pqmpc_node.client import Identity
from pqmpc_node.crypto.kemkeys import KeyRotationPolicy
from pqmpc_node.crypto.pki import NodeId
from pqmpc_node.crypto.suites import get_suite
from pqmpc_node.keystore import LogBundle, NodeKeys
from pqmpc_node.plan import parse_signed_plan, verify_cancel
from pqmpc_operator import builders, pool_pki
from pqmpc_operator.certification import CertificationState, ensure_pki
from pqmpc_operator.memory import busy_from_sessions, restore_memory
from pqmpc_operator.metrics import OperatorMetrics
from pqmpc_operator.model import parse_nodepool
from pqmpc_operator.session_controller import SessionDeps, cancel_session, reconcile_session
from pqmpc_operator.settings import OperatorSettings
from pqmpc_operator.testing import FakeKubeApi, FakeNode, FakeNodeClient

NS = "ns"
SUITE = get_suite("pq-default")
T0 = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
H = dt.timedelta(hours=1)
POLICY = KeyRotationPolicy(duration=24 * H, renew_before=8 * H, grace_period=H)
OWNERS = ("bank-a", "bank-b", "bank-c", "auditor")
IDS = {n: Identity.generate(n).public_document() for n in OWNERS}
# name -> (group, region, zone, trust domain, pod IP)
NODES = {
    "banks-a-0": ("a", "eu-west", "eu-west-1a", "bank-a", "127.0.0.11"),
    "banks-b-0": ("b", "eu-west", "eu-west-1b", "bank-b", "127.0.0.12"),
    "banks-c-0": ("c", "us-east", "us-east-1a", "bank-c", "127.0.0.13"),
}


def ts(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Clock:
    """The time the controller decides at; tests move it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def session_body(name: str, *, parties: int = 2, sharing: str = "additive", regions: list[str] | None = None,
                 preprocessing: str | None = None, **extra: Any) -> dict[str, Any]:
    """An MPCSession body; an additive one asks for the dealer unless ``preprocessing`` says otherwise.

    Most tests here drive the dealing steps, which only a session on the dealer has (auto
    runs additive sessions dealer-free on ot): they get the dealer by name. A Shamir body
    leaves the choice to auto unless told.
    """
    if preprocessing is None and sharing == "additive":
        preprocessing = "dealer"
    if preprocessing is not None:
        extra["preprocessing"] = preprocessing
    owners = ["bank-a", "bank-b"]
    fields = [{"name": "amount", "min": 0, "max": 100}]
    inputs = [{"owner": o, "identity": IDS[o]["identity"], "fields": fields,
               **({"locality": {"regions": regions}} if regions else {})} for o in owners]
    spec: dict[str, Any] = {
        "poolRef": "banks", "parties": parties, "threshold": 1, "sharing": sharing, "inputs": inputs,
        "program": {"aggregate": [{"op": "mean", "field": "amount"}]},
        "outputs": [{"recipient": "auditor", "identity": IDS["auditor"]["kemPublicKey"], "allow": ["mean(amount)"]}],
        "ttlSecondsAfterFinished": 60, "deadline": "10m",
    }
    spec.update(extra)
    return {"apiVersion": "pqmpc.io/v1alpha1", "kind": "MPCSession",
            "metadata": {"name": name, "namespace": NS, "uid": f"0123abcd-{name}"}, "spec": spec}


@dataclass
class World:
    """A pool of three certified nodes behind the fakes, and an operator that can be restarted."""

    api: FakeKubeApi
    nodes: FakeNodeClient
    clock: Clock
    events: list[tuple[str, str, str, str]] = field(default_factory=list)
    deps: SessionDeps = field(init=False)

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """A fresh operator process: nothing in memory, the same cluster and nodes."""
        self.deps = SessionDeps(api=self.api, nodes=self.nodes, settings=OperatorSettings(),
                                metrics=OperatorMetrics(), clock=self.clock,
                                post_event=lambda body, kind, reason, message: self.events.append(
                                    (body["metadata"]["name"], kind, reason, message)))

    def create(self, body: dict[str, Any]) -> None:
        self.api.add_session(body, created=ts(self.clock.now))

    async def run(self, name: str) -> float | None:
        return await reconcile_session(self.deps, namespace=NS, name=name)

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.api.sessions[(NS, name)].get("status") or {})

    def condition(self, name: str, ctype: str) -> dict[str, Any]:
        return next(c for c in self.status(name)["conditions"] if c["type"] == ctype)

    def node(self, name: str) -> FakeNode:
        return self.nodes.nodes[NODES[name][4]]

    def placed(self, name: str) -> list[str]:
        return [p["node"] for p in self.status(name)["placement"]]

    def report(self, name: str, node: str, **report: Any) -> None:
        self.node(node).reports[self.status(name)["sessionId"]] = report

    def report_all(self, name: str, **report: Any) -> None:
        for node in self.placed(name):
            self.report(name, node, **report)

    def events_of(self, name: str) -> list[tuple[str, str]]:
        return [(kind, reason) for who, kind, reason, _ in self.events if who == name]


async def make_world() -> World:
    api = FakeKubeApi()
    groups = [{"name": g, "replicas": 1, "region": r, "zone": z, "trustDomain": td}
              for g, r, z, td, _ in NODES.values()]
    pool_body = api.add_pool({"apiVersion": "pqmpc.io/v1alpha1", "kind": "NodePool",
                              "metadata": {"name": "banks", "namespace": NS, "uid": "pool-uid"},
                              "spec": {"groups": groups}})
    pool = parse_nodepool(pool_body)
    pki = await ensure_pki(api, pool, CertificationState())  # as the pool controller makes it
    fakes = {}
    status_nodes = []
    for name, (group, region, zone, td, ip) in NODES.items():
        dns = builders.node_dns_name(pool, name)
        keys = NodeKeys.generate(suite=SUITE, node_id=NodeId(name), dns_name=dns, ca_certificate=pki.ca.certificate,
                                 policy=POLICY, rng=os.urandom, now=T0 - dt.timedelta(minutes=5))
        issued = pool_pki.certify_node(pki, keys.csr_document(), pod_name=name, expected_dns_name=dns,
                                       now=T0 - dt.timedelta(minutes=5), lifetime=24 * H, rng=os.urandom)
        keys.install_certificate(issued.certificate_der, LogBundle(tuple(pki.log.entries),
                                                                   pki.log.signed_tree_head(now=T0)), now=T0)
        fakes[ip] = FakeNode(name, keys_document=keys.keys_document())
        status_nodes.append({"name": name, "group": group, "region": region, "zone": zone, "trustDomain": td,
                             "ready": True, "phase": "Running", "podIP": ip,
                             "certFingerprint": keys.certificate.fingerprint})
        api.add_pod({"metadata": {"name": name, "namespace": NS, "labels": builders.pool_selector("banks"),
                                  "ownerReferences": [{"uid": "pool-uid"}]}, "status": {"podIP": ip}})
    # The log the nodes are certified in is persisted, as certification does before anything leaves.
    await api.apply(builders.build_keylog_configmap(pool, pool_pki.keylog_name("banks"), pool_pki.keylog_data(pki.log)))
    api.pools[(NS, "banks")]["status"] = {"nodes": status_nodes}
    return World(api, FakeNodeClient(fakes), Clock())


@pytest.fixture()
async def world() -> World:
    return await make_world()


async def to_awaiting_inputs(world: World, name: str, **spec: Any) -> dict[str, Any]:
    world.create(session_body(name, **spec))
    assert await world.run(name) == 1.0
    st = world.status(name)
    assert st["phase"] == "AwaitingInputs", st
    return st


def inputs_in(world: World, name: str, rows: dict[str, int]) -> None:
    world.report_all(name, phase="AwaitingInputs", awaitingPreprocessing=True, inputRows=rows,
                     inputs=[{"owner": o, "received": True} for o in rows])


# ---------------------------------------------------------------- the happy path, phase by phase


async def test_every_phase_to_success_then_ttl_cleanup(world: World) -> None:
    world.create(session_body("s", regions=["eu-west"]))
    # Pass 1: Pending -> placed -> plan signed, delivered -> AwaitingInputs.
    assert await world.run("s") == 1.0
    st = world.status("s")
    assert st["phase"] == "AwaitingInputs" and st["reason"] == "PlanDelivered", st
    assert world.placed("s") == ["banks-a-0", "banks-b-0"]  # EU locality, distinct trust domains
    assert st["planGeneration"] == 1 and st["sessionId"] == "ns.s.0123abcd" and st["startTime"] == ts(T0)
    assert st["inputs"] == [{"owner": o, "role": "data", "received": False, "parties": 0} for o in ("bank-a", "bank-b")]
    assert st["result"]["nodes"] == ["https://127.0.0.11:8443", "https://127.0.0.12:8443"]
    assert st["preprocessing"]["provider"] == "dealer" and st["preprocessing"]["dealerFree"] == "false"
    assert {c["type"]: c["status"] for c in st["conditions"]} == {"Placed": "True", "PlanDelivered": "True"}
    assert world.events_of("s") == [("Normal", "Placed"), ("Normal", "PlanDelivered")]
    # Both parties hold the same plan, signed by the pool's plan signer, with the digest in status.
    raw_plans = {world.node(n).plans[st["sessionId"]] for n in world.placed("s")}
    assert len(raw_plans) == 1
    _, _, plan = parse_signed_plan(raw_plans.pop())
    assert plan.digest() == st["planDigest"] and [p.node_id for p in plan.parties] == world.placed("s")
    assert world.deps.busy[(NS, "banks")] == {"ns/s": frozenset({"banks-a-0", "banks-b-0"})}

    # One owner's input is in at every party: progress shows, nothing else moves.
    world.report_all("s", phase="AwaitingInputs", inputs=[{"owner": "bank-a", "received": True}])
    assert await world.run("s") == 1.0
    st = world.status("s")
    assert st["phase"] == "AwaitingInputs"
    assert [(i["owner"], i["received"], i["parties"]) for i in st["inputs"]] == [("bank-a", True, 2), ("bank-b", False, 0)]
    assert st["inputsReceived"] == "1/2"  # the INPUTS column of kubectl get mpcs

    # Every input in: the operator deals each party its own sealed material.
    inputs_in(world, "s", {"bank-a": 3, "bank-b": 2})
    assert await world.run("s") == 1.0
    st = world.status("s")
    assert st["phase"] == "Preprocessing" and st["reason"] == "Dealing"
    assert st["dealtDigest"] == st["planDigest"]
    assert world.condition("s", "Preprocessed")["reason"] == "Dealt"
    bodies = [world.node(n).preprocessing[st["sessionId"]] for n in world.placed("s")]
    assert len(bodies) == 2 and bodies[0] != bodies[1]
    # Dealt once: the next pass with the same reports does not deal again.
    assert await world.run("s") == 1.0
    assert world.nodes.called("post_preprocessing") == ["127.0.0.11", "127.0.0.12"]

    world.report_all("s", phase="Computing", inputs=[{"owner": o, "received": True} for o in ("bank-a", "bank-b")])
    assert await world.run("s") == 1.0
    assert world.status("s")["phase"] == "Computing"

    world.report_all("s", phase="Succeeded", outputsReady=["mean(amount)"], rejectedRows=0,
                     inputs=[{"owner": o, "received": True} for o in ("bank-a", "bank-b")])
    world.clock.advance(30)
    assert await world.run("s") == 1.0
    st = world.status("s")
    assert (st["phase"], st["reason"]) == ("Succeeded", "Completed")
    assert st["completionTime"] == ts(world.clock.now)
    assert st["result"]["outputsReady"] == ["mean(amount)"] and st["result"]["rejectedRows"] == 0
    assert world.condition("s", "Ready")["status"] == "True"
    assert world.deps.busy[(NS, "banks")] == {}
    # As before the split: only a session that failed leaves anomaly evidence.
    assert (NS, "banks") not in world.deps.watches
    assert world.events_of("s")[-3:] == [("Normal", "Dealing"), ("Normal", "Computing"), ("Normal", "Completed")]

    # Finished: nothing more is asked of the parties; it waits out its TTL, then goes.
    asked = len(world.nodes.calls)
    assert await world.run("s") == pytest.approx(60.0)
    world.clock.advance(59)
    assert await world.run("s") == pytest.approx(1.0)
    assert len(world.nodes.calls) == asked and (NS, "s") in world.api.sessions
    phase_series = {tuple(s.labels.values()) for m in world.deps.metrics.session_phase.collect() for s in m.samples}
    assert (NS, "s", "Succeeded") in phase_series
    world.clock.advance(1)
    assert await world.run("s") is None
    assert (NS, "s") not in world.api.sessions
    # pqmpc_session_phase does not outlive the deleted session.
    assert [s for m in world.deps.metrics.session_phase.collect() for s in m.samples] == []
    assert await world.run("s") is None  # gone: nothing to do


# ---------------------------------------------------------------- admission and placement failures


async def test_invalid_spec_fails_at_once_and_touches_no_node(world: World) -> None:
    body = session_body("bad")
    body["spec"]["inputs"][1]["identity"] = "bm90IGEga2V5"  # "not a key"
    world.create(body)
    assert await world.run("bad") == 1.0
    st = world.status("bad")
    assert (st["phase"], st["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.inputs[1].identity" in st["message"] and "pqmpc identity new" in st["message"]
    assert "placement" not in st and st["completionTime"] == ts(T0)
    assert world.condition("bad", "Ready")["reason"] == "InvalidSpec"
    assert world.events_of("bad") == [("Warning", "InvalidSpec")]
    assert world.nodes.calls == []
    assert await world.run("bad") == pytest.approx(60.0)  # finished: its TTL runs


async def test_missing_pool_waits_pending(world: World) -> None:
    world.create(session_body("orphan", poolRef="nope"))
    assert await world.run("orphan") == 5.0
    st = world.status("orphan")
    assert (st["phase"], st["reason"]) == ("Pending", "PoolNotFound")
    assert st["message"] == "NodePool ns/nope does not exist; create it or fix spec.poolRef"
    assert world.events_of("orphan") == [("Normal", "PoolNotFound")]
    assert await world.run("orphan") == 5.0
    assert world.events_of("orphan") == [("Normal", "PoolNotFound")]  # no Event for an unchanged phase


async def test_impossible_placement_is_explained_and_retried(world: World) -> None:
    world.create(session_body("big", parties=4, sharing="shamir"))
    assert await world.run("big") == 5.0
    st = world.status("big")
    assert (st["phase"], st["reason"]) == ("Placing", "NotEnoughReadyNodes")
    assert "need 4" in st["message"] and "has 3" in st["message"]
    assert world.condition("big", "Placed")["status"] == "False"
    # One Warning per placement failure, not a Warning plus a Normal phase change.
    assert world.events_of("big") == [("Warning", "NotEnoughReadyNodes")]
    failures = world.deps.metrics.placement_failures.labels(reason="NotEnoughReadyNodes")
    assert failures._value.get() == 1
    assert await world.run("big") == 5.0
    # A retry is neither a new Event nor a new failed placement.
    assert len(world.events_of("big")) == 1 and failures._value.get() == 1
    assert world.nodes.calls == [] and "planGeneration" not in world.status("big")


async def test_quarantined_and_uncertified_nodes_are_not_placed(world: World) -> None:
    nodes = world.api.pools[(NS, "banks")]["status"]["nodes"]
    nodes[0]["quarantined"] = True
    del nodes[1]["certFingerprint"]
    world.create(session_body("few"))
    assert await world.run("few") == 5.0
    assert world.status("few")["reason"] == "NotEnoughReadyNodes"


async def test_running_sessions_spread_the_load(world: World) -> None:
    await to_awaiting_inputs(world, "first")
    await to_awaiting_inputs(world, "second")
    # The least loaded node is preferred: the second session avoids one of the first's nodes.
    assert set(world.placed("first")) != set(world.placed("second"))


# ---------------------------------------------------------------- plan delivery


async def test_plan_not_delivered_is_retried_with_the_next_generation(world: World) -> None:
    world.create(session_body("late", regions=["eu-west"]))
    world.node("banks-b-0").down = True
    assert await world.run("late") == 2.0
    st = world.status("late")
    assert (st["phase"], st["reason"]) == ("Preprocessing", "PlanNotDelivered")
    assert st["planGeneration"] == 1 and "planDigest" not in st and "127.0.0.12" in st["message"]
    assert world.condition("late", "PlanDelivered")["status"] == "False"
    assert world.events_of("late") == [("Normal", "Placed")]
    world.node("banks-b-0").down = False
    assert await world.run("late") == 1.0
    st = world.status("late")
    assert st["phase"] == "AwaitingInputs" and st["planGeneration"] == 2
    assert "generation 2" in st["message"]
    # The party that got generation 1 now holds generation 2, which supersedes it.
    _, _, plan = parse_signed_plan(world.node("banks-a-0").plans[st["sessionId"]])
    assert plan.generation == 2 and plan.digest() == st["planDigest"]


async def test_a_node_whose_keys_do_not_verify_gets_no_plan(world: World) -> None:
    world.create(session_body("forged", regions=["eu-west"]))
    a, b = world.node("banks-a-0"), world.node("banks-b-0")
    b.keys_document = a.keys_document  # b relays a's (genuine) keys
    assert await world.run("forged") == 2.0
    st = world.status("forged")
    assert st["reason"] == "PlanNotDelivered" and "nothing was sealed" in st["message"]
    assert world.nodes.called("post_plan") == []


# ---------------------------------------------------------------- failures while running


async def test_a_lost_party_fails_an_additive_session(world: World) -> None:
    st = await to_awaiting_inputs(world, "lost", regions=["eu-west"])
    world.node("banks-b-0").down = True
    assert await world.run("lost") == 1.0
    st = world.status("lost")
    assert st["phase"] == "AwaitingInputs" and st["unreachableSince"] == {"banks-b-0": ts(T0)}
    world.clock.advance(19)
    assert await world.run("lost") == 1.0
    assert world.status("lost")["phase"] == "AwaitingInputs"
    world.clock.advance(1)  # LOST_AFTER_S
    assert await world.run("lost") == 1.0
    st = world.status("lost")
    assert (st["phase"], st["reason"]) == ("Failed", "NodeLost")
    assert "party 1 (banks-b-0)" in st["message"] and "additive sharing needs every party" in st["message"]
    assert world.events_of("lost")[-1] == ("Warning", "NodeLost")
    assert [e.outcome for e in world.deps.watches[(NS, "banks")].evidence] != []


async def test_a_party_that_answers_again_is_no_longer_counted_unreachable(world: World) -> None:
    await to_awaiting_inputs(world, "flaky", regions=["eu-west"])
    world.node("banks-b-0").down = True
    await world.run("flaky")
    world.node("banks-b-0").down = False
    world.clock.advance(30)
    assert await world.run("flaky") == 1.0
    st = world.status("flaky")
    assert st["phase"] == "AwaitingInputs"
    # A merge patch keeps keys it does not name (an empty map would keep the stale entry):
    # the operator writes None, which removes the map, so describe shows no "Unreachable Since".
    assert "unreachableSince" not in st
    patches = len(world.api.called("patch_session_status"))
    assert await world.run("flaky") == 1.0
    assert "unreachableSince" not in world.status("flaky")
    assert len(world.api.called("patch_session_status")) == patches  # nothing left to remove, nothing written
    assert world.deps.busy[(NS, "banks")]["ns/flaky"] == frozenset({"banks-a-0", "banks-b-0"})


async def test_a_deleted_pod_is_lost_at_once(world: World) -> None:
    await to_awaiting_inputs(world, "podless", regions=["eu-west"])
    del world.api.pods[(NS, "banks-a-0")]
    assert await world.run("podless") == 1.0
    st = world.status("podless")
    assert st["reason"] == "NodeLost" and "party 0 (banks-a-0): no pod IP" in st["message"]


async def test_a_shamir_session_carries_on_while_t_plus_one_remain(world: World) -> None:
    await to_awaiting_inputs(world, "sham", parties=3, sharing="shamir", preprocessing="dealer")
    first, second, _ = world.placed("sham")
    world.node(first).down = True
    world.clock.advance(25)
    await world.run("sham")  # first seen unreachable now
    world.clock.advance(25)
    assert await world.run("sham") == 1.0
    st = world.status("sham")
    assert st["phase"] == "AwaitingInputs"
    degraded = world.condition("sham", "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "PartyLost" and first in degraded["message"]
    world.node(second).down = True
    world.clock.advance(25)
    await world.run("sham")
    world.clock.advance(25)
    await world.run("sham")
    st = world.status("sham")
    assert (st["phase"], st["reason"]) == ("Failed", "NodeLost") and "fewer than t+1=2 parties remain" in st["message"]


async def test_a_dealer_free_session_is_never_dealt(world: World) -> None:
    """Shamir with 2t < n on auto: prss; even a party claiming to await material gets none."""
    st = await to_awaiting_inputs(world, "hm", parties=3, sharing="shamir")
    assert st["preprocessing"] == {"provider": "prss", "dealerFree": "true",
                                   "note": "auto: honest-majority Shamir session, dealer-free (prss)"}
    plan = world.node(world.placed("hm")[0]).plans[st["sessionId"]]
    assert b'"provider":"prss"' in plan and b'"sealedSeeds":{}' in plan
    inputs_in(world, "hm", {"bank-a": 2, "bank-b": 2})
    await world.run("hm")
    world.report_all("hm", phase="Succeeded", inputs=[{"owner": o, "received": True} for o in ("bank-a", "bank-b")],
                     outputsReady=["auditor"])
    await world.run("hm")
    st = world.status("hm")
    assert st["phase"] == "Succeeded" and "dealtDigest" not in st, st
    assert world.nodes.called("post_preprocessing") == []
    assert "Preprocessed" not in {c["type"] for c in st["conditions"]}
    assert world.deps.metrics.sessions_planned.labels(preprocessing="prss")._value.get() == 1


@pytest.mark.parametrize("parties", [2, 3])
async def test_an_ot_session_is_never_dealt(world: World, parties: int) -> None:
    """Additive on auto (2 and 3 parties): ot; even parties claiming to await material get none, the
    session never shows Dealing, and it finishes with nothing dealt."""
    name = f"ot{parties}"
    st = await to_awaiting_inputs(world, name, parties=parties, preprocessing="auto")
    assert st["preprocessing"] == {"provider": "ot", "dealerFree": "true",
                                   "note": "auto: additive session, dealer-free (ot: ML-KEM base OTs + OT extension)"}
    assert len(world.placed(name)) == parties
    planned_keys = len(world.nodes.called("keys"))  # read to plan; the dealer would read them again
    for node in world.placed(name):
        plan = world.node(node).plans[st["sessionId"]]
        assert b'"provider":"ot"' in plan and b'"sealedSeeds":{}' in plan
    inputs_in(world, name, {"bank-a": 2, "bank-b": 2})  # every party also claims awaitingPreprocessing
    assert await world.run(name) == 1.0
    st = world.status(name)
    assert st["phase"] == "AwaitingInputs" and st["reason"] != "Dealing", st
    world.report_all(name, phase="Computing", awaitingPreprocessing=True,
                     inputs=[{"owner": o, "received": True} for o in ("bank-a", "bank-b")])
    assert await world.run(name) == 1.0
    assert world.status(name)["phase"] == "Computing"
    world.report_all(name, phase="Succeeded", inputs=[{"owner": o, "received": True} for o in ("bank-a", "bank-b")],
                     outputsReady=["auditor"])
    await world.run(name)
    st = world.status(name)
    assert st["phase"] == "Succeeded" and "dealtDigest" not in st, st
    assert world.nodes.called("post_preprocessing") == [] and len(world.nodes.called("keys")) == planned_keys
    assert "Preprocessed" not in {c["type"] for c in st["conditions"]}
    assert world.deps.metrics.sessions_planned.labels(preprocessing="ot")._value.get() == 1
    assert world.deps.metrics.sessions_planned.labels(preprocessing="dealer")._value.get() == 0


async def test_an_additive_session_can_still_ask_for_the_dealer(world: World) -> None:
    """The dealer stays an explicit choice, and the status says what it costs."""
    st = await to_awaiting_inputs(world, "dealt", preprocessing="dealer")
    assert st["preprocessing"]["provider"] == "dealer" and st["preprocessing"]["dealerFree"] == "false"
    assert "trusted dealer" in st["preprocessing"]["note"] and "could read every input" in st["preprocessing"]["note"]
    inputs_in(world, "dealt", {"bank-a": 2, "bank-b": 2})
    await world.run("dealt")
    assert world.status("dealt")["dealtDigest"] == world.status("dealt")["planDigest"]
    assert len(world.nodes.called("post_preprocessing")) == 2
    assert world.deps.metrics.sessions_planned.labels(preprocessing="dealer")._value.get() == 1


async def test_ot_on_a_shamir_session_fails_at_admission_and_says_what_to_use(world: World) -> None:
    world.create(session_body("ot-shamir", parties=3, sharing="shamir", preprocessing="ot"))
    assert await world.run("ot-shamir") == 1.0
    st = world.status("ot-shamir")
    assert (st["phase"], st["reason"]) == ("Failed", "InvalidSpec"), st
    assert "spec.preprocessing" in st["message"] and "additive sessions only" in st["message"]
    assert "use prss or auto" in st["message"]
    assert world.nodes.calls == []


async def test_a_lost_party_ends_an_ot_session_with_every_input_kept(world: World) -> None:
    await to_awaiting_inputs(world, "ot-lost", parties=3, preprocessing="ot")
    lost = world.placed("ot-lost")[1]
    inputs_in(world, "ot-lost", {"bank-a": 2, "bank-b": 2})
    world.report_all("ot-lost", phase="Computing", inputs=[{"owner": o, "received": True} for o in ("bank-a", "bank-b")])
    world.node(lost).down = True
    await world.run("ot-lost")
    world.clock.advance(20)  # LOST_AFTER_S
    await world.run("ot-lost")
    st = world.status("ot-lost")
    assert (st["phase"], st["reason"]) == ("Failed", "NodeLost"), st
    assert f"party 1 ({lost})" in st["message"] and "additive sharing needs every party" in st["message"]
    assert "every owner's input is kept secret" in st["message"] and "no output was released" in st["message"]
    assert world.nodes.called("post_preprocessing") == []


async def test_a_dealer_free_session_fails_below_2t_plus_1(world: World) -> None:
    await to_awaiting_inputs(world, "hm3", parties=3, sharing="shamir")
    lost = world.placed("hm3")[2]
    world.node(lost).down = True
    world.clock.advance(25)
    await world.run("hm3")
    world.clock.advance(25)
    await world.run("hm3")
    st = world.status("hm3")
    assert (st["phase"], st["reason"]) == ("Failed", "NodeLost"), st
    assert lost in st["message"] and "fewer than 2t+1=3 parties remain" in st["message"]
    assert "n >= 2t+2" in st["message"]


async def test_a_party_that_fails_fails_the_session_with_its_reason(world: World) -> None:
    await to_awaiting_inputs(world, "cheat", regions=["eu-west"])
    a, b = world.placed("cheat")
    world.report("cheat", a, phase="Failed", reason="mac_check_failed", message="commitment of party 1 does not open",
                  failedCheck="mac", blamedParties=[1])
    world.report("cheat", b, phase="Failed", reason="link_lost", message="peer went away")
    assert await world.run("cheat") == 1.0
    st = world.status("cheat")
    assert (st["phase"], st["reason"]) == ("Failed", "mac_check_failed")
    assert st["message"] == "check 'mac' caught a deviation: commitment of party 1 does not open"
    evidence = world.deps.watches[(NS, "banks")].evidence
    assert [e.outcome for e in evidence] == ["mac_check_failed"]
    # Kept in status, so a restarted operator scores it again (evidence rebuilt exactly).
    assert st["evidence"] == {"outcome": "mac_check_failed", "parties": [a, b],
                              "finishedAt": world.clock.now.timestamp(), "blamed": {a: [b]},
                              "failureReporters": [a]}
    recorded = evidence[0]
    world.restart()
    await restore_memory(world.api, namespaces=(), busy=world.deps.busy, watches=world.deps.watches)
    assert world.deps.watches[(NS, "banks")].evidence == [recorded]
    assert world.deps.busy == {}, "a finished session keeps no node busy"


async def test_dealing_failure_is_retried(world: World) -> None:
    st = await to_awaiting_inputs(world, "deal", regions=["eu-west"])
    inputs_in(world, "deal", {"bank-a": 2, "bank-b": 2})
    world.node("banks-b-0").failures["post_preprocessing"] = "HTTP 503: busy"
    assert await world.run("deal") == 1.0
    st = world.status("deal")
    assert st["phase"] == "Preprocessing" and "dealtDigest" not in st
    cond = world.condition("deal", "Preprocessed")
    assert (cond["status"], cond["reason"]) == ("False", "DealingFailed") and "HTTP 503" in cond["message"]
    del world.node("banks-b-0").failures["post_preprocessing"]
    assert await world.run("deal") == 1.0
    assert world.status("deal")["dealtDigest"] == st["planDigest"]
    assert world.condition("deal", "Preprocessed")["reason"] == "Dealt"


HISTOGRAM = {"program": {"aggregate": [{"op": "histogram", "field": "amount", "bins": [0, 50, 100]}]},
             "outputs": [{"recipient": "auditor", "identity": IDS["auditor"]["kemPublicKey"],
                          "allow": ["histogram(amount)"]}]}


async def test_a_session_whose_material_cannot_fit_fails_at_once_and_is_never_dealt(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The size is projected before dealing: too large fails the session (one Warning, rows that fit,
    what to do), nothing is dealt, the parties are told why, and no later pass tries again."""
    from pqmpc_operator import session_controller

    def no_deal(*_: Any, **__: Any) -> None:
        raise AssertionError("the dealer must not deal a session that cannot fit")

    monkeypatch.setattr(session_controller, "deal", no_deal)
    world.deps.settings = OperatorSettings(preprocessing_limit=1 << 20)
    st = await to_awaiting_inputs(world, "huge", regions=["eu-west"], **HISTOGRAM)
    inputs_in(world, "huge", {"bank-a": 100_000, "bank-b": 100_000})
    assert await world.run("huge") == 1.0
    st = world.status("huge")
    assert (st["phase"], st["reason"]) == ("Failed", "PreprocessingTooLarge"), st
    match = re.search(r"would be ([0-9.]+) MiB per party, over the 1 MiB the operator deals \(its memory limit; "
                      r"nodes take 256 MiB\).*at most (\d+) rows per owner fit", st["message"])
    assert match, st["message"]
    fit = int(match.group(2))
    assert float(match.group(1)) > 1 and 0 < fit < 100_000
    assert "bank-a 100000" in st["message"] and "preprocessing: auto" in st["message"]
    assert f"at most {fit} rows per owner" in st["message"]
    cond = world.condition("huge", "Preprocessed")
    assert (cond["status"], cond["reason"]) == ("False", "PreprocessingTooLarge")
    assert world.events_of("huge")[-1] == ("Warning", "PreprocessingTooLarge")
    assert world.nodes.called("post_preprocessing") == [] and "dealtDigest" not in st
    pki = world.deps.certification[(NS, "banks")].pki
    assert pki is not None
    for node in world.placed("huge"):
        # Each party is told to stop, with the reason an owner's CLI will print.
        cancel = verify_cancel(world.node(node).cancels[st["sessionId"]], signer_key=pki.plan_signer.public_key(),
                               session_id=st["sessionId"], plan_digest=st["planDigest"],
                               now=dt.datetime.now(dt.timezone.utc))
        assert (cancel.reason, cancel.message) == ("PreprocessingTooLarge", st["message"])
    # Never retried: later passes neither deal nor project again, and post no further Event.
    events, calls = len(world.events), len(world.nodes.calls)
    world.clock.advance(5)
    await world.run("huge")
    assert world.status("huge")["phase"] == "Failed" and len(world.events) == events
    assert [c for c, _ in world.nodes.calls[calls:]] == []

    # The same program at the rows that fit is dealt (under the same lowered limit).
    monkeypatch.undo()
    world.deps.settings = OperatorSettings(preprocessing_limit=1 << 20)
    await to_awaiting_inputs(world, "fits", regions=["eu-west"], **HISTOGRAM)
    inputs_in(world, "fits", {"bank-a": fit, "bank-b": fit})
    assert await world.run("fits") == 1.0
    assert world.condition("fits", "Preprocessed")["reason"] == "Dealt", world.status("fits")
    assert all(len(b) <= 1 << 20 for n in world.placed("fits")
               for b in [world.node(n).preprocessing[world.status("fits")["sessionId"]]])


async def test_the_plan_is_kept_in_a_secret_owned_by_the_session_before_any_party_gets_it(world: World) -> None:
    secret = (NS, "kept-plan")
    held_at_post: list[dict[str, str] | None] = []
    post_plan = world.nodes.post_plan

    async def checked(ip: str, body: bytes) -> dict[str, Any]:
        held_at_post.append(world.api.secrets.get(secret))
        return await post_plan(ip, body)

    world.nodes.post_plan = checked  # type: ignore[method-assign]
    st = await to_awaiting_inputs(world, "kept", regions=["eu-west"])
    blob = world.node(world.placed("kept")[0]).plans[st["sessionId"]]
    stored = {"plan.json": base64.b64encode(blob).decode()}
    # Persist before distribute: at every post the Secret already held the very bytes posted.
    assert held_at_post == [stored, stored]
    meta = world.api.secret_meta[secret]
    assert meta["ownerReferences"] == [{"apiVersion": "pqmpc.io/v1alpha1", "kind": "MPCSession", "name": "kept",
                                        "uid": "0123abcd-kept", "controller": True, "blockOwnerDeletion": True}]
    assert meta["labels"]["pqmpc.io/session"] == "kept"
    assert meta["annotations"]["pqmpc.io/plan-digest"] == st["planDigest"]
    # The dealer reads the plan from the Secret: no party is asked for it, even one holding another plan.
    other = await to_awaiting_inputs(world, "other", regions=["eu-west"])
    a = world.node(world.placed("kept")[0])
    a.plans[st["sessionId"]] = a.plans[other["sessionId"]]
    inputs_in(world, "kept", {"bank-a": 2, "bank-b": 2})
    assert await world.run("kept") == 1.0
    assert world.status("kept")["dealtDigest"] == st["planDigest"]
    assert (NS, "kept-plan") in world.api.called("read_secret")


async def test_a_missing_plan_secret_re_plans_with_the_next_generation(world: World) -> None:
    st = await to_awaiting_inputs(world, "gone", regions=["eu-west"])
    del world.api.secrets[(NS, "gone-plan")]
    inputs_in(world, "gone", {"bank-a": 2, "bank-b": 2})
    assert await world.run("gone") == 1.0
    lost = world.status("gone")
    assert (lost["phase"], lost["reason"]) == ("Preprocessing", "PlanLost")
    assert "Secret gone-plan is missing" in lost["message"] and "re-planning with generation 2" in lost["message"]
    assert world.condition("gone", "PlanDelivered")["reason"] == "PlanLost"
    assert world.nodes.called("post_preprocessing") == [] and "dealtDigest" not in lost
    # The next pass signs generation 2, keeps it in the Secret, delivers it; dealing then uses it.
    assert await world.run("gone") == 1.0
    again = world.status("gone")
    assert again["phase"] == "AwaitingInputs" and again["planGeneration"] == 2
    assert again["planDigest"] not in ("", st["planDigest"])
    _, _, plan = parse_signed_plan(base64.b64decode(world.api.secrets[(NS, "gone-plan")]["plan.json"]))
    assert plan.generation == 2 and plan.digest() == again["planDigest"]
    assert await world.run("gone") == 1.0
    assert world.status("gone")["dealtDigest"] == again["planDigest"]


@pytest.mark.parametrize("swap", ["foreign", "other-plan", "bad-signature"])
async def test_a_plan_secret_not_this_sessions_plan_re_plans(world: World, swap: str) -> None:
    st = await to_awaiting_inputs(world, "swap", regions=["eu-west"])
    other = await to_awaiting_inputs(world, "other", regions=["eu-west"])
    mine, theirs = (NS, "swap-plan"), (NS, "other-plan")
    if swap == "foreign":  # another session's Secret under this name (e.g. a leftover of a namesake)
        world.api.secret_meta[mine] = world.api.secret_meta[theirs]
    elif swap == "other-plan":  # owned by this session, but not the plan status names
        world.api.secrets[mine] = world.api.secrets[theirs]
    else:
        signed = json.loads(base64.b64decode(world.api.secrets[mine]["plan.json"]))
        signed["signature"] = base64.b64encode(b"\x00" * len(base64.b64decode(signed["signature"]))).decode()
        world.api.secrets[mine] = {"plan.json": base64.b64encode(json.dumps(signed).encode()).decode()}
    inputs_in(world, "swap", {"bank-a": 2, "bank-b": 2})
    assert await world.run("swap") == 1.0
    lost = world.status("swap")
    assert lost["reason"] == "PlanLost" and "re-planning with generation 2" in lost["message"]
    expect = {"foreign": "not owned by this MPCSession", "other-plan": f"status says {st['planDigest'][:12]}",
              "bad-signature": "not signed by the pool's plan signer"}[swap]
    assert expect in lost["message"]
    assert world.nodes.called("post_preprocessing") == [] and other["planDigest"]


async def test_no_dealing_while_a_party_is_lost(world: World) -> None:
    await to_awaiting_inputs(world, "shaky", parties=3, sharing="shamir", preprocessing="dealer")
    inputs_in(world, "shaky", {"bank-a": 2, "bank-b": 2})
    world.node(world.placed("shaky")[2]).down = True
    world.clock.advance(25)
    await world.run("shaky")  # just unreachable, not yet lost: dealing is tried and fails at that party
    assert world.condition("shaky", "Preprocessed")["reason"] == "DealingFailed"
    tries = len(world.api.called("read_secret"))
    world.clock.advance(25)
    await world.run("shaky")  # lost: no dealing is even tried
    assert len(world.api.called("read_secret")) == tries and world.nodes.called("post_preprocessing") == []
    assert world.condition("shaky", "Degraded")["reason"] == "PartyLost"


# ---------------------------------------------------------------- restart, deadline, cancel


async def test_operator_restart_resumes_from_the_stored_status(world: World) -> None:
    st = await to_awaiting_inputs(world, "resume", regions=["eu-west"])
    world.restart()  # nothing in memory: no PKI, no busy map, no pod addresses
    assert world.deps.certification == {} and world.deps.busy == {}
    inputs_in(world, "resume", {"bank-a": 1, "bank-b": 1})
    assert await world.run("resume") == 1.0
    after = world.status("resume")
    assert after["planGeneration"] == 1 and after["planDigest"] == st["planDigest"], "a delivered plan is not re-planned"
    assert after["dealtDigest"] == st["planDigest"]
    assert world.nodes.called("post_plan") == ["127.0.0.11", "127.0.0.12"]  # from before the restart only
    # The PKI came back from the Secret and keylog ConfigMap, not made anew.
    assert (NS, pool_pki.pki_secret_name("banks")) in world.api.secrets
    assert world.deps.busy[(NS, "banks")] == {"ns/resume": frozenset({"banks-a-0", "banks-b-0"})}
    assert world.deps.certification[(NS, "banks")].pods_by_ip["127.0.0.11"] == "banks-a-0"


async def test_restart_rebuilds_busy_and_spreads_load_as_before(world: World) -> None:
    async def history(w: World) -> None:
        await to_awaiting_inputs(w, "one")
        await to_awaiting_inputs(w, "two")
        w.create(session_body("undelivered"))  # placed, its plan not out yet: its nodes are busy too
        for node in NODES:
            w.node(node).failures["post_plan"] = "HTTP 503"
        await w.run("undelivered")
        for node in NODES:
            del w.node(node).failures["post_plan"]

    await history(world)
    before = world.deps.busy
    assert set(before[(NS, "banks")]) == {"ns/one", "ns/two", "ns/undelivered"}
    assert world.status("undelivered")["reason"] == "PlanNotDelivered"
    twin = await make_world()  # the same history, no restart: the reference operator
    await history(twin)
    world.restart()
    assert world.deps.busy == {}
    read = await restore_memory(world.api, namespaces=(NS,), busy=world.deps.busy, watches=world.deps.watches)
    assert read == 3 and world.api.called("list_sessions")[-1:] == [(NS,)]
    assert world.deps.busy == before, "busy rebuilt exactly as the controller kept it"
    assert world.deps.watches == {}, "no session failed: no evidence"
    # The restarted operator places the next session where the one before it would have.
    await to_awaiting_inputs(world, "three")
    await to_awaiting_inputs(twin, "three")
    assert world.placed("three") == twin.placed("three")


def test_busy_from_sessions_keeps_only_active_placed_sessions() -> None:
    def body(name: str, phase: str, nodes: list[str], pool: str = "banks", **meta: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": NS, **meta}, "spec": {"poolRef": pool},
                "status": {"phase": phase, "placement": [{"party": i, "node": n} for i, n in enumerate(nodes)]}}

    busy = busy_from_sessions([
        body("run", "Computing", ["x", "y"]), body("wait", "AwaitingInputs", ["y"], pool="other"),
        body("done", "Succeeded", ["x"]), body("failed", "Failed", ["y"]), body("new", "Pending", []),
        body("placing", "Placing", []), body("leaving", "Computing", ["z"], deletionTimestamp="2026-01-01T00:00:00Z"),
    ])
    assert busy == {(NS, "banks"): {"ns/run": frozenset({"x", "y"})}, (NS, "other"): {"ns/wait": frozenset({"y"})}}


async def test_restart_after_placement_before_the_plan_got_out(world: World) -> None:
    world.create(session_body("half", regions=["eu-west"]))
    world.node("banks-a-0").failures["post_plan"] = "HTTP 500"
    await world.run("half")
    placed = world.placed("half")
    world.restart()
    del world.node("banks-a-0").failures["post_plan"]
    assert await world.run("half") == 1.0
    st = world.status("half")
    assert world.placed("half") == placed, "the stored placement is kept"
    assert st["planGeneration"] == 2 and st["phase"] == "AwaitingInputs"


async def test_deadline_fails_an_unfinished_session(world: World) -> None:
    await to_awaiting_inputs(world, "slow", regions=["eu-west"])
    world.clock.advance(599)
    assert await world.run("slow") == 1.0
    assert world.status("slow")["phase"] == "AwaitingInputs"
    world.clock.advance(1)
    asked = len(world.nodes.calls)
    assert await world.run("slow") == 1.0
    st = world.status("slow")
    assert (st["phase"], st["reason"]) == ("Failed", "DeadlineExceeded")
    assert "spec.deadline (10m)" in st["message"] and st["completionTime"] == ts(world.clock.now)
    assert len(world.nodes.calls) == asked  # decided without asking anyone
    assert world.deps.busy[(NS, "banks")] == {}
    world.clock.advance(60)
    assert await world.run("slow") is None and (NS, "slow") not in world.api.sessions


async def test_deleting_a_running_session_cancels_it_at_every_party(world: World) -> None:
    st = await to_awaiting_inputs(world, "bye", regions=["eu-west"])
    world.restart()  # the cancel must work from the stored status alone
    body = world.api.sessions[(NS, "bye")]
    outcomes = await cancel_session(world.deps, body)
    assert outcomes == {"banks-a-0": "Failed/cancelled", "banks-b-0": "Failed/cancelled"}
    pki = world.deps.certification[(NS, "banks")].pki
    assert pki is not None
    for node in world.placed("bye"):
        # What a node checks before it stops: the pool's plan signer, this session, this plan.
        cancel = verify_cancel(world.node(node).cancels[st["sessionId"]], signer_key=pki.plan_signer.public_key(),
                               session_id=st["sessionId"], plan_digest=st["planDigest"],
                               now=dt.datetime.now(dt.timezone.utc))
        assert cancel.session_id == st["sessionId"]


async def test_nothing_to_cancel_for_a_finished_or_unplanned_session(world: World) -> None:
    world.create(session_body("never", parties=4, sharing="shamir"))
    await world.run("never")
    assert await cancel_session(world.deps, world.api.sessions[(NS, "never")]) == {}
    await to_awaiting_inputs(world, "done", regions=["eu-west"])
    world.report_all("done", phase="Succeeded", inputs=[])
    await world.run("done")
    assert world.status("done")["phase"] == "Succeeded"
    assert await cancel_session(world.deps, world.api.sessions[(NS, "done")]) == {}
    assert world.nodes.called("cancel") == []


async def test_cancel_reports_an_unreachable_party_and_goes_on(world: World) -> None:
    await to_awaiting_inputs(world, "half-gone", regions=["eu-west"])
    world.node("banks-b-0").down = True
    outcomes = await cancel_session(world.deps, world.api.sessions[(NS, "half-gone")])
    assert outcomes["banks-a-0"] == "Failed/cancelled" and outcomes["banks-b-0"].startswith("not cancelled:")


async def test_a_session_being_deleted_is_left_alone(world: World) -> None:
    world.create(session_body("going"))
    world.api.sessions[(NS, "going")]["metadata"]["deletionTimestamp"] = ts(T0)
    assert await world.run("going") is None
    assert world.status("going") == {} and world.nodes.calls == []


def test_deals_run_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deals of several sessions never overlap (each peaks at several times its body in memory)."""
    import threading

    from pqmpc_operator import session_controller

    entered = [threading.Event(), threading.Event()]
    release = threading.Event()
    calls: list[int] = []

    def fake_deal(which: int) -> Any:
        calls.append(which)
        entered[which].set()
        if which == 0:
            release.wait(60)
        return which

    monkeypatch.setattr(session_controller, "deal", fake_deal)
    first = threading.Thread(target=session_controller._deal_one_at_a_time, args=(0,))
    second = threading.Thread(target=session_controller._deal_one_at_a_time, args=(1,))
    first.start()
    assert entered[0].wait(60)
    second.start()
    assert not entered[1].wait(1.0), "a second deal started while the first was running"
    release.set()
    first.join(60)
    second.join(60)
    assert calls == [0, 1]


async def test_a_dealer_free_session_below_2t_plus_1_re_runs_on_request_with_a_replacement(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """n = 3, t = 1 on prss loses party 2: the survivors keep the inputs, the session offers a re-run; the
    ``pqmpc.io/rerun`` annotation places the pool's free node at index 2 and delivers generation 2 naming the
    holders (``inputsHeldBy``); no owner submits again and the re-run succeeds."""
    monkeypatch.setitem(NODES, "banks-d-0", ("d", "eu-west", "eu-west-1c", "bank-d", "127.0.0.14"))
    world = await make_world()
    await to_awaiting_inputs(world, "rr", parties=3, sharing="shamir")
    a, b, lost = world.placed("rr")
    assert lost != "banks-d-0"
    kept = {"phase": "Failed", "reason": "peer_lost", "message": "lost party 2: peer closed the TLS session",
            "inputsKept": True, "inputsKeptOwners": 2}
    world.report("rr", a, **kept)
    world.report("rr", b, **kept)
    world.node(lost).down = True
    await world.run("rr")
    st = world.status("rr")
    assert (st["phase"], st["reason"]) == ("Failed", "peer_lost"), st
    assert st["rerun"]["available"] is True and st["rerun"]["survivors"] == [0, 1], st
    assert "kubectl annotate mpcsession rr pqmpc.io/rerun=1 --overwrite" in st["message"], st["message"]
    assert "no owner submits again" in st["message"]
    assert await world.run("rr") == 5.0  # RERUN_POLL_S: a failed session that offers a re-run looks for the ask
    world.api.sessions[(NS, "rr")]["metadata"]["annotations"] = {"pqmpc.io/rerun": "1"}
    assert await world.run("rr") == 1.0
    st = world.status("rr")
    assert (st["phase"], st["reason"]) == ("Preprocessing", "Rerun"), st
    assert [p["node"] for p in st["placement"]] == [a, b, "banks-d-0"]
    assert st["rerun"]["inputsHeldBy"] == [0, 1] and st["rerun"]["requested"] == "1" and not st["rerun"]["available"]
    assert st["planDigest"] == "" and "no owner submits again" in st["message"]
    assert await world.run("rr") == 1.0
    st = world.status("rr")
    assert (st["phase"], st["planGeneration"]) == ("AwaitingInputs", 2), st
    assert "reshare it to the replacement" in st["message"]
    sid = st["sessionId"]
    for node in (a, b, "banks-d-0"):
        plan = parse_signed_plan(world.node(node).plans[sid])[2]
        assert plan.generation == 2 and plan.inputs_held_by == (0, 1) and plan.digest() == st["planDigest"]
        assert [p.node_id for p in plan.parties] == [a, b, "banks-d-0"]
    world.report_all("rr", phase="Succeeded", outputsReady=["auditor"])
    await world.run("rr")
    st = world.status("rr")
    assert (st["phase"], st["reason"]) == ("Succeeded", "Completed"), st
    # The same annotation value does not ask twice.
    assert world.api.sessions[(NS, "rr")]["metadata"]["annotations"] == {"pqmpc.io/rerun": "1"}


async def test_a_re_run_needs_t_plus_1_holders_still_keeping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(NODES, "banks-d-0", ("d", "eu-west", "eu-west-1c", "bank-d", "127.0.0.14"))
    world = await make_world()
    await to_awaiting_inputs(world, "rr2", parties=3, sharing="shamir")
    a, b, lost = world.placed("rr2")
    kept = {"phase": "Failed", "reason": "peer_lost", "message": "lost", "inputsKept": True}
    world.report("rr2", a, **kept)
    world.report("rr2", b, **kept)
    world.node(lost).down = True
    await world.run("rr2")
    world.report("rr2", b, **{**kept, "inputsKept": False})  # b's deadline passed or it was cancelled meanwhile
    world.api.sessions[(NS, "rr2")]["metadata"]["annotations"] = {"pqmpc.io/rerun": "x"}
    await world.run("rr2")
    st = world.status("rr2")
    assert st["phase"] == "Failed" and "impossible: only parties [0] still keep" in st["message"], st
    assert st["rerun"]["available"] is False and st["rerun"]["requested"] == "x"
    assert await world.run("rr2") == 60.0  # no offer left: it waits out its TTL


async def test_a_second_re_run_never_moves_an_earlier_node_to_another_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generation 1 a(0) b(1) c(2) loses c; the re-run puts d at 2. Generation 2 loses b: the second re-run
    must not put c (index 2 in generation 1) at index 1, where it would get a second share of every input; b
    comes back at its own index. Every generation keeps the session's deadline (the holders refuse a later one)."""
    monkeypatch.setitem(NODES, "banks-d-0", ("d", "eu-west", "eu-west-1c", "bank-d", "127.0.0.14"))
    world = await make_world()
    await to_awaiting_inputs(world, "hop", parties=3, sharing="shamir")
    a, b, c = world.placed("hop")
    sid = world.status("hop")["sessionId"]
    deadline = parse_signed_plan(world.node(a).plans[sid])[2].deadline
    kept = {"phase": "Failed", "reason": "peer_lost", "message": "lost", "inputsKept": True}
    world.report("hop", a, **kept)
    world.report("hop", b, **kept)
    world.node(c).down = True
    await world.run("hop")
    world.api.sessions[(NS, "hop")]["metadata"]["annotations"] = {"pqmpc.io/rerun": "1"}
    await world.run("hop")
    await world.run("hop")
    st = world.status("hop")
    assert (st["phase"], st["planGeneration"], world.placed("hop")) == ("AwaitingInputs", 2, [a, b, "banks-d-0"]), st
    assert st["rerun"]["placedBefore"] == sorted([{"node": n, "party": i} for i, n in enumerate((a, b, c))],
                                                 key=lambda e: e["node"])
    world.node(c).down = False  # c is back and free: the least loaded candidate but for its history
    world.report("hop", a, **kept)
    world.report("hop", "banks-d-0", **kept)
    world.node(b).down = True
    await world.run("hop")
    st = world.status("hop")
    assert st["rerun"]["available"] is True and st["rerun"]["survivors"] == [0, 2], st
    world.api.sessions[(NS, "hop")]["metadata"]["annotations"] = {"pqmpc.io/rerun": "2"}
    await world.run("hop")
    st = world.status("hop")
    assert (st["phase"], st["reason"]) == ("Preprocessing", "Rerun"), st
    assert world.placed("hop") == [a, b, "banks-d-0"], "c (index 2 before) must not come back at index 1"
    assert {e["node"]: e["party"] for e in st["rerun"]["placedBefore"]} == {a: 0, b: 1, c: 2, "banks-d-0": 2}
    world.node(b).down = False
    await world.run("hop")
    plan = parse_signed_plan(world.node(a).plans[sid])[2]
    assert (plan.generation, plan.inputs_held_by, plan.deadline) == (3, (0, 2), deadline)
