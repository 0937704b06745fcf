#!/usr/bin/env python3
"""Generate docs/crd-reference.md from the CRD schemas in crds/.

    python scripts/gen-crd-docs.py            # print the reference
    python scripts/gen-crd-docs.py --write    # rewrite docs/crd-reference.md
    python scripts/gen-crd-docs.py --check    # exit 1 if docs/crd-reference.md is stale

The schemas are the single source of truth: descriptions, defaults, bounds and CEL
rules all come from them, so the reference cannot drift from what the API server
enforces (tests/crds checks the committed file against this script's output).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CRD_FILES = ("nodepools.pqmpc.io.yaml", "mpcsessions.pqmpc.io.yaml")
OUTPUT = REPO / "docs" / "crd-reference.md"

Schema = dict[str, Any]


def cell(text: object) -> str:
    """One Markdown table cell: a single line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def code(text: object) -> str:
    return f"`{text}`"


def type_of(node: Schema) -> str:
    kind = node.get("type")
    if kind == "array":
        return "[]" + type_of(node.get("items", {}))
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return "map[string]" + type_of(node["additionalProperties"])
    if kind == "object" and "properties" not in node and node.get("x-kubernetes-preserve-unknown-fields"):
        return "object (free-form)"
    if kind is None and node.get("x-kubernetes-preserve-unknown-fields"):
        return "any"
    return str(kind) + (f" ({node['format']})" if "format" in node else "")


def constraints_of(node: Schema, required: bool) -> str:
    parts: list[str] = ["required"] if required else []
    if "enum" in node:
        parts.append("one of " + ", ".join(code(v) for v in node["enum"]))
    for key, label in (("minimum", "≥"), ("maximum", "≤")):
        if key in node:
            parts.append(f"{label} {node[key]}")
    for key, label in (
        ("minLength", "min length"), ("maxLength", "max length"),
        ("minItems", "min items"), ("maxItems", "max items"), ("maxProperties", "max keys"),
    ):
        if key in node:
            parts.append(f"{label} {node[key]}")
    if "pattern" in node:
        parts.append("pattern " + code(node["pattern"]))
    if node.get("format") == "byte":
        parts.append("base64")
    if node.get("x-kubernetes-list-type") == "map":
        parts.append("list keyed by " + ", ".join(node["x-kubernetes-list-map-keys"]))
    if any(r["rule"] == "self == oldSelf" for r in node.get("x-kubernetes-validations", [])):
        parts.append("immutable")
    return "; ".join(parts)


def default_of(node: Schema) -> str:
    if "default" not in node:
        return ""
    return code(yaml.safe_dump(node["default"], default_flow_style=True).strip().removesuffix("...").strip())


def walk(node: Schema, path: str, required: bool = False) -> Iterator[tuple[str, Schema, bool]]:
    """Every field below node, depth first in schema order; ``[]`` marks array items."""
    yield path, node, required
    needed = set(node.get("required", []))
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}", name in needed)
    items = node.get("items")
    if isinstance(items, dict) and "properties" in items:
        needed_items = set(items.get("required", []))
        for name, child in items["properties"].items():
            yield from walk(child, f"{path}[].{name}", name in needed_items)


def rules(node: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    """Every CEL rule with the path of the schema node that carries it."""
    for rule in node.get("x-kubernetes-validations", []):
        yield path or "(root)", rule
    for name, child in node.get("properties", {}).items():
        yield from rules(child, f"{path}.{name}".lstrip("."))
    items = node.get("items")
    if isinstance(items, dict):
        yield from rules(items, f"{path}[]")


def render_crd(crd: Schema) -> list[str]:
    spec = crd["spec"]
    names = spec["names"]
    version = spec["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    subresources = version.get("subresources", {})
    lines = [
        f"## {names['kind']}",
        "",
        cell(schema.get("description", "")),
        "",
        f"- API: `{spec['group']}/{version['name']}`, kind `{names['kind']}`, {spec['scope'].lower()}",
        f"- Names: `{names['plural']}`, `{names['singular']}`, short names "
        + ", ".join(code(s) for s in names.get("shortNames", []))
        + "; categories " + ", ".join(code(c) for c in names.get("categories", [])),
        "- Subresources: " + ", ".join(sorted(subresources)),
    ]
    if "scale" in subresources:
        scale = subresources["scale"]
        lines.append(
            f"- Scale: spec replicas `{scale['specReplicasPath']}`, status replicas "
            f"`{scale['statusReplicasPath']}`, selector `{scale.get('labelSelectorPath', '')}`"
        )
    lines += ["", "### Printer columns", "", "| Column | Type | JSONPath | Wide only |", "|---|---|---|---|"]
    for column in version.get("additionalPrinterColumns", []):
        wide = "yes" if column.get("priority", 0) > 0 else ""
        lines.append(f"| {column['name']} | {column['type']} | {cell(code(column['jsonPath']))} | {wide} |")
    for part in ("metadata", "spec", "status"):
        node = schema["properties"].get(part, {})
        fields = [f for f in walk(node, part) if f[0] != part]
        if not fields:
            continue
        lines += ["", f"### {part}", "", "| Field | Type | Default | Constraints | Description |", "|---|---|---|---|---|"]
        for path, child, required in fields:
            lines.append(
                f"| {code(path)} | {cell(type_of(child))} | {cell(default_of(child))} | "
                f"{cell(constraints_of(child, required))} | {cell(child.get('description', ''))} |"
            )
    lines += ["", "### Validation rules (CEL)", "", "| On | Rule | Message |", "|---|---|---|"]
    for path, rule in rules(schema, ""):
        message = rule.get("message") or "(computed) " + rule.get("messageExpression", "")
        lines.append(f"| {code(path)} | {cell(code(' '.join(rule['rule'].split())))} | {cell(message)} |")
    return lines


def render(crd_dir: Path = REPO / "crds") -> str:
    """The whole reference as Markdown."""
    lines = [
        "# CRD reference",
        "",
        "<!-- Generated by scripts/gen-crd-docs.py from crds/*.yaml; do not edit by hand.",
        "     Regenerate with: python scripts/gen-crd-docs.py --write -->",
        "",
        "Every field of the pqmpc custom resources, with its defaults, bounds and the CEL",
        "rules the API server enforces at admission. `[]` marks the items of a list.",
        "",
    ]
    for name in CRD_FILES:
        lines += render_crd(yaml.safe_load((crd_dir / name).read_text(encoding="utf-8")))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"rewrite {OUTPUT.relative_to(REPO)}")
    mode.add_argument("--check", action="store_true", help="exit 1 if the committed reference is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        OUTPUT.write_text(text, encoding="utf-8")
    elif args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT.relative_to(REPO)} is stale; run: python scripts/gen-crd-docs.py --write", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
