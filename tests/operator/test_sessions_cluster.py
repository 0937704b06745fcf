"""MPCSession through the operator on the real local control plane, node pods as processes.

Covers: NodePool + MPCSession applied with kubectl, data owners submit with the
``pqmpc`` CLI, the session reaches Succeeded and the recipient's result equals numpy on
the plaintext; locality + non-collusion placement (and an impossible request explained
in status and an Event); an operator restart in the middle of a session; a party killed
mid-session fails an additive session with the reason; several concurrent sessions.
Preprocessing: the additive example session runs dealer-free on ``auto`` (``ot``, 2 and 3
parties) and the Shamir MLP on ``prss``, each inspected for anything the operator could
have dealt or kept (:func:`assert_dealer_free`); one session asks for the dealer by name.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import json
import re
import subprocess
import sys
import time
import urllib.request
from fractions import Fraction
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pqmpc_local.controlplane import ControlPlane
from pqmpc_local.operator_runner import REPO, OperatorProcess, start_operator
from pqmpc_local.pytest_plugin import Kubectl, wait_for
from pqmpc_local.watch import ObjectWatch, WatchEvent
from pqmpc_node.client import node_http_client
from pqmpc_node.mpc.numerics import exact_text
from pqmpc_node.output_scale import rounded_text

NS = "pq-sessions"
DEAL_LIMIT = 16 << 20
PQMPC = str(Path(sys.executable).parent / "pqmpc")




def get_json(kubectl: Kubectl, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-n", NS, "-o", "json").stdout)


def pqmpc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([PQMPC, *args], capture_output=True, text=True, timeout=120, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"pqmpc {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def node_get(ca_pem: Path, url: str) -> bytes:
    """GET from a node API over PQ-TLS, trusting the pool CA in ``ca_pem`` (what the pqmpc CLI does)."""
    from cryptography import x509 as _x509

    with node_http_client(_x509.load_pem_x509_certificate(ca_pem.read_bytes())) as http:
        r = http.get(url, timeout=5)
        r.raise_for_status()
        return r.content


class World:
    """Identities, trust files and helpers shared by the tests of this module."""

    def __init__(self, kubectl: Kubectl, workdir: Path) -> None:
        self.kubectl = kubectl
        self.dir = workdir
        self.ids: dict[str, dict[str, str]] = {}
        for name in ("bank-a", "bank-b", "bank-c", "auditor", "insurer"):
            doc = json.loads(pqmpc("identity", "new", name, "--out", str(workdir / f"{name}.identity.json")).stdout)
            self.ids[name] = doc
        trust = get_json(kubectl, "configmap", "banks-trust")["data"]
        (workdir / "ca.pem").write_text(trust["ca.pem"])
        (workdir / "plan-signer.pub").write_text(trust["plan-signer.pub"])

    def identity_file(self, name: str) -> str:
        return str(self.dir / f"{name}.identity.json")

    def session(self, name: str, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": "pqmpc.io/v1alpha1", "kind": "MPCSession", "metadata": {"name": name, "namespace": NS},
                "spec": {"poolRef": "banks", **spec}}

    def apply(self, doc: dict[str, Any]) -> None:
        # JSON, not YAML: a YAML dump folds long base64 keys into several lines (and spaces).
        self.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def status(self, name: str) -> dict[str, Any]:
        return dict(get_json(self.kubectl, "mpcs", name).get("status") or {})

    def wait_phase(self, name: str, phases: set[str], timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status(name)
            if st.get("phase") in phases:
                return st
            time.sleep(0.5)
        reports = []
        for url in (st.get("result") or {}).get("nodes") or []:
            try:
                reports.append(node_get(self.dir / "ca.pem", f"{url}/v1/sessions/{st.get('sessionId')}").decode())
            except Exception as exc:  # noqa: BLE001 - diagnostics only
                reports.append(f"{url}: {exc}")
        pytest.fail(f"session {name} not in {phases} after {timeout}s; status: {json.dumps(st)}; parties: {reports}")

    def csv(self, name: str, header: list[str], rows: np.ndarray) -> str:
        path = self.dir / f"{name}.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows.tolist())
        return str(path)

    def submit(self, session_id: str, owner: str, node_url: str, data: str) -> None:
        pqmpc("submit", "--session", session_id, "--identity", self.identity_file(owner), "--node", node_url,
              "--ca", str(self.dir / "ca.pem"), "--plan-signer", str(self.dir / "plan-signer.pub"), data)

    def result(self, session_id: str, recipient: str, node_url: str) -> dict[str, Any]:
        out = pqmpc("result", "--session", session_id, "--identity", self.identity_file(recipient), "--node", node_url,
                    "--ca", str(self.dir / "ca.pem"), "--plan-signer", str(self.dir / "plan-signer.pub"),
                    "--json", "--wait", "60")
        return dict(json.loads(out.stdout))


def aggregate_spec(world: World, owners: list[str], regions: list[str] | None, parties: int) -> dict[str, Any]:
    fields = [{"name": "amount", "min": 0, "max": 100000}]
    inputs = [{"owner": o, "identity": world.ids[o]["identity"], "fields": fields,
               **({"locality": {"regions": regions}} if regions else {})} for o in owners]
    return {
        "parties": parties, "threshold": 1, "sharing": "additive", "security": "malicious",
        "inputs": inputs,
        "program": {"aggregate": [{"op": "count", "field": "amount"}, {"op": "mean", "field": "amount"},
                                  {"op": "variance", "field": "amount"}]},
        "outputs": [{"recipient": "auditor", "identity": world.ids["auditor"]["kemPublicKey"],
                     "allow": ["count(amount)", "mean(amount)", "variance(amount)"]}],
        "placement": {"distinctTrustDomains": True, "maxSharesPerZone": 1},
        "deadline": "10m",
    }


class Operator:
    """The module's operator process, restartable."""

    def __init__(self, plane: ControlPlane, workdir: Path) -> None:
        self.plane, self.workdir, self.starts = plane, workdir, 0
        self.proc = self.start()

    def start(self) -> OperatorProcess:
        self.starts += 1
        # A lowered dealing limit (nodes take 256 MiB): every dealt session here is a few
        # dozen rows (< 2 MiB), and a session of 1000 rows per owner (~36 MiB) cannot fit.
        self.proc = start_operator(self.plane, self.workdir / f"run{self.starts}", args=["--namespace", NS],
                                   resync_seconds=5, extra_env={"PQMPC_PREPROCESSING_LIMIT_BYTES": str(DEAL_LIMIT)})
        return self.proc

    def kill(self) -> None:
        self.proc.process.stop(timeout=0.1)


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, node_agent: object, kubectl: Kubectl,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    kubectl("create", "namespace", NS, check=False)
    base = tmp_path_factory.mktemp("op-sessions")
    for i in range(1, 4):
        (base / f"run{i}").mkdir()
    op = Operator(control_plane, base)
    kubectl("apply", "-n", NS, "-f", str(REPO / "examples" / "nodepool.yaml"))

    def ready() -> bool:
        pool = get_json(kubectl, "mpcpool", "banks")
        nodes = (pool.get("status") or {}).get("nodes") or []
        return len(nodes) == 3 and all(n.get("ready") and n.get("certFingerprint") for n in nodes)

    wait_for("pool banks Ready with certified nodes", ready, timeout=180)
    yield op
    op.proc.stop()


@pytest.fixture(scope="module")
def world(operator: Operator, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(kubectl, tmp_path_factory.mktemp("owners"))


def test_aggregate_session_end_to_end(world: World) -> None:
    """An additive session that asks for the trusted dealer by name (auto would run it on ot)."""
    spec = aggregate_spec(world, ["bank-a", "bank-b"], ["eu-west"], 2)
    world.apply(world.session("fraud-stats", **spec, preprocessing="dealer"))
    st = world.wait_phase("fraud-stats", {"AwaitingInputs", "Failed"})
    assert st["phase"] == "AwaitingInputs", st
    assert st["preprocessing"]["provider"] == "dealer" and st["preprocessing"]["dealerFree"] == "false", st
    assert "trusted dealer" in st["preprocessing"]["note"]
    placed = {p["node"]: p for p in st["placement"]}
    # EU locality + distinct trust domains: exactly the two EU banks' nodes.
    assert set(placed) == {"banks-bank-a-eu-0", "banks-bank-b-eu-0"}
    assert {p["region"] for p in placed.values()} == {"eu-west"}
    assert len({p["trustDomain"] for p in placed.values()}) == 2
    session_id, node_url = st["sessionId"], st["result"]["nodes"][0]

    rng = np.random.default_rng(7)
    a = rng.integers(0, 5000, size=(40, 1)).astype(float)
    b = rng.integers(0, 5000, size=(25, 1)).astype(float)
    world.submit(session_id, "bank-a", node_url, world.csv("a", ["amount"], a))
    # Per-owner progress shows in status while the session waits for the others.
    mid = wait_for("bank-a's input in status", lambda: next(
        (st for st in [world.status("fraud-stats")]
         if any(i["owner"] == "bank-a" and i["received"] for i in st.get("inputs", []))), None), timeout=30)
    assert mid["phase"] == "AwaitingInputs"
    assert [i["received"] for i in mid["inputs"] if i["owner"] == "bank-b"] == [False]
    world.submit(session_id, "bank-b", node_url, world.csv("b", ["amount"], b))
    st = world.wait_phase("fraud-stats", {"Succeeded", "Failed"})
    assert st["phase"] == "Succeeded", st
    assert all(i["received"] for i in st["inputs"])
    assert st.get("completionTime") and st.get("observedGeneration") == 1

    doc = world.result(session_id, "auditor", node_url)
    res, places = doc["outputs"], doc["decimals"]
    both = [int(v) for v in np.concatenate([a, b])[:, 0]]
    n, total, squares = len(both), sum(both), sum(v * v for v in both)
    assert res["count(amount)"] == n
    # exact: the operator proved the program's numbers at admission; the recipient divides exactly, and the CLI
    # shows each value rounded exactly to its declared scale (the exact value is under "exact")
    mean, variance = Fraction(total, n), Fraction(n * squares - total * total, n * n)
    assert res["mean(amount)"] == float(rounded_text(mean, places["mean(amount)"]))
    assert res["variance(amount)"] == float(rounded_text(variance, places["variance(amount)"]))
    assert doc["exact"].get("mean(amount)", str(mean)) == exact_text(mean)

    # The wrong recipient cannot read the outputs.
    denied = pqmpc("result", "--session", session_id, "--identity", world.identity_file("bank-a"), "--node", node_url,
                   "--ca", str(world.dir / "ca.pem"), "--json", check=False)
    assert denied.returncode != 0

    # The plan the dealer dealt from is the session's own Secret: owned by it, the digest status names.
    uid = get_json(world.kubectl, "mpcs", "fraud-stats")["metadata"]["uid"]
    secret = get_json(world.kubectl, "secret", "fraud-stats-plan")
    assert [(o["kind"], o["uid"], o.get("controller")) for o in secret["metadata"]["ownerReferences"]] == [
        ("MPCSession", uid, True)]
    assert secret["metadata"]["annotations"]["pqmpc.io/plan-digest"] == st["planDigest"]
    # It goes with its session (the garbage collector follows the owner reference).
    world.kubectl("delete", "mpcs", "fraud-stats", "-n", NS)

    def collected() -> bool | None:
        got = world.kubectl("get", "secret", "fraud-stats-plan", "-n", NS, check=False)
        return True if got.returncode != 0 and "NotFound" in got.stderr else None

    wait_for("the plan Secret garbage-collected with its session", collected, timeout=90)


@pytest.mark.parametrize(
    ("name", "regions", "parties", "reason", "words"),
    [
        # Only two nodes live in eu-west: the locality rule cannot host three parties.
        ("too-many-eu", ["eu-west"], 3, "LocalityUnsatisfiable", ["need 3", "eu-west", "only 2"]),
        # Four parties: the pool has three certified, ready nodes.
        ("too-many-parties", None, 4, "NotEnoughReadyNodes", ["need 4", "has 3"]),
    ],
)
def test_impossible_placement_is_explained(
    world: World, kubectl: Kubectl, name: str, regions: list[str] | None, parties: int, reason: str, words: list[str]
) -> None:
    world.apply(world.session(name, **aggregate_spec(world, ["bank-a", "bank-b"], regions, parties)))
    st = world.wait_phase(name, {"Placing"})
    assert st["reason"] == reason, st
    for word in words:
        assert word in st["message"], (word, st["message"])
    placed = next(c for c in st["conditions"] if c["type"] == "Placed")
    assert placed["status"] == "False" and placed["reason"] == reason

    def events() -> list[dict[str, Any]]:
        return list(json.loads(kubectl("get", "events", "-n", NS, "--field-selector", f"involvedObject.name={name}",
                                       "-o", "json").stdout)["items"])

    # kopf posts Events in the background: wait for the failure's, then check it is the only one.
    failed = wait_for(f"the {reason} Event", lambda: [e for e in events() if e["reason"] == reason], timeout=60)
    # One Warning per placement failure (no Normal twin), from the operator, not from "kopf".
    assert [(e["type"], e.get("count", 1)) for e in failed] == [("Warning", 1)], failed
    assert failed[0]["source"]["component"] == "pqmpc-operator" and failed[0]["reportingComponent"] == "pqmpc-operator"
    kubectl("delete", "-n", NS, "mpcs", name, "--wait=true", "--timeout=60s")


def test_invalid_identity_fails_the_session_with_the_field(world: World) -> None:
    spec = aggregate_spec(world, ["bank-a", "bank-b"], None, 2)
    spec["inputs"][1]["identity"] = base64.b64encode(b"not a key").decode()
    world.apply(world.session("bad-key", **spec))
    st = world.wait_phase("bad-key", {"Failed"})
    assert st["reason"] == "InvalidSpec"
    assert "spec.inputs[1].identity" in st["message"] and "pqmpc identity new" in st["message"]


def test_a_program_whose_numbers_could_overflow_fails_at_admission(world: World) -> None:
    """Refused before placement, with the field, the bound and what to change (word for word)."""
    spec = aggregate_spec(world, ["bank-a", "bank-b"], None, 2)
    for i in spec["inputs"]:
        i["fields"] = [{"name": "amount", "min": -1e9, "max": 1e9, "decimals": 6}]
    spec["maxRowsPerOwner"] = 100_000
    world.apply(world.session("too-wide", **spec))
    st = world.wait_phase("too-wide", {"Failed"})
    assert st["reason"] == "InvalidSpec" and not st.get("placement"), st
    assert st["message"] == (
        "spec.program.aggregate[mean(amount)]: the sum of up to 200000 rows (2 owners x maxRowsPerOwner 100000) of "
        "|amount| <= 1000000000000000 units of 10^-6 can reach 2^67.4, beyond the exact range 2^60; set "
        "spec.maxRowsPerOwner to at most 576, declare fewer decimals, or narrow [min, max] of amount"), st["message"]


def test_mlp_session_with_model_owner(world: World, operator: Operator) -> None:
    """The Shamir (n = 3, t = 1) MLP session runs dealer-free on ``auto`` and gives the plaintext scores."""
    fields = [{"name": "amount", "min": 0, "max": 100000}, {"name": "txPerDay", "min": 0, "max": 1000},
              {"name": "chargebacks", "min": 0, "max": 100}]
    inputs = [{"owner": o, "identity": world.ids[o]["identity"], "fields": fields} for o in ("bank-a", "bank-b", "bank-c")]
    inputs.append({"owner": "insurer", "identity": world.ids["insurer"]["identity"]})
    spec = {
        "parties": 3, "threshold": 1, "sharing": "shamir", "security": "malicious", "inputs": inputs,
        "program": {"mlp": {"modelOwner": "insurer", "features": ["amount", "txPerDay", "chargebacks"], "layers": [4, 1]}},
        "outputs": [{"recipient": "insurer", "identity": world.ids["insurer"]["kemPublicKey"], "allow": ["score"]}],
        "placement": {"distinctTrustDomains": True, "maxSharesPerZone": 1}, "deadline": "10m",
    }
    world.apply(world.session("fraud-mlp", **spec))
    st = world.wait_phase("fraud-mlp", {"AwaitingInputs", "Failed"})
    assert st["phase"] == "AwaitingInputs", st
    assert {p["trustDomain"] for p in st["placement"]} == {"bank-a", "bank-b", "bank-c"}
    sid, url = st["sessionId"], st["result"]["nodes"][0]
    rng = np.random.default_rng(3)
    tables = {o: np.column_stack([rng.integers(0, 50, 6), rng.integers(0, 10, 6), rng.integers(0, 3, 6)]).astype(float)
              for o in ("bank-a", "bank-b", "bank-c")}
    for owner, table in tables.items():
        world.submit(sid, owner, url, world.csv(f"mlp-{owner}", ["amount", "txPerDay", "chargebacks"], table))
    w0, b0 = rng.uniform(-0.05, 0.05, (3, 4)), rng.uniform(-1, 1, 4)
    w1, b1 = rng.uniform(-1, 1, (4, 1)), rng.uniform(-1, 1, 1)
    model = world.dir / "model.json"
    model.write_text(json.dumps({"W0": w0.tolist(), "b0": b0.tolist(), "W1": w1.tolist(), "b1": b1.tolist()}))
    world.submit(sid, "insurer", url, str(model))
    st = world.wait_phase("fraud-mlp", {"Succeeded", "Failed"}, timeout=180)
    assert st["phase"] == "Succeeded", st
    scores = np.asarray(world.result(sid, "insurer", url)["outputs"]["score"], dtype=float).reshape(-1)
    rows = np.concatenate([tables[o] for o in ("bank-a", "bank-b", "bank-c")])
    expected = (np.maximum(rows @ w0 + b0, 0) @ w1 + b1).reshape(-1)
    assert scores.shape == expected.shape
    assert np.allclose(np.sort(scores), np.sort(expected), atol=5e-2)
    assert_dealer_free(world, operator, st, provider="prss")


def assert_dealer_free(world: World, operator: Operator, st: dict[str, Any], *, provider: str) -> None:
    """Trust model of a dealer-free session (``provider``: ``prss`` or ``ot``): the operator dealt
    nothing and holds nothing.

    Inspects what the operator sends (the signed plan each party holds: no seed; no
    preprocessing ever posted to a party), what it stores (the MPCSession status, every
    Secret and ConfigMap in the cluster: nothing names the session), and what it logs.
    The PRSS keys (prss) and the base OTs' KEM keys and choices (ot) are drawn in the node
    processes and travel only on the peer links, so the operator has nothing to leak.
    """
    sid = st["sessionId"]
    assert st["preprocessing"]["provider"] == provider and st["preprocessing"]["dealerFree"] == "true", st
    assert "dealtDigest" not in st
    assert "Preprocessed" not in {c["type"] for c in st.get("conditions") or []}, st["conditions"]
    for url in st["result"]["nodes"]:
        report = json.loads(node_get(world.dir / "ca.pem", f"{url}/v1/sessions/{sid}"))
        assert report["preprocessing"] == provider and report["preprocessingReceived"] is False, report
        plan = json.loads(node_get(world.dir / "ca.pem", f"{url}/v1/sessions/{sid}/plan"))
        doc = plan.get("plan", plan)
        assert doc["preprocessing"] == {"provider": provider, "sealedSeeds": {}}, doc["preprocessing"]
    # The session's plan Secret holds the signed plan (public data, no seed); nothing else names the
    # session (Secret data decoded, so base64 hides nothing).
    plan_secret = f"{sid.split('.')[1]}-plan"
    for kind in ("secrets", "configmaps"):
        items = json.loads(world.kubectl("get", kind, "-A", "-o", "json").stdout)["items"]
        for item in items:
            if kind == "secrets":
                item["data"] = {k: base64.b64decode(v).decode(errors="replace") for k, v in (item.get("data") or {}).items()}
        naming = [i["metadata"]["name"] for i in items if sid in json.dumps(i)]
        assert naming == ([plan_secret] if kind == "secrets" else []), f"{kind} naming {sid}: {naming}"
    kept = json.loads(base64.b64decode(get_json(world.kubectl, "secret", plan_secret)["data"]["plan.json"]))
    assert kept["plan"]["preprocessing"] == {"provider": provider, "sealedSeeds": {}}, kept["plan"]["preprocessing"]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{operator.proc.metrics_port}/metrics", timeout=5).read().decode()
    assert f'pqmpc_operator_sessions_planned_total{{preprocessing="{provider}"}}' in metrics
    log = Path(operator.proc.process.log_path).read_text(errors="replace")
    assert sid in log  # the operator did run it
    assert not [line for line in log.splitlines() if sid in line and "dealt" in line], "the operator dealt"


def example_session(world: World, name: str, parties: int) -> dict[str, Any]:
    """examples/mpcsession-fraud-stats.yaml (the additive example) with real keys, on ``parties`` nodes.

    Two parties keep its EU locality (the pool's two EU nodes); three parties need the
    US node too, so the locality is dropped (distinct trust domains still hold).
    """
    doc = dict(yaml.safe_load((REPO / "examples" / "mpcsession-fraud-stats.yaml").read_text()))
    doc["metadata"] = {"name": name, "namespace": NS}
    spec = doc["spec"]
    assert spec["sharing"] == "additive" and spec["preprocessing"] == "auto", spec
    spec["parties"] = parties
    for item in spec["inputs"]:
        item["identity"] = world.ids[item["owner"]]["identity"]
        if parties > 2:
            item.pop("locality", None)
    for out in spec["outputs"]:
        out["identity"] = world.ids[out["recipient"]]["kemPublicKey"]
    return doc


@pytest.mark.parametrize("parties", [2, 3])
def test_the_additive_example_runs_dealer_free_on_auto(world: World, operator: Operator, parties: int) -> None:
    """The additive example session on auto: ot (no dealer), the plaintext answer exact to the cent,
    and nothing dealt, stored or logged by the operator that a dealer would have."""
    name = f"example-ot-{parties}"
    world.apply(example_session(world, name, parties))
    st = world.wait_phase(name, {"AwaitingInputs", "Failed"})
    assert st["phase"] == "AwaitingInputs", st
    assert st["preprocessing"] == {"provider": "ot", "dealerFree": "true",
                                   "note": "auto: additive session, dealer-free (ot: ML-KEM base OTs + OT extension)"}
    assert len(st["placement"]) == parties and len({p["trustDomain"] for p in st["placement"]}) == parties
    sid, url = st["sessionId"], st["result"]["nodes"][0]
    rng = np.random.default_rng(20 + parties)
    tables = {o: np.round(rng.uniform(0, 20000, size=(n, 1)), 2) for o, n in (("bank-a", 30), ("bank-b", 20))}
    for owner, table in tables.items():
        world.submit(sid, owner, url, world.csv(f"{name}-{owner}", ["amount"], table))
    st = world.wait_phase(name, {"Succeeded", "Failed"}, timeout=300)
    assert st["phase"] == "Succeeded", st
    doc = world.result(sid, "auditor", url)
    res, places = doc["outputs"], doc["decimals"]
    amounts = np.concatenate(list(tables.values()))[:, 0]
    cents = [int(round(v * 100)) for v in amounts]  # decimals: 2, so every statistic is exact
    n, total, squares = len(cents), sum(cents), sum(c * c for c in cents)
    assert res["count(amount)"] == n
    assert res["mean(amount)"] == float(rounded_text(Fraction(total, n * 100), places["mean(amount)"]))
    assert res["variance(amount)"] == float(rounded_text(Fraction(n * squares - total * total, n * n * 100**2),
                                                         places["variance(amount)"]))
    assert res["histogram(amount)"] == np.histogram(amounts, bins=[0, 100, 1000, 10000, 100000])[0].tolist()
    assert sorted(doc["parties"]) == list(range(parties))
    assert_dealer_free(world, operator, st, provider="ot")
    world.kubectl("delete", "mpcs", name, "-n", NS, "--wait=true", "--timeout=60s")


def test_operator_restart_mid_session(world: World, operator: Operator) -> None:
    """A session on the dealer: no operator, no dealing, no progress; the restarted operator deals and it finishes."""
    spec = aggregate_spec(world, ["bank-a", "bank-b"], ["eu-west"], 2)
    world.apply(world.session("restart", **spec, preprocessing="dealer"))
    st = world.wait_phase("restart", {"AwaitingInputs"})
    operator.kill()  # the operator dies with the session waiting for inputs
    before = get_json(world.kubectl, "mpcs", "restart")["metadata"]["resourceVersion"]
    rows = np.arange(1.0, 11.0).reshape(-1, 1)
    url = st["result"]["nodes"][0]
    world.submit(st["sessionId"], "bank-a", url, world.csv("r-a", ["amount"], rows))
    world.submit(st["sessionId"], "bank-b", url, world.csv("r-b", ["amount"], rows * 2))

    def node_holds_both() -> bool:
        doc = json.loads(node_get(world.dir / "ca.pem", f"{url}/v1/sessions/{st['sessionId']}"))
        return all(i["received"] for i in doc["inputs"])

    # Once the node holds both inputs, the session object must not have moved: nobody writes it
    # (and so nobody deals) without an operator. A condition, not a sleep, makes this hold under load.
    wait_for("the node to hold both inputs", node_holds_both, timeout=60)
    after = get_json(world.kubectl, "mpcs", "restart")
    assert after["metadata"]["resourceVersion"] == before and after["status"]["phase"] == "AwaitingInputs", after
    operator.start()
    st = world.wait_phase("restart", {"Succeeded", "Failed"})
    assert st["phase"] == "Succeeded", st
    assert st["planGeneration"] == 1, "the resumed operator must not re-plan a delivered plan"
    # At start-up, before any loop ran, it rebuilt which nodes running sessions use (this one at least).
    log = Path(operator.proc.process.log_path).read_text(errors="replace")
    assert re.search(r"rebuilt from \d+ MPCSession\(s\): [1-9]\d* running on", log), "busy not rebuilt at start-up"
    res = world.result(st["sessionId"], "auditor", st["result"]["nodes"][0])["outputs"]
    assert res["mean(amount)"] == pytest.approx(np.concatenate([rows, rows * 2]).mean(), abs=0.01)


def test_party_killed_mid_session_fails_additive_session(world: World, kubectl: Kubectl) -> None:
    """An additive session on auto (ot) loses a node: it fails cleanly, saying every owner's input is kept secret."""
    world.apply(world.session("killed", **aggregate_spec(world, ["bank-a", "bank-b"], ["eu-west"], 2)))
    st = world.wait_phase("killed", {"AwaitingInputs"})
    assert st["preprocessing"]["provider"] == "ot", st
    world.submit(st["sessionId"], "bank-a", st["result"]["nodes"][0], world.csv("k-a", ["amount"], np.ones((3, 1))))
    victim = st["placement"][1]["node"]
    kubectl("delete", "pod", victim, "-n", NS, "--grace-period=0", "--force", check=False)
    st = world.wait_phase("killed", {"Failed", "Succeeded"}, timeout=120)
    assert st["phase"] == "Failed" and st["reason"] == "NodeLost", st
    assert victim in st["message"] and "additive sharing needs every party" in st["message"], st["message"]
    assert "every owner's input is kept secret" in st["message"] and "no output was released" in st["message"]
    assert "dealtDigest" not in st
    # the pool heals: the pod is re-created and certified again
    def healed() -> bool:
        nodes = (get_json(kubectl, "mpcpool", "banks").get("status") or {}).get("nodes") or []
        return any(n["name"] == victim and n.get("ready") and n.get("certFingerprint") for n in nodes)
    wait_for("the killed node to be replaced and certified", healed, timeout=120)


def test_party_killed_fails_a_dealer_free_session_at_n_2t_plus_1(world: World, kubectl: Kubectl) -> None:
    """n = 3, t = 1, dealer-free: losing a node leaves 2 < 2t + 1 parties, so the session fails and says why."""
    spec = aggregate_spec(world, ["bank-a", "bank-b"], None, 3)
    spec.update(sharing="shamir", threshold=1)
    world.apply(world.session("killed-hm", **spec))
    st = world.wait_phase("killed-hm", {"AwaitingInputs", "Failed"})
    assert st["phase"] == "AwaitingInputs" and st["preprocessing"]["provider"] == "prss", st
    world.submit(st["sessionId"], "bank-a", st["result"]["nodes"][0], world.csv("kh-a", ["amount"], np.ones((3, 1))))
    victim = st["placement"][2]["node"]
    kubectl("delete", "pod", victim, "-n", NS, "--grace-period=0", "--force", check=False)
    st = world.wait_phase("killed-hm", {"Failed", "Succeeded"}, timeout=180)
    assert st["phase"] == "Failed" and st["reason"] == "NodeLost", st
    assert victim in st["message"] and "2t+1=3" in st["message"] and "n >= 2t+2" in st["message"], st["message"]

    def healed() -> bool:
        nodes = (get_json(kubectl, "mpcpool", "banks").get("status") or {}).get("nodes") or []
        return any(n["name"] == victim and n.get("ready") and n.get("certFingerprint") for n in nodes)
    wait_for("the killed node to be replaced and certified", healed, timeout=120)


def test_party_killed_mid_computation_at_n3_re_runs_without_resubmission(world: World, kubectl: Kubectl) -> None:
    """n = 3, t = 1, dealer-free: a node killed mid-computation leaves 2 < 2t + 1 parties, so the session fails, but
    the survivors keep every owner's input; ``pqmpc.io/rerun`` re-runs it with the healed pod as the replacement
    (the survivors reshare to it) and it succeeds with the plaintext answer, no owner submitting again."""
    spec = aggregate_spec(world, ["bank-a", "bank-b"], None, 3)
    spec.update(sharing="shamir", threshold=1)
    world.apply(world.session("rerun-hm", **spec))
    st = world.wait_phase("rerun-hm", {"AwaitingInputs", "Failed"})
    assert st["phase"] == "AwaitingInputs" and st["preprocessing"]["provider"] == "prss", st
    sid, url = st["sessionId"], st["result"]["nodes"][0]
    rng = np.random.default_rng(13)
    a, b = rng.integers(0, 1000, (2000, 1)).astype(float), rng.integers(0, 1000, (2000, 1)).astype(float)
    world.submit(sid, "bank-a", url, world.csv("rr-a", ["amount"], a))
    world.submit(sid, "bank-b", url, world.csv("rr-b", ["amount"], b))
    victim = st["placement"][2]["node"]  # killed as the computation starts (both inputs are in)
    first = {str(p["node"]): int(p["party"]) for p in st["placement"]}
    kubectl("delete", "pod", victim, "-n", NS, "--grace-period=0", "--force", check=False)
    st = world.wait_phase("rerun-hm", {"Failed", "Succeeded"}, timeout=300)
    assert st["phase"] == "Failed", st
    assert st["rerun"]["available"] is True and st["rerun"]["survivors"] == [0, 1], st
    assert "no owner submits again" in st["message"] and "pqmpc.io/rerun=1" in st["message"], st["message"]
    kubectl("annotate", "mpcsession", "rerun-hm", "-n", NS, "pqmpc.io/rerun=1", "--overwrite")
    st = world.wait_phase("rerun-hm", {"Succeeded"}, timeout=300)
    assert st["planGeneration"] == 2 and st["rerun"]["inputsHeldBy"] == [0, 1], st
    assert st["placement"][2]["node"] == victim  # the healed pod: a new node with a new certificate
    # Generation 1's nodes, each at its one index (the API server keeps the field: the CRD declares it).
    assert {e["node"]: e["party"] for e in st["rerun"]["placedBefore"]} == first, st["rerun"]
    res = world.result(sid, "auditor", st["result"]["nodes"][0])
    values = np.concatenate([a, b])
    assert res["outputs"]["count(amount)"] == 4000
    assert res["outputs"]["mean(amount)"] == pytest.approx(values.mean(), abs=1e-6)
    assert res["outputs"]["variance(amount)"] == pytest.approx(values.var(), abs=1e-6)


def test_party_killed_mid_session_is_survived_at_n4_t1(world: World, kubectl: Kubectl) -> None:
    """n = 4, t = 1, dealer-free: losing one node leaves 3 = 2t + 1 parties, so the session restarts
    without it and succeeds with the plaintext answer."""
    patch = [{"op": "replace", "path": "/spec/groups/2/replicas", "value": 2}]
    kubectl("patch", "mpcpool", "banks", "-n", NS, "--type=json", "-p", json.dumps(patch))

    def four_ready() -> bool:
        nodes = (get_json(kubectl, "mpcpool", "banks").get("status") or {}).get("nodes") or []
        return sum(1 for n in nodes if n.get("ready") and n.get("certFingerprint")) >= 4
    try:
        wait_for("a fourth node, ready and certified", four_ready, timeout=180)
        spec = aggregate_spec(world, ["bank-a", "bank-b"], None, 4)
        spec.update(sharing="shamir", threshold=1, placement={"distinctTrustDomains": False, "maxSharesPerZone": 2})
        world.apply(world.session("killed-hm4", **spec))
        st = world.wait_phase("killed-hm4", {"AwaitingInputs", "Failed"})
        assert st["phase"] == "AwaitingInputs" and st["preprocessing"]["provider"] == "prss", st
        sid, url = st["sessionId"], st["result"]["nodes"][0]
        rng = np.random.default_rng(11)
        a, b = rng.integers(0, 1000, (300, 1)).astype(float), rng.integers(0, 1000, (300, 1)).astype(float)
        world.submit(sid, "bank-a", url, world.csv("k4-a", ["amount"], a))
        world.submit(sid, "bank-b", url, world.csv("k4-b", ["amount"], b))
        victim = st["placement"][3]["node"]  # killed as the computation starts (both inputs are in)
        kubectl("delete", "pod", victim, "-n", NS, "--grace-period=0", "--force", check=False)
        st = world.wait_phase("killed-hm4", {"Succeeded", "Failed"}, timeout=300)
        assert st["phase"] == "Succeeded", st
        res = world.result(sid, "auditor", url)
        values = np.concatenate([a, b])
        assert res["outputs"]["mean(amount)"] == pytest.approx(values.mean(), abs=1e-6)
        assert res["outputs"]["variance(amount)"] == pytest.approx(values.var(), abs=1e-6)
        assert 3 not in res["parties"], res["parties"]
    finally:
        patch[0]["value"] = 1
        kubectl("patch", "mpcpool", "banks", "-n", NS, "--type=json", "-p", json.dumps(patch))


def _utc(stamp: str) -> dt.datetime:
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)


def test_concurrent_sessions_and_ttl_cleanup(world: World, operator: Operator, kubeconfig: Path) -> None:
    """Twenty sessions at once; the TTL deletes exactly the finished sessions that ask for it.

    Event-driven: a watch started before the sessions exist records every phase each one
    passes through, so a session the TTL deletes moments after it finishes is still seen
    finishing (its last state also rides in the DELETED event). The sessions whose
    results the test reads have no TTL and are deleted by the test afterwards.
    """
    from pqmpc_node.client import Identity, SessionClient
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    count, ttl = 20, 5
    names = [f"conc-{i:02d}" for i in range(count)]
    kept = names[:3]  # no TTL: their results are read after every session has finished
    ca = x509.load_pem_x509_certificate((world.dir / "ca.pem").read_bytes())
    signer = load_pem_public_key((world.dir / "plan-signer.pub").read_bytes())
    owners = {o: Identity.load(Path(world.identity_file(o))) for o in ("bank-a", "bank-b")}

    def phase_event(name: str, phases: set[str]) -> WatchEvent | None:
        return sessions.first(name, lambda e: (e.obj.get("status") or {}).get("phase") in phases)

    expected = {}
    with ObjectWatch(kubeconfig, "pqmpc.io", "v1alpha1", "mpcsessions", NS) as sessions:
        for name in names:
            spec = aggregate_spec(world, ["bank-a", "bank-b"], ["eu-west"], 2)
            if name not in kept:
                spec["ttlSecondsAfterFinished"] = ttl
            world.apply(world.session(name, **spec))
        for i, name in enumerate(names):
            waiting = sessions.wait_for(f"{name} AwaitingInputs",
                                        lambda: phase_event(name, {"AwaitingInputs", "Failed"}), timeout=180)
            st = waiting.obj["status"]
            assert st["phase"] == "AwaitingInputs", st
            values = {"bank-a": [str(float(i))], "bank-b": [str(float(i + 10))]}
            for owner, ident in owners.items():
                client = SessionClient(node_url=st["result"]["nodes"][0], session_id=st["sessionId"],
                                       ca_certificate=ca, plan_signer=signer)  # type: ignore[arg-type]
                try:
                    client.post_sealed(client.seal_rows(ident, {"amount": values[owner]}))
                finally:
                    client.close()
            expected[name] = (i + i + 10) / 2
        finished = {name: sessions.wait_for(f"{name} to finish", lambda: phase_event(name, {"Succeeded", "Failed"}),
                                            timeout=240).obj["status"] for name in names}
        assert all(st["phase"] == "Succeeded" for st in finished.values()), {
            n: (s["phase"], s.get("reason"), s.get("message")) for n, s in finished.items()}
        # ttlSecondsAfterFinished deletes each session that set it, after it finished and not before ttl.
        for name in names:
            if name in kept:
                continue
            deleted = sessions.wait_for(f"{name} deleted after its TTL",
                                        lambda: sessions.first(name, lambda e: e.kind == "DELETED"), timeout=120)
            final = deleted.obj.get("status") or {}
            assert final.get("phase") == "Succeeded", (name, final)
            # The API server's clock on both sides (whole seconds), not when this process saw the events.
            deleting = deleted.obj["metadata"].get("deletionTimestamp")
            if deleting:
                waited = _utc(deleting) - _utc(final["completionTime"])
                assert waited >= dt.timedelta(seconds=ttl), (name, final["completionTime"], deleting)
        # ... and none that did not set it.
        assert not any(e.kind == "DELETED" for n in kept for e in sessions.events(n))
    left = {i["metadata"]["name"] for i in get_json(world.kubectl, "mpcs")["items"]}
    assert set(kept) <= left and not left & (set(names) - set(kept)), left

    auditor = Identity.load(Path(world.identity_file("auditor")))
    for name in kept:
        client = SessionClient(node_url=finished[name]["result"]["nodes"][0], session_id=finished[name]["sessionId"],
                               ca_certificate=ca, plan_signer=signer)  # type: ignore[arg-type]
        try:
            assert client.collect_result(auditor)["outputs"]["mean(amount)"] == pytest.approx(expected[name], abs=0.01)
        finally:
            client.close()
        world.kubectl("delete", "-n", NS, "mpcs", name, "--wait=true", "--timeout=60s")
    # The transition counter is exported after the status write: wait for it, do not read it once.
    wait_for("the Succeeded transitions in the operator's metrics", lambda: 'pqmpc_operator_session_transitions_total'
             '{phase="Succeeded"}' in operator.proc.metrics(), timeout=30)


def test_kem_rotation_during_a_running_session(world: World, kubectl: Kubectl) -> None:
    groups = [{"name": g, "replicas": 1, "region": "eu-west", "zone": z, "trustDomain": f"rot-{g}"}
              for g, z in (("a", "eu-west-1a"), ("b", "eu-west-1b"))]
    pool = {"apiVersion": "pqmpc.io/v1alpha1", "kind": "NodePool", "metadata": {"name": "rot", "namespace": NS},
            "spec": {"engine": {"backend": "numpy"}, "groups": groups,
                     # renewBefore paces both the next KEM key and an idle node's certificate renewal
                     # (every duration - renewBefore = 40 s): the session is planned well before the first
                     # renewal, sees the first new KEM key 40 s in, and has until a busy node's certificate
                     # renewal (duration / 10 = 12 s before expiry, 108 s in) to finish, however loaded.
                     "keys": {"rotation": {"duration": "120s", "renewBefore": "80s", "gracePeriod": "5s"}}}}
    world.apply(pool)

    def nodes() -> dict[str, dict[str, Any]]:
        return {n["name"]: n for n in (get_json(kubectl, "mpcpool", "rot").get("status") or {}).get("nodes") or []}

    wait_for("pool rot certified", lambda: len(nodes()) == 2 and all(n.get("ready") and n.get("certFingerprint")
                                                                     for n in nodes().values()), timeout=120)
    trust = get_json(kubectl, "configmap", "rot-trust")["data"]
    (world.dir / "rot-ca.pem").write_text(trust["ca.pem"])
    (world.dir / "rot-plan-signer.pub").write_text(trust["plan-signer.pub"])
    spec = aggregate_spec(world, ["bank-a", "bank-b"], ["eu-west"], 2)
    world.apply({**world.session("rotating", **spec), "spec": {**world.session("rotating", **spec)["spec"], "poolRef": "rot"}})
    st = world.wait_phase("rotating", {"AwaitingInputs"})
    url = st["result"]["nodes"][0]
    plan_doc = json.loads(node_get(world.dir / "rot-ca.pem", f"{url}/v1/sessions/{st['sessionId']}/plan"))
    plan_epochs = {p["nodeId"]: p["kemEpoch"] for p in plan_doc["plan"]["parties"]}
    # Both nodes publish a newer KEM key (logged by the operator) while the session waits; the
    # owners then seal to the plan's epochs, which the nodes keep (fenced) for the session.
    wait_for("KEM keys rotated past the plan's epochs", lambda: all(
        int(nodes()[n].get("kemEpoch", 0)) > e for n, e in plan_epochs.items()), timeout=120)
    assert all(n.get("kemRotatesAt") for n in nodes().values()), "status shows each node's next rotation"
    for owner, values in (("bank-a", [[1.0], [2.0]]), ("bank-b", [[3.0]])):
        pqmpc("submit", "--session", st["sessionId"], "--identity", world.identity_file(owner), "--node", url,
              "--ca", str(world.dir / "rot-ca.pem"), "--plan-signer", str(world.dir / "rot-plan-signer.pub"),
              world.csv(f"rot-{owner}", ["amount"], np.array(values)))
    st = world.wait_phase("rotating", {"Succeeded", "Failed"})
    assert st["phase"] == "Succeeded", (st.get("reason"), st.get("message"))
    party0 = st["placement"][0]["node"]  # the node behind ``url``

    def old_key_gone() -> bool:
        epochs = {k["epoch"] for k in json.loads(node_get(world.dir / "rot-ca.pem", f"{url}/v1/keys"))["kemKeys"]}
        return plan_epochs[party0] not in epochs

    # Unfenced once the session ends, the key goes at its rotation (120 s after it began) plus the grace.
    wait_for("the session's key retired once the session ended", old_key_gone, timeout=180, every=1.0)
    kubectl("delete", "mpcs", "rotating", "-n", NS, "--wait=true", "--timeout=60s")
    kubectl("delete", "mpcpool", "rot", "-n", NS, "--wait=true", "--timeout=60s")


def test_deleting_a_session_cancels_it_at_its_parties(world: World, kubectl: Kubectl) -> None:
    world.apply(world.session("deleted", **aggregate_spec(world, ["bank-a", "bank-b"], ["eu-west"], 2)))
    st = world.wait_phase("deleted", {"AwaitingInputs"})
    sid, urls = st["sessionId"], st["result"]["nodes"]
    world.submit(sid, "bank-a", urls[0], world.csv("d-a", ["amount"], np.ones((3, 1))))
    kubectl("delete", "mpcs", "deleted", "-n", NS, "--wait=true", "--timeout=60s")
    assert "deleted" not in [i["metadata"]["name"] for i in get_json(kubectl, "mpcs")["items"]]

    def report(url: str) -> dict[str, Any]:
        return dict(json.loads(node_get(world.dir / "ca.pem", f"{url}/v1/sessions/{sid}")))

    for url in urls:
        final = wait_for(f"{url} to report {sid} cancelled",
                         lambda: (lambda doc: doc if doc["phase"] == "Failed" else None)(report(url)), timeout=30)
        assert final["reason"] == "cancelled" and "operator" in final["message"], final
        assert final["inputRows"] == {} and not any(i["received"] for i in final["inputs"]), final


def test_a_session_that_cannot_fit_fails_at_once_and_says_how_many_rows_fit(world: World, kubectl: Kubectl) -> None:
    """The dealt body of 1000 rows per owner would exceed the operator's (lowered) limit: the session
    fails before any dealing, with one Warning Event, the rows that fit in status, at the parties and
    in the owner's CLI (at once, not after --wait)."""
    spec = aggregate_spec(world, ["bank-a", "bank-b"], ["eu-west"], 2)
    world.apply(world.session("too-big", **spec, preprocessing="dealer"))
    st = world.wait_phase("too-big", {"AwaitingInputs", "Failed"})
    assert st["phase"] == "AwaitingInputs", st
    sid, urls = st["sessionId"], st["result"]["nodes"]
    for owner in ("bank-a", "bank-b"):
        world.submit(sid, owner, urls[0], world.csv(f"big-{owner}", ["amount"], np.ones((1000, 1))))
    st = world.wait_phase("too-big", {"Failed", "Succeeded"}, timeout=120)
    assert (st["phase"], st["reason"]) == ("Failed", "PreprocessingTooLarge"), st
    match = re.search(r"over the 16 MiB the operator deals.*at most (\d+) rows per owner fit", st["message"])
    assert match and 0 < int(match.group(1)) < 1000, st["message"]
    assert "preprocessing: auto" in st["message"] and "dealtDigest" not in st

    def events() -> list[dict[str, Any]]:
        return list(get_json(kubectl, "events", "--field-selector", "involvedObject.name=too-big")["items"])

    warned = wait_for("the PreprocessingTooLarge Event",
                      lambda: [e for e in events() if e["reason"] == "PreprocessingTooLarge"], timeout=60)
    assert [(e["type"], e.get("count", 1)) for e in warned] == [("Warning", 1)], warned
    assert not [e for e in events() if e["reason"] == "Dealing"]
    for url in urls:
        doc = json.loads(node_get(world.dir / "ca.pem", f"{url}/v1/sessions/{sid}"))
        assert (doc["phase"], doc["reason"], doc["message"]) == ("Failed", "PreprocessingTooLarge", st["message"]), doc
    started = time.monotonic()
    out = pqmpc("result", "--session", sid, "--identity", world.identity_file("auditor"), "--node", urls[0],
                "--ca", str(world.dir / "ca.pem"), "--plan-signer", str(world.dir / "plan-signer.pub"),
                "--wait", "60", check=False)
    assert out.returncode == 1 and st["message"] in " ".join((out.stdout + out.stderr).split()), out
    assert "Traceback" not in out.stderr and time.monotonic() - started < 45


def test_a_pq_high_pool_runs_a_session_end_to_end(world: World, kubectl: Kubectl) -> None:
    """keys.suite pq-high: ML-DSA-87 CA, certificates and plan signer, ML-KEM-1024 + P-384 envelopes;
    owners and the recipient made with `pqmpc identity new --suite pq-high`; the CLI learns the suite
    from the pool CA and the signed plan."""
    groups = [{"name": g, "replicas": 1, "region": "eu-west", "zone": z, "trustDomain": f"high-{g}"}
              for g, z in (("a", "eu-west-1a"), ("b", "eu-west-1b"))]
    world.apply({"apiVersion": "pqmpc.io/v1alpha1", "kind": "NodePool", "metadata": {"name": "high", "namespace": NS},
                 "spec": {"engine": {"backend": "numpy"}, "groups": groups, "keys": {"suite": "pq-high"}}})

    def nodes() -> list[dict[str, Any]]:
        return list((get_json(kubectl, "mpcpool", "high").get("status") or {}).get("nodes") or [])

    wait_for("pool high certified", lambda: len(nodes()) == 2 and all(n.get("ready") and n.get("certFingerprint")
                                                                      for n in nodes()), timeout=120)
    trust = get_json(kubectl, "configmap", "high-trust")["data"]
    (world.dir / "high-ca.pem").write_text(trust["ca.pem"])
    (world.dir / "high-plan-signer.pub").write_text(trust["plan-signer.pub"])
    ids = {}
    for name in ("hi-bank-a", "hi-bank-b", "hi-auditor"):
        out = pqmpc("identity", "new", name, "--suite", "pq-high", "--out", str(world.dir / f"{name}.identity.json"))
        ids[name] = json.loads(out.stdout)
        assert ids[name]["suite"] == "pq-high"
    fields = [{"name": "amount", "min": 0, "max": 1000, "decimals": 2}]
    spec = {
        "poolRef": "high", "parties": 2, "threshold": 1, "sharing": "additive", "security": "malicious",
        "inputs": [{"owner": o, "identity": ids[o]["identity"], "fields": fields} for o in ("hi-bank-a", "hi-bank-b")],
        "program": {"aggregate": [{"op": "mean", "field": "amount"}, {"op": "variance", "field": "amount"}]},
        "outputs": [{"recipient": "hi-auditor", "identity": ids["hi-auditor"]["kemPublicKey"],
                     "allow": ["mean(amount)", "variance(amount)"]}],
        "placement": {"distinctTrustDomains": True, "maxSharesPerZone": 1}, "deadline": "10m",
    }
    world.apply({"apiVersion": "pqmpc.io/v1alpha1", "kind": "MPCSession", "metadata": {"name": "high-stats", "namespace": NS},
                 "spec": spec})
    st = world.wait_phase("high-stats", {"AwaitingInputs", "Failed"})
    assert st["phase"] == "AwaitingInputs", st
    url, sid = st["result"]["nodes"][0], st["sessionId"]
    trust_args = ["--ca", str(world.dir / "high-ca.pem"), "--plan-signer", str(world.dir / "high-plan-signer.pub")]
    for owner, values in (("hi-bank-a", [[1.25], [2.5]]), ("hi-bank-b", [[10.0]])):
        pqmpc("submit", "--session", sid, "--identity", world.identity_file(owner), "--node", url, *trust_args,
              world.csv(f"high-{owner}", ["amount"], np.array(values)))
    st = world.wait_phase("high-stats", {"Succeeded", "Failed"})
    assert st["phase"] == "Succeeded", st
    out = json.loads(pqmpc("result", "--session", sid, "--identity", world.identity_file("hi-auditor"), "--node", url,
                           *trust_args, "--json", "--wait", "60").stdout)
    cents = [125, 250, 1000]
    n, total, squares = len(cents), sum(cents), sum(c * c for c in cents)
    # Shown at the field's 2 decimals + 2 (rounded exactly), the exact value as text:
    assert out["outputs"]["mean(amount)"] == 4.5833 and out["decimals"]["mean(amount)"] == 4
    assert out["exact"]["mean(amount)"] == str(Fraction(total, n * 100)) == "55/12"
    assert out["exact"]["variance(amount)"] == str(Fraction(n * squares - total * total, n * n * 100**2))
    kubectl("delete", "mpcs", "high-stats", "-n", NS, "--wait=true", "--timeout=60s")
    kubectl("delete", "mpcpool", "high", "-n", NS, "--wait=true", "--timeout=60s")
