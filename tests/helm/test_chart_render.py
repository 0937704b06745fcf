"""The Helm chart offline: lint, render, validate against Kubernetes 1.35 schemas, single sources.

Covers: ``helm lint --strict``; the rendered objects and their hardening (non-root,
read-only root filesystem, kopf liveness probe, resources, one replica with Recreate);
the operator's environment parsed by the operator's own settings code; the ClusterRole
equal to ``deploy/operator-clusterrole.yaml``; CRDs and alert rules identical to their
sources; monitoring objects only where ``monitoring.coreos.com/v1`` is served;
``values.schema.json`` refusing bad values; offline validation with kubernetes-validate.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from chart_helpers import CHART, KUBE_VERSION, REPO, by_kind, load_manifests, one
from pqmpc_operator.builders import build_node_pod
from pqmpc_operator.model import parse_nodepool
from pqmpc_operator.settings import OperatorSettings, settings_from_env

Render = Callable[..., list[dict[str, Any]]]
Helm = Callable[..., subprocess.CompletedProcess[str]]

CORE_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment", "ConfigMap",
              "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return dict(pod["containers"][0])


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


# --- single sources -----------------------------------------------------------------

def test_chart_copies_match_their_sources() -> None:
    result = subprocess.run([sys.executable, str(REPO / "helm" / "sync-chart-files.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    sources = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    assert sources and sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == sources
    for name in sources:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), name


def test_sync_check_reports_a_drifted_copy(tmp_path: Path) -> None:
    # The checker itself must notice drift: run it on a copy of the repo's relevant parts.
    fake = tmp_path / "repo"
    for part in ("crds", "deploy", "helm"):
        shutil.copytree(REPO / part, fake / part)
    rules = fake / "helm" / "pqmpc" / "files" / "operator-clusterrole-rules.yaml"
    rules.write_text(rules.read_text().replace('"watch"', '"watch", "delete"', 1))
    result = subprocess.run([sys.executable, str(fake / "helm" / "sync-chart-files.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "operator-clusterrole-rules.yaml" in result.stderr


def test_cluster_role_rules_equal_the_deployed_role(render: Render) -> None:
    deployed = yaml.safe_load((REPO / "deploy" / "operator-clusterrole.yaml").read_text())
    role = one(render(), "ClusterRole")
    assert role["rules"] == deployed["rules"]
    assert role["metadata"]["labels"]["app.kubernetes.io/name"] == "pqmpc-operator"


def test_prometheus_rule_renders_the_alert_file(render: Render, tmp_path: Path) -> None:
    alerts = yaml.safe_load((REPO / "deploy" / "prometheus" / "pqmpc-alerts.yaml").read_text())
    rule = one(render(monitoring=True), "PrometheusRule")
    assert rule["spec"] == alerts
    # The rendered spec is a valid rule file too (no templating mangled the annotations).
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make prometheus)")
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


# --- lint, kinds, validation ---------------------------------------------------------

def test_lint_strict(helm: Helm) -> None:
    result = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION)
    assert "0 chart(s) failed" in result.stdout
    # Lint applies the values schema: a bad value fails it.
    bad = helm("lint", "--strict", str(CHART), "--set", "operator.livenessPort=0", check=False)
    assert bad.returncode != 0 and "livenessPort" in bad.stdout + bad.stderr


def test_monitoring_objects_only_where_the_api_exists(render: Render) -> None:
    kinds = {d["kind"] for d in render()}
    assert kinds == CORE_KINDS | {"CustomResourceDefinition"}
    kinds = {d["kind"] for d in render(monitoring=True)}
    assert kinds == CORE_KINDS | MONITORING_KINDS | {"CustomResourceDefinition"}
    off = {d["kind"] for d in render("metrics.serviceMonitor.enabled=false", "metrics.prometheusRule.enabled=false",
                                     "metrics.nodePodMonitor.enabled=false", monitoring=True)}
    assert not off & MONITORING_KINDS


@pytest.mark.parametrize("monitoring", [False, True])
def test_rendered_manifests_validate_offline(render: Render, monitoring: bool) -> None:
    for doc in render(monitoring=monitoring):
        if doc["kind"] in MONITORING_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        # Strict: unknown fields are errors, as with kubectl's server-side field validation.
        assert kubernetes_validate.validate(doc, KUBE_VERSION, strict=True) == KUBE_VERSION.rsplit(".", 1)[0]


def test_kubernetes_validate_would_catch_a_bad_field(render: Render) -> None:
    deployment = one(render(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["prot"] = "health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_rendered_yaml_has_no_duplicate_keys() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate keys"):
        load_manifests("metadata:\n  labels:\n    a: '1'\n    a: '2'\n")


# --- the operator Deployment ------------------------------------------------------------

def test_deployment_is_hardened(render: Render) -> None:
    docs = render()
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    c = container(docs)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    scratch = {m["mountPath"] for m in c["volumeMounts"]}
    assert scratch == {env_of(c)["TMPDIR"]}
    sa = one(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


def test_liveness_probe_is_kopfs_endpoint(render: Render) -> None:
    c = container(render("operator.livenessPort=18080"))
    probe = c["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports[probe["port"]] == 18080
    assert env_of(c)["PQMPC_LIVENESS_PORT"] == "18080"


def test_environment_parses_with_the_operators_settings(render: Render) -> None:
    c = container(render("image.tag=1.2.3", "operator.resyncSeconds=7", "operator.metricsPort=19090",
                         "node.apiPort=18443"))
    assert c["command"] == ["python", "-m", "pqmpc_operator"]
    assert c["image"] == "ghcr.io/pqmpc/pqmpc:1.2.3"
    settings = settings_from_env(env_of(c))
    assert settings == OperatorSettings(
        default_image="ghcr.io/pqmpc/pqmpc:1.2.3", node_command=("python", "-m", "pqmpc_node"), api_port=18443,
        peer_port=9443, resync_seconds=7.0, liveness_port=8080, metrics_port=19090,
        preprocessing_limit=32 << 20,  # one deal stays inside the operator's 512Mi memory limit
    )
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == settings.metrics_port


def test_the_deal_limit_reaches_the_operators_settings(render: Render) -> None:
    """operator.dealLimitBytes: what the operator deals at most (a larger session fails before dealing)."""
    assert settings_from_env(env_of(container(render()))).preprocessing_limit == 32 << 20
    c = container(render("operator.dealLimitBytes=268435456", "operator.resources.limits.memory=3Gi"))
    assert settings_from_env(env_of(c)).preprocessing_limit == 256 << 20


def test_node_image_defaults_to_the_operator_image_and_can_differ(render: Render) -> None:
    assert env_of(container(render()))["PQMPC_NODE_IMAGE"] == "ghcr.io/pqmpc/pqmpc:0.1.0"
    c = container(render("node.image=registry.example/pqmpc-gpu:0.1.0"))
    assert env_of(c)["PQMPC_NODE_IMAGE"] == "registry.example/pqmpc-gpu:0.1.0"


def test_gateway_values_reach_the_operators_settings(render: Render) -> None:
    """gateway.serviceType and gateway.command: the SNI gateway of pools with spec.externalAccess."""
    default = settings_from_env(env_of(container(render())))
    assert default.gateway_service_type == "LoadBalancer"
    assert default.gateway_command == ("python", "-m", "pqmpc_node.gateway")
    chosen = settings_from_env(env_of(container(render("gateway.serviceType=NodePort",
                                                       "gateway.command={/opt/pqmpc/bin/python,-m,pqmpc_node.gateway}"))))
    assert chosen.gateway_service_type == "NodePort"
    assert chosen.gateway_command == ("/opt/pqmpc/bin/python", "-m", "pqmpc_node.gateway")


def test_watch_namespaces_become_flags(render: Render) -> None:
    assert "args" not in container(render())
    c = container(render("operator.watchNamespaces={team-a,team-b}", "operator.verbose=true"))
    assert c["args"] == ["--namespace=team-a", "--namespace=team-b", "--verbose"]


def test_operator_pods_carry_the_labels_node_network_policies_admit(render: Render) -> None:
    labels = one(render(), "Deployment")["spec"]["template"]["metadata"]["labels"]
    for key, value in OperatorSettings().operator_pod_labels().items():
        assert labels[key] == value


def test_metrics_service_selects_the_operator_pod(render: Render) -> None:
    docs = render()
    service = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"].endswith("-metrics"))
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    monitor = one(render(monitoring=True), "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    # The operator's series name the session's own namespace: the scrape must not overwrite it.
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


def test_bootstrap_service_reaches_the_operators_bootstrap_port(render: Render) -> None:
    """Nodes push their CSR to PQMPC_BOOTSTRAP_URL: by default this Service, on the operator's named port."""
    docs = render()
    service = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"].endswith("-bootstrap"))
    deployment = one(docs, "Deployment")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] == "bootstrap" and ports["bootstrap"] == 8444
    settings = settings_from_env(env_of(c))
    assert settings.bootstrap_url == f"https://{service['metadata']['name']}.pqmpc-system.svc:8444"
    assert settings.bootstrap_port == 8444


def test_node_pod_monitor_scrapes_the_nodes_metrics_port(render: Render) -> None:
    """The node API speaks PQ-TLS only; Prometheus scrapes the plain-HTTP metrics port the node pods name."""
    monitor = one(render(monitoring=True), "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "pqmpc-node"}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    pool = parse_nodepool(yaml.safe_load((REPO / "examples" / "nodepool.yaml").read_text()) | {
        "metadata": {"name": "banks", "namespace": "default", "uid": "u"}})
    pod = build_node_pod(pool, pool.groups[0], 0, OperatorSettings())
    assert "metrics" in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}


def test_binding_ties_the_role_to_the_service_account(render: Render) -> None:
    docs = render(namespace="ops")
    binding, role, sa = one(docs, "ClusterRoleBinding"), one(docs, "ClusterRole"), one(docs, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "ops"}]
    assert sa["metadata"]["namespace"] == "ops"


def test_release_scoped_names(render: Render) -> None:
    # Two releases never fight over a cluster-scoped ClusterRole.
    a = one(render(release="team-a"), "ClusterRole")["metadata"]["name"]
    b = one(render(release="team-b"), "ClusterRole")["metadata"]["name"]
    assert a != b


def test_rbac_and_service_account_can_be_brought_by_the_user(render: Render, helm: Helm) -> None:
    docs = render("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=my-sa")
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ServiceAccount")
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "my-sa"
    missing = helm("template", "x", str(CHART), "--set", "serviceAccount.create=false", check=False)
    assert missing.returncode != 0 and "serviceAccount.name is required" in missing.stderr


def test_dashboard_config_map(render: Render) -> None:
    cm = one(render(), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["pqmpc-dashboard.json"])
    assert dashboard == json.loads((CHART / "files" / "pqmpc-dashboard.json").read_text())
    assert dashboard["uid"] == "pqmpc-overview" and dashboard["panels"]
    assert not by_kind(render("dashboard.enabled=false"), "ConfigMap")


# --- values.schema.json ---------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    "operator.metricsPort=70000",
    "operator.unknownKey=1",
    "image.pullPolicy=Sometimes",
    "operator.watchNamespaces={Not_A_Namespace}",
    "metrics.serviceMonitor.interval=soon",
    "gateway.serviceType=Ingress",
])
def test_schema_refuses_bad_values(helm: Helm, bad: str) -> None:
    result = helm("template", "x", str(CHART), "--set", bad, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr or "schema" in result.stderr.lower()


def test_schema_is_draft7_and_closed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])
