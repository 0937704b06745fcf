"""External access through the SNI gateway, without a cluster: spec parsing, the gateway's builders,
the NetworkPolicy's door for it, and node certificates that carry the external name."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import pytest
from cryptography import x509

from pqmpc_node.crypto.pki import parse_certificate, verify_node_certificate
from pqmpc_operator import builders, gateway_builders, pool_pki
from pqmpc_operator.model import SpecError, parse_nodepool
from pqmpc_operator.settings import OperatorSettings, settings_from_env

from tests.operator.test_nodepool_pure import pool_body
from tests.operator.test_pool_pki import NOW, SUITE, csr_doc

SETTINGS = OperatorSettings()
GATEWAY = {"mode": "gateway", "domain": "banks.mpc.example.com"}


def pool(**access: Any) -> Any:
    return parse_nodepool(pool_body(externalAccess={**GATEWAY, **access}))


class TestSpec:
    def test_off_by_default(self) -> None:
        plain = parse_nodepool(pool_body())
        assert plain.external_access is None
        assert gateway_builders.build_gateway_children(plain, SETTINGS) == []
        assert gateway_builders.external_dns_names(plain, "banks-a-0") == ()

    def test_defaults(self) -> None:
        access = pool().external_access
        assert access is not None
        assert (access.mode, access.domain, access.service_type, access.port, access.node_port, access.replicas) == (
            "gateway", "banks.mpc.example.com", None, 443, None, 1)

    def test_trailing_dot_is_dropped(self) -> None:
        assert pool(domain="banks.example.com.").external_access.domain == "banks.example.com"  # type: ignore[union-attr]

    @pytest.mark.parametrize(("access", "field", "says"), [
        ({"domain": "*.banks.example.com"}, "externalAccess.domain", "no wildcard"),
        ({"domain": "Banks.Example.com"}, "externalAccess.domain", "no upper case"),
        ({"domain": "a" * 64 + ".com"}, "externalAccess.domain", "lower-case DNS name"),
        ({"domain": "x." * 95 + "com"}, "externalAccess.domain", "at most 189"),
        ({"domain": ""}, "externalAccess.domain", "is missing"),
        ({"mode": "ingress"}, "externalAccess.mode", "use gateway"),
        ({"service": {"type": "ExternalName"}}, "externalAccess.service.type", "LoadBalancer, NodePort"),
        ({"service": {"type": "ClusterIP", "nodePort": 30443}}, "externalAccess.service.nodePort", "ClusterIP"),
        ({"service": {"port": 70000}}, "externalAccess.service.port", "[1, 65535]"),
        ({"replicas": 0}, "externalAccess.replicas", "[1, 10]"),
        ({"service": {"annotations": {"a": 1}}}, "externalAccess.service.annotations", "map of strings"),
    ])
    def test_refusals_name_the_field(self, access: dict[str, Any], field: str, says: str) -> None:
        with pytest.raises(SpecError) as exc:
            pool(**access)
        assert exc.value.field_path == field
        assert says in str(exc.value)


class TestBuilders:
    def test_children_in_apply_order_owned_by_the_pool(self) -> None:
        p = pool()
        children = gateway_builders.build_gateway_children(p, SETTINGS)
        assert [c["kind"] for c in children] == ["ServiceAccount", "Role", "RoleBinding", "Deployment", "Service"]
        for child in children:
            assert child["metadata"]["name"] == "banks-gateway"
            assert child["metadata"]["namespace"] == "ns"
            assert child["metadata"]["ownerReferences"] == [builders.owner_reference(p)]
            # Never the node label: the pool's node selectors (pods, PDB, headless Service, policy) miss the gateway.
            assert child["metadata"]["labels"]["app.kubernetes.io/name"] == "pqmpc-gateway"

    def test_role_reads_pods_only(self) -> None:
        role = gateway_builders.build_gateway_role(pool())
        assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
        binding = gateway_builders.build_gateway_role_binding(pool())
        assert binding["roleRef"]["name"] == "banks-gateway"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "banks-gateway", "namespace": "ns"}]

    def test_deployment(self) -> None:
        settings = settings_from_env({"PQMPC_GATEWAY_COMMAND": "/opt/py -m pqmpc_node.gateway",
                                      "PQMPC_NODE_IMAGE": "reg.example/pqmpc:1"})
        dep = gateway_builders.build_gateway_deployment(pool(replicas=2), settings)
        spec = dep["spec"]
        assert spec["replicas"] == 2
        assert spec["selector"]["matchLabels"] == builders.gateway_selector("banks")
        assert spec["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "pqmpc-gateway"
        pod = spec["template"]["spec"]
        assert pod["serviceAccountName"] == "banks-gateway"
        (c,) = pod["containers"]
        assert c["image"] == "reg.example/pqmpc:1"
        assert c["command"] == ["/opt/py", "-m", "pqmpc_node.gateway"]
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
        assert env["PQMPC_GATEWAY_POOL"] == "banks"
        assert env["PQMPC_GATEWAY_DOMAIN"] == "banks.mpc.example.com"
        assert env["PQMPC_GATEWAY_API_PORT"] == str(settings.api_port)
        assert env["PQMPC_GATEWAY_LISTEN"] == f"$(PQMPC_GATEWAY_POD_IP):{gateway_builders.GATEWAY_PORT}"
        assert env["PQMPC_GATEWAY_POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert env["PQMPC_GATEWAY_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
        assert c["ports"] == [{"name": "tls", "containerPort": gateway_builders.GATEWAY_PORT, "protocol": "TCP"}]
        assert c["readinessProbe"]["tcpSocket"] == {"port": "tls"}
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert "volumes" not in pod  # no secret, no key: TLS passes through

    def test_service_type_from_the_pool_else_the_operator(self) -> None:
        svc = gateway_builders.build_gateway_service(pool(), SETTINGS)
        assert svc["spec"]["type"] == "LoadBalancer"
        assert svc["spec"]["ports"] == [{"name": "tls", "port": 443, "targetPort": "tls", "protocol": "TCP"}]
        assert svc["spec"]["selector"] == builders.gateway_selector("banks")
        node_port = settings_from_env({"PQMPC_GATEWAY_SERVICE_TYPE": "NodePort"})
        assert gateway_builders.build_gateway_service(pool(), node_port)["spec"]["type"] == "NodePort"
        chosen = gateway_builders.build_gateway_service(
            pool(service={"type": "NodePort", "port": 8443, "nodePort": 30443,
                          "annotations": {"lb.example/mode": "tcp"}}), SETTINGS)
        assert chosen["spec"]["type"] == "NodePort"
        assert chosen["spec"]["ports"][0]["nodePort"] == 30443 and chosen["spec"]["ports"][0]["port"] == 8443
        assert chosen["metadata"]["annotations"] == {"lb.example/mode": "tcp"}

    def test_bad_service_type_setting_is_refused(self) -> None:
        with pytest.raises(ValueError, match="PQMPC_GATEWAY_SERVICE_TYPE"):
            settings_from_env({"PQMPC_GATEWAY_SERVICE_TYPE": "Ingress"})

    def test_network_policy_admits_the_gateway_to_the_api_port_only_when_asked(self) -> None:
        def gateway_rules(p: Any) -> list[dict[str, Any]]:
            policy = builders.build_network_policy(p, SETTINGS)
            return [r for r in policy["spec"]["ingress"]
                    if any(f.get("podSelector", {}).get("matchLabels") == builders.gateway_selector("banks")
                           for f in r["from"])]
        assert gateway_rules(parse_nodepool(pool_body())) == []
        (rule,) = gateway_rules(pool())
        assert rule["ports"] == [{"protocol": "TCP", "port": SETTINGS.api_port}]

    def test_node_pods_unchanged_by_external_access(self) -> None:
        """The SAN is the operator's to add: turning external access on does not roll the node pods."""
        plain, gated = parse_nodepool(pool_body()), pool()
        assert builders.template_hash(plain, plain.groups[0], SETTINGS) == builders.template_hash(
            gated, gated.groups[0], SETTINGS)


def test_node_certificate_carries_the_external_name() -> None:
    p = pool()
    pki = pool_pki.new_pool_pki("banks", SUITE, now=NOW, rng=os.urandom)
    internal = builders.node_dns_name(p, "banks-a-0")
    issued = pool_pki.certify_node(pki, csr_doc("banks-a-0", internal), pod_name="banks-a-0",
                                   expected_dns_name=internal,
                                   external_dns_names=gateway_builders.external_dns_names(p, "banks-a-0"),
                                   now=NOW, lifetime=dt.timedelta(hours=24), rng=os.urandom)
    cert = parse_certificate(issued.certificate_der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [internal, "banks-a-0.banks.mpc.example.com"]
    verified = verify_node_certificate(cert, ca_certificate=pki.ca.certificate, suite=SUITE,
                                       now=NOW + dt.timedelta(minutes=1), expected_node_ids=None, log=None)
    assert verified.node_id == "banks-a-0"
    assert "banks-a-0.banks.mpc.example.com" in verified.dns_names
