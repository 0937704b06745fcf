"""Pure resolution of a container's environment, like kubelet does it.

Literal values with ``$(VAR)`` expansion, ``valueFrom`` (downward-API ``fieldRef``,
``secretKeyRef``, ``configMapKeyRef``, ``resourceFieldRef``), ``envFrom`` and the
``KUBERNETES_SERVICE_*`` variables. Secrets and ConfigMaps come from injected lookups,
so this module does no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["ContainerConfigError", "Lookup", "command_line", "expand", "field_value", "resolve_env"]

Lookup = Callable[[str], "Mapping[str, str] | None"]
"""Name → decoded data of a Secret or ConfigMap in the pod's namespace, or None if absent."""


class ContainerConfigError(ValueError):
    """The container cannot start (kubelet's CreateContainerConfigError)."""


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined variables are replaced, ``$$`` escapes, the rest stays."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR.sub(repl, text)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """The value of a downward-API ``fieldPath`` for ``pod``."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    status = pod.get("status", {})
    simple: dict[str, object] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    if path in ("status.podIPs", "status.hostIPs"):
        return ",".join(ip.get("ip", "") for ip in status.get(path.split(".")[1]) or [])
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    match = _LABEL_REF.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise ContainerConfigError(f"unsupported downward-API fieldPath {path!r}")


def _resource_value(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    kind, _, name = str(ref.get("resource", "")).partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(name)
    return str(value) if value is not None else "0"


def _keyed(kind: str, ref: Mapping[str, Any], lookup: Lookup) -> str | None:
    data = lookup(ref.get("name", ""))
    optional = bool(ref.get("optional"))
    if data is None:
        if optional:
            return None
        raise ContainerConfigError(f'{kind} "{ref.get("name")}" not found')
    key = ref.get("key", "")
    if key not in data:
        if optional:
            return None
        raise ContainerConfigError(f"couldn't find key {key} in {kind} {ref.get('name')}")
    return data[key]


def resolve_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    secrets: Lookup,
    config_maps: Lookup,
    base: Mapping[str, str],
    service_env: Mapping[str, str],
) -> dict[str, str]:
    """The container's full environment: ``base`` (PATH, HOME …), service variables, envFrom, env."""
    env: dict[str, str] = dict(base)
    env.update(service_env)
    env.setdefault("HOSTNAME", pod.get("metadata", {}).get("name", ""))
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, ref_key, lookup in (("configmap", "configMapRef", config_maps), ("secret", "secretRef", secrets)):
            ref = source.get(ref_key)
            if ref is None:
                continue
            data = lookup(ref.get("name", ""))
            if data is None:
                if not ref.get("optional"):
                    raise ContainerConfigError(f'{kind} "{ref.get("name")}" not found')
                continue
            env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        name = var["name"]
        source = var.get("valueFrom")
        if source is None:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        value: str | None
        if "fieldRef" in source:
            value = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source:
            value = _keyed("secret", source["secretKeyRef"], secrets)
        elif "configMapKeyRef" in source:
            value = _keyed("configmap", source["configMapKeyRef"], config_maps)
        elif "resourceFieldRef" in source:
            value = _resource_value(container, source["resourceFieldRef"])
        else:
            raise ContainerConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")
        if value is not None:
            env[name] = value
    return env


def command_line(container: Mapping[str, Any], env: Mapping[str, str]) -> Sequence[str]:
    """command + args with ``$(VAR)`` expanded; the local agent has no image entrypoint to fall back on."""
    command = list(container.get("command") or [])
    if not command:
        raise ContainerConfigError(
            f"container {container.get('name')!r} has no command; the local node agent cannot run an "
            "image's entrypoint, so give the container an explicit command"
        )
    return [expand(str(part), env) for part in command + list(container.get("args") or [])]
