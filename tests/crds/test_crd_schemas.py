"""The NodePool and MPCSession CRDs offline: they parse, their schemas are structural
and bounded (so CEL rules stay within the API server's cost budget), every CEL rule
says what is wrong, and the examples validate against them."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS = {
    "NodePool": REPO / "crds" / "nodepools.pqmpc.io.yaml",
    "MPCSession": REPO / "crds" / "mpcsessions.pqmpc.io.yaml",
}
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def load_crd(kind: str) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRDS[kind].read_text())
    return crd


def schema_of(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = load_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its field path (``[]`` for array items, ``{}`` for map values)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def validator(kind: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(schema_of(kind))


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_crd_names_and_version(kind: str) -> None:
    crd = load_crd(kind)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    spec = crd["spec"]
    assert spec["group"] == "pqmpc.io"
    assert spec["scope"] == "Namespaced"
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.pqmpc.io"
    assert spec["names"]["kind"] == kind
    assert spec["names"]["categories"] == ["pqmpc", "all"]
    assert [v["name"] for v in spec["versions"]] == ["v1alpha1"]
    assert spec["versions"][0]["served"] and spec["versions"][0]["storage"]
    assert spec["versions"][0]["subresources"]["status"] == {}


def test_short_names() -> None:
    assert load_crd("NodePool")["spec"]["names"]["shortNames"] == ["mpcpool"]
    assert load_crd("MPCSession")["spec"]["names"]["shortNames"] == ["mpcs"]


def test_nodepool_scale_subresource_points_at_total_replicas() -> None:
    version = load_crd("NodePool")["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    props = version["schema"]["openAPIV3Schema"]["properties"]
    assert props["spec"]["properties"]["replicas"]["type"] == "integer"
    assert "distributes" in props["spec"]["properties"]["replicas"]["description"]
    assert props["status"]["properties"]["selector"]["type"] == "string"


@pytest.mark.parametrize(
    ("kind", "columns"),
    [
        ("NodePool", {"Ready", "Replicas", "Status", "Suite", "Age"}),
        ("MPCSession", {"Phase", "Pool", "Parties", "Threshold", "Inputs", "Reason", "Age"}),
    ],
)
def test_printer_columns(kind: str, columns: set[str]) -> None:
    printed = load_crd(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
    assert columns <= {c["name"] for c in printed}
    for column in printed:
        assert column["jsonPath"].startswith(".")


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_schema_is_structural(kind: str) -> None:
    """Every level has a type, or explicitly preserves unknown fields; no $ref, no anyOf at the top."""
    for path, node in walk(schema_of(kind)):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields") is True, path
        assert "$ref" not in node, path
        if node.get("type") == "object" and path not in ("", ".metadata"):
            has_shape = "properties" in node or "additionalProperties" in node
            assert has_shape or node.get("x-kubernetes-preserve-unknown-fields") is True, path
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), path


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_spec_is_bounded_for_cel_cost(kind: str) -> None:
    """Every string, array and map in spec has a size bound, so CEL cost estimates stay finite."""
    spec = schema_of(kind)["properties"]["spec"]
    for path, node in walk(spec, ".spec"):
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, path


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_field_is_described(kind: str) -> None:
    for path, node in walk(schema_of(kind)):
        if path.endswith(("[]", "{}")) or path in ("", ".metadata"):
            continue
        assert node.get("description"), f"{kind}{path} has no description"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_cel_rule_explains_itself(kind: str) -> None:
    rules = [(path, r) for path, node in walk(schema_of(kind)) for r in node.get("x-kubernetes-validations", [])]
    assert len(rules) >= 4
    for path, rule in rules:
        text = rule.get("message") or rule.get("messageExpression")
        assert text, f"{kind}{path}: rule {rule['rule']!r} has no message"
        # What is wrong (names a field) and what to do (an instruction after ';' or a sentence).
        assert "spec." in text or "metadata." in text or "bins" in text, (path, text)
        assert any(w in text for w in ("; ", "choose", "use ")), (path, text)


def test_required_cel_rules_are_present() -> None:
    pool_rules = " ".join(r["rule"] for _, n in walk(schema_of("NodePool")) for r in n.get("x-kubernetes-validations", []))
    assert "exists_one(h, h.name == g.name)" in pool_rules
    assert "duration(self.renewBefore) < duration(self.duration)" in pool_rules
    assert "isCIDR(self)" in pool_rules
    session_rules = " ".join(r["rule"] for _, n in walk(schema_of("MPCSession")) for r in n.get("x-kubernetes-validations", []))
    assert "self.threshold < self.parties" in session_rules
    assert "2 * self.threshold < self.parties" in session_rules
    assert ".size() == 1" in session_rules
    assert "self == oldSelf" in session_rules


def test_session_spec_is_immutable_except_ttl() -> None:
    spec = schema_of("MPCSession")["properties"]["spec"]
    for name, node in spec["properties"].items():
        rules = [r["rule"] for r in node.get("x-kubernetes-validations", [])]
        if name == "ttlSecondsAfterFinished":
            assert "self == oldSelf" not in rules
        else:
            assert "self == oldSelf" in rules, f"spec.{name} is not immutable"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_against_its_schema(example: Path) -> None:
    body = yaml.safe_load(example.read_text())
    assert body["apiVersion"] == "pqmpc.io/v1alpha1"
    validator(body["kind"]).validate(body)


def test_demo_pool_example_is_three_banks_in_two_regions() -> None:
    pool = yaml.safe_load((REPO / "examples" / "nodepool.yaml").read_text())
    assert pool["metadata"]["name"] == "banks"
    groups = pool["spec"]["groups"]
    assert len(groups) == 3
    assert len({g["trustDomain"] for g in groups}) == 3
    assert len({g["region"] for g in groups}) == 2
    assert all(g["replicas"] == 1 and g["gpus"] == 0 for g in groups)


def test_example_sessions_cover_locality_and_mlp() -> None:
    stats = yaml.safe_load((REPO / "examples" / "mpcsession-fraud-stats.yaml").read_text())
    assert all(i["locality"]["regions"] == ["eu-west"] for i in stats["spec"]["inputs"])
    mlp = yaml.safe_load((REPO / "examples" / "mpcsession-mlp.yaml").read_text())
    assert "mlp" in mlp["spec"]["program"]


@pytest.mark.parametrize(
    ("kind", "mutate", "where"),
    [
        ("NodePool", lambda b: b["spec"]["groups"][0].update(name="Bank_A"), "name"),
        ("NodePool", lambda b: b["spec"]["groups"][0].update(gpus=9), "gpus"),
        ("NodePool", lambda b: b["spec"]["engine"].update(backend="tpu"), "backend"),
        ("NodePool", lambda b: b["spec"]["keys"]["rotation"].update(duration="1d"), "duration"),
        ("MPCSession", lambda b: b["spec"].update(parties=65), "parties"),
        ("MPCSession", lambda b: b["spec"]["outputs"][0]["allow"].append("avg(amount)"), "allow"),
        ("MPCSession", lambda b: b["spec"].update(sharing="replicated"), "sharing"),
    ],
)
def test_schema_rejects_out_of_bounds_values(kind: str, mutate: Any, where: str) -> None:
    """The offline schema check is not vacuous: bounds, enums and patterns bite."""
    path = "nodepool.yaml" if kind == "NodePool" else "mpcsession-fraud-stats.yaml"
    body = copy.deepcopy(yaml.safe_load((REPO / "examples" / path).read_text()))
    mutate(body)
    errors = list(validator(kind).iter_errors(body))
    assert errors
    assert any(where in [str(p) for p in e.absolute_path] for e in errors)
