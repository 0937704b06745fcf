"""An OCI image layout read and checked by hand (no umoci, no skopeo): the image tests use it
to judge what ``scripts/build-image.sh`` wrote with umoci.

Checks what a registry push or ``podman load`` relies on (image-spec v1.1): ``oci-layout``,
``index.json`` naming the tag, every descriptor's blob present with that sha256 and size,
the media types, ``rootfs.diff_ids`` equal to the sha256 of each uncompressed layer. Then
unpacks the layers in order into a folder, applying whiteouts, as a container runtime does.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


class LayoutError(ValueError):
    """The layout breaks the image spec: the message says where."""


@dataclass(frozen=True)
class Image:
    layout: Path
    manifest_digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def layers(self) -> list[Path]:
        return [blob_path(self.layout, d["digest"]) for d in self.manifest["layers"]]


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or len(hexdigest) != 64:
        raise LayoutError(f"not a sha256 digest: {digest!r}")
    return layout / "blobs" / algorithm / hexdigest


def _sha256(path: Path, *, gunzip: bool = False) -> str:
    h = hashlib.sha256()
    with (gzip.open(path, "rb") if gunzip else path.open("rb")) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _verified_blob(layout: Path, descriptor: dict[str, Any], media_type: str) -> Path:
    if descriptor.get("mediaType") != media_type:
        raise LayoutError(f"{descriptor.get('digest')}: media type {descriptor.get('mediaType')!r}, not {media_type}")
    path = blob_path(layout, descriptor["digest"])
    if not path.is_file():
        raise LayoutError(f"blob {descriptor['digest']} is missing")
    if path.stat().st_size != descriptor["size"]:
        raise LayoutError(f"blob {descriptor['digest']}: {path.stat().st_size} bytes, descriptor says {descriptor['size']}")
    if _sha256(path) != descriptor["digest"]:
        raise LayoutError(f"blob {descriptor['digest']}: content does not hash to its name")
    return path


def read_image(layout: Path, tag: str) -> Image:
    """The image tagged ``tag``, every blob it names verified; :class:`LayoutError` otherwise."""
    if json.loads((layout / "oci-layout").read_text()) != {"imageLayoutVersion": "1.0.0"}:
        raise LayoutError("oci-layout is not imageLayoutVersion 1.0.0")
    index = json.loads((layout / "index.json").read_text())
    if index.get("schemaVersion") != 2:
        raise LayoutError("index.json schemaVersion is not 2")
    tagged = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
    if len(tagged) != 1:
        raise LayoutError(f"index.json names tag {tag!r} {len(tagged)} times")
    manifest = json.loads(_verified_blob(layout, tagged[0], MANIFEST).read_text())
    if manifest.get("schemaVersion") != 2:
        raise LayoutError("manifest schemaVersion is not 2")
    config = json.loads(_verified_blob(layout, manifest["config"], CONFIG).read_text())
    layers = [_verified_blob(layout, d, LAYER_GZIP) for d in manifest["layers"]]
    diff_ids = [_sha256(p, gunzip=True) for p in layers]
    if config.get("rootfs") != {"type": "layers", "diff_ids": diff_ids}:
        raise LayoutError(f"config rootfs.diff_ids {config.get('rootfs')} != the layers' {diff_ids}")
    return Image(layout, tagged[0]["digest"], manifest, config)


def referenced_blobs(image: Image) -> set[Path]:
    descriptors = [image.manifest["config"], *image.manifest["layers"]]
    return {blob_path(image.layout, image.manifest_digest)} | {blob_path(image.layout, d["digest"]) for d in descriptors}


def unpack(image: Image, rootfs: Path) -> None:
    """Extract the layers in order into ``rootfs``, applying whiteouts (``.wh.name`` removes
    ``name`` from the layers below, ``.wh..wh..opq`` empties its folder). Owners are kept
    when run as root. The layers are this project's own build, so extraction trusts them."""
    rootfs.mkdir(parents=True, exist_ok=True)
    for layer in image.layers:
        with tarfile.open(layer, "r:gz") as tar:
            members = []
            for member in tar.getmembers():
                parent, _, name = member.name.rpartition("/")
                target = rootfs / parent
                if name == ".wh..wh..opq":
                    for child in target.iterdir() if target.is_dir() else []:
                        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
                elif name.startswith(".wh."):
                    gone = target / name.removeprefix(".wh.")
                    shutil.rmtree(gone) if gone.is_dir() and not gone.is_symlink() else gone.unlink(missing_ok=True)
                else:
                    members.append(member)
            tar.extractall(rootfs, members=members, numeric_owner=True, filter="fully_trusted")
