"""Materialise a pod's volumes as files under its work directory, like kubelet.

Supported: secret, configMap, emptyDir, hostPath, downwardAPI and projected
(serviceAccountToken via an injected token minter, configMap, secret, downwardAPI) —
which covers the automounted ``kube-api-access-*`` volume. Calling
:func:`materialize_volumes` again refreshes every file atomically (token rotation,
changed Secrets).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pqmpc_local.podenv import ContainerConfigError, field_value

__all__ = ["BytesLookup", "MountSpec", "TokenMinter", "materialize_volumes", "mounts_for"]

BytesLookup = Callable[[str], "Mapping[str, bytes] | None"]
TokenMinter = Callable[[str | None, int], str]
"""(audience or None for the API server's, expirationSeconds) → a token bound to the pod."""


@dataclass(frozen=True)
class MountSpec:
    """One host path to appear at ``target`` inside the container."""

    source: Path
    target: str
    read_only: bool


def _write_file(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _keyed_files(
    kind: str, source: Mapping[str, Any], lookup: BytesLookup, default_mode: int
) -> dict[str, tuple[bytes, int]]:
    name = source.get("name") or source.get("secretName") or ""
    data = lookup(name)
    if data is None:
        if source.get("optional"):
            return {}
        raise ContainerConfigError(f'{kind} "{name}" not found (volume source)')
    items = source.get("items")
    if not items:
        return {key: (value, default_mode) for key, value in data.items()}
    files: dict[str, tuple[bytes, int]] = {}
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise ContainerConfigError(f"couldn't find key {item['key']} in {kind} {name}")
        files[item.get("path", item["key"])] = (data[item["key"]], int(item.get("mode", default_mode)))
    return files


def _downward_files(pod: Mapping[str, Any], source: Mapping[str, Any], default_mode: int) -> dict[str, tuple[bytes, int]]:
    files: dict[str, tuple[bytes, int]] = {}
    for item in source.get("items") or []:
        if "fieldRef" in item:
            value = field_value(pod, item["fieldRef"]["fieldPath"])
        else:
            raise ContainerConfigError(f"downwardAPI item {item.get('path')}: only fieldRef is supported locally")
        files[item["path"]] = (value.encode(), int(item.get("mode", default_mode)))
    return files


def _volume_files(
    pod: Mapping[str, Any],
    volume: Mapping[str, Any],
    *,
    secrets: BytesLookup,
    config_maps: BytesLookup,
    mint_token: TokenMinter,
) -> dict[str, tuple[bytes, int]]:
    if "secret" in volume:
        src = volume["secret"]
        return _keyed_files("secret", src, secrets, int(src.get("defaultMode", 0o644)))
    if "configMap" in volume:
        src = volume["configMap"]
        return _keyed_files("configmap", src, config_maps, int(src.get("defaultMode", 0o644)))
    if "downwardAPI" in volume:
        src = volume["downwardAPI"]
        return _downward_files(pod, src, int(src.get("defaultMode", 0o644)))
    if "projected" in volume:
        src = volume["projected"]
        mode = int(src.get("defaultMode", 0o644))
        files: dict[str, tuple[bytes, int]] = {}
        for part in src.get("sources") or []:
            if "serviceAccountToken" in part:
                tok = part["serviceAccountToken"]
                token = mint_token(tok.get("audience"), int(tok.get("expirationSeconds", 3607)))
                files[tok["path"]] = (token.encode(), mode)
            elif "configMap" in part:
                files.update(_keyed_files("configmap", part["configMap"], config_maps, mode))
            elif "secret" in part:
                files.update(_keyed_files("secret", part["secret"], secrets, mode))
            elif "downwardAPI" in part:
                files.update(_downward_files(pod, part["downwardAPI"], mode))
            else:
                raise ContainerConfigError(f"projected volume {volume['name']}: unsupported source {sorted(part)}")
        return files
    return {}


def materialize_volumes(
    pod: Mapping[str, Any],
    root: Path,
    *,
    secrets: BytesLookup,
    config_maps: BytesLookup,
    mint_token: TokenMinter,
) -> dict[str, Path]:
    """Write every volume of ``pod`` under ``root/<volume>``; returns volume name → host path."""
    paths: dict[str, Path] = {}
    for volume in pod.get("spec", {}).get("volumes") or []:
        name = volume["name"]
        if "hostPath" in volume:
            paths[name] = Path(volume["hostPath"]["path"])
            continue
        kinds = {"secret", "configMap", "emptyDir", "downwardAPI", "projected"}
        if not kinds.intersection(volume):
            raise ContainerConfigError(
                f"volume {name}: only {', '.join(sorted(kinds | {'hostPath'}))} volumes run locally"
            )
        target = root / name
        target.mkdir(parents=True, exist_ok=True)
        for rel, (data, mode) in _volume_files(
            pod, volume, secrets=secrets, config_maps=config_maps, mint_token=mint_token
        ).items():
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise ContainerConfigError(f"volume {name}: item path {rel!r} must be relative, without '..'")
            _write_file(target / rel, data, mode & 0o777)
        paths[name] = target
    return paths


def mounts_for(container: Mapping[str, Any], volumes: Mapping[str, Path]) -> list[MountSpec]:
    """The container's volumeMounts as host-path → mountPath pairs, parents before children."""
    mounts: list[MountSpec] = []
    for mount in container.get("volumeMounts") or []:
        name = mount["name"]
        if name not in volumes:
            raise ContainerConfigError(f"volumeMount {name!r} names no volume of the pod")
        source = volumes[name]
        if mount.get("subPath"):
            source = source / mount["subPath"]
        mounts.append(MountSpec(source=source, target=mount["mountPath"], read_only=bool(mount.get("readOnly"))))
    return sorted(mounts, key=lambda m: m.target.count("/"))
