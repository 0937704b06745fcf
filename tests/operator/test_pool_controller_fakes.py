"""``reconcile_pool`` on the package's fakes: one pass makes the pool's trust root, children and pods.

No cluster: :class:`~pqmpc_operator.testing.FakeKubeApi` stands in for the API server,
:class:`~pqmpc_operator.testing.FakeNodeClient` for the (not yet running) nodes. Shows
the pool controller runs against the same doors as the session controller.
"""

from __future__ import annotations

from typing import Any

import httpx

from pqmpc_operator import builders, pool_pki
from pqmpc_operator.metrics import OperatorMetrics
from pqmpc_operator.pool_controller import PoolDeps, reconcile_pool
from pqmpc_operator.settings import OperatorSettings
from pqmpc_operator.testing import FakeKubeApi, FakeNodeClient


def pool(**spec: Any) -> dict[str, Any]:
    groups = [{"name": "a", "replicas": 2, "region": "eu-west", "zone": "eu-west-1a", "trustDomain": "bank-a"}]
    return {"apiVersion": "pqmpc.io/v1alpha1", "kind": "NodePool", "metadata": {"name": "banks", "namespace": "ns"},
            "spec": {"groups": groups, **spec}}


async def test_a_pass_makes_pki_children_pods_and_status() -> None:
    api = FakeKubeApi()
    api.add_pool(pool())
    api.nodes = [{"metadata": {"name": "k8s-1", "labels": {builders.LABEL_REGION: "eu-west",
                                                           builders.LABEL_ZONE: "eu-west-1a"}},
                  "status": {"allocatable": {}}}]
    events: list[tuple[str, str]] = []
    async with httpx.AsyncClient() as http:
        deps = PoolDeps(api=api, nodes=FakeNodeClient(), settings=OperatorSettings(), metrics=OperatorMetrics(),
                        http=http, post_event=lambda body, kind, reason, message: events.append((kind, reason)))
        await reconcile_pool(deps, namespace="ns", name="banks")
        assert ("ns", pool_pki.pki_secret_name("banks")) in api.secrets
        assert {kind for kind, _, _ in api.applied} >= {"ConfigMap", "ServiceAccount", "Service", "PodDisruptionBudget",
                                                       "NetworkPolicy"}
        assert sorted(name for _, name in api.pods) == ["banks-a-0", "banks-a-1"]
        assert api.pools[("ns", "banks")]["status"]["observedGeneration"] == 1
        applies = len(api.called("apply"))
        await reconcile_pool(deps, namespace="ns", name="banks")
        assert len(api.called("apply")) == applies, "unchanged children are not applied again"
        assert len(api.called("create_pod")) == 2, "existing pods are not made again"
        assert api.pools[("ns", "banks")]["status"]["replicas"] == 2  # the pods the second pass read


async def test_an_unusable_spec_is_reported_and_nothing_is_made() -> None:
    api = FakeKubeApi()
    api.add_pool(pool(engine={"backend": "tpu"}))
    events: list[tuple[str, str]] = []
    async with httpx.AsyncClient() as http:
        deps = PoolDeps(api=api, nodes=FakeNodeClient(), settings=OperatorSettings(), metrics=OperatorMetrics(),
                        http=http, post_event=lambda body, kind, reason, message: events.append((kind, reason)))
        assert await reconcile_pool(deps, namespace="ns", name="banks") is None
    assert api.pods == {} and api.secrets == {}
    conditions = {c["type"]: c for c in api.pools[("ns", "banks")]["status"]["conditions"]}
    assert "spec.engine.backend" in str(conditions)
    assert ("Warning", "InvalidSpec") in events


async def test_external_access_on_makes_the_gateway_and_off_deletes_only_what_the_pool_owns() -> None:
    api = FakeKubeApi()
    stored = api.add_pool(pool(externalAccess={"domain": "banks.example.com"}))
    async with httpx.AsyncClient() as http:
        deps = PoolDeps(api=api, nodes=FakeNodeClient(), settings=OperatorSettings(), metrics=OperatorMetrics(),
                        http=http, post_event=lambda body, kind, reason, message: None)
        await reconcile_pool(deps, namespace="ns", name="banks")
        gateway = {(kind, name) for kind, _, name in api.applied if name == "banks-gateway"}
        assert gateway == {(k, "banks-gateway") for k in ("ServiceAccount", "Role", "RoleBinding", "Deployment",
                                                          "Service")}
        assert api.called("delete_owned") == []
        # Someone else's object of the same name (not owned by the pool) must survive the switch-off.
        api.applied[("Role", "ns", "banks-gateway")] = {
            "kind": "Role", "metadata": {"name": "banks-gateway", "ownerReferences": [{"uid": "someone-else"}]}}
        stored["spec"].pop("externalAccess")
        stored["metadata"]["generation"] += 1
        await reconcile_pool(deps, namespace="ns", name="banks")
        left = {kind for kind, _, name in api.applied if name == "banks-gateway"}
        assert left == {"Role"}
        assert [args[0] for args in api.called("delete_owned")] == ["Service", "Deployment", "RoleBinding", "Role",
                                                                    "ServiceAccount"]
        await reconcile_pool(deps, namespace="ns", name="banks")
        assert len(api.called("delete_owned")) == 5, "nothing changed: no more deletes"
