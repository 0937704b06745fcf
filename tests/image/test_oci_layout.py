"""The hand-written OCI layout checker judges the real image (test_image_oci.py), so it must
itself refuse what is broken: a blob that does not hash to its name, a wrong size, a wrong
diff_id; and unpack must apply whiteouts the way a runtime does. Tiny layouts, made here."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from oci_layout import CONFIG, LAYER_GZIP, MANIFEST, REF_NAME, LayoutError, blob_path, read_image, unpack


def _put(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def _layer(files: dict[str, bytes | None]) -> bytes:
    """A tar of files (None: a folder)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def make_layout(root: Path, layers: list[dict[str, bytes | None]], *, diff_id_of: int | None = None) -> Path:
    layout = root / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    raw = [_layer(files) for files in layers]
    gz = [gzip.compress(r, mtime=0) for r in raw]
    diff_ids = ["sha256:" + hashlib.sha256(r).hexdigest() for r in raw]
    if diff_id_of is not None:
        diff_ids[diff_id_of] = "sha256:" + "0" * 64
    config = json.dumps({"os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "config": {"mediaType": CONFIG, "digest": _put(layout, config), "size": len(config)},
        "layers": [{"mediaType": LAYER_GZIP, "digest": _put(layout, g), "size": len(g)} for g in gz],
    }).encode()
    index = {"schemaVersion": 2, "manifests": [{"mediaType": MANIFEST, "digest": _put(layout, manifest),
                                                "size": len(manifest), "annotations": {REF_NAME: "1.0"}}]}
    (layout / "index.json").write_text(json.dumps(index))
    return layout


BASE = {"etc/": None, "etc/a": b"a", "etc/b": b"b", "opt/": None, "opt/x/": None, "opt/x/old": b"old"}
TOP = {"etc/.wh.a": b"", "opt/x/.wh..wh..opq": b"", "opt/x/new": b"new"}


def test_a_good_layout_reads_and_unpacks_with_whiteouts(tmp_path: Path) -> None:
    image = read_image(make_layout(tmp_path, [BASE, TOP]), "1.0")
    root = tmp_path / "rootfs"
    unpack(image, root)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == ["etc/b", "opt/x/new"]


def test_a_tampered_blob_is_refused(tmp_path: Path) -> None:
    image = read_image(make_layout(tmp_path, [BASE]), "1.0")
    layer = image.layers[0]
    data = bytearray(layer.read_bytes())
    data[-1] ^= 1
    layer.write_bytes(bytes(data))
    with pytest.raises(LayoutError, match="does not hash to its name"):
        read_image(image.layout, "1.0")
    layer.write_bytes(bytes(data[:-1]))
    with pytest.raises(LayoutError, match="bytes, descriptor says"):
        read_image(image.layout, "1.0")


def test_a_wrong_diff_id_or_tag_is_refused(tmp_path: Path) -> None:
    layout = make_layout(tmp_path, [BASE, TOP], diff_id_of=1)
    with pytest.raises(LayoutError, match="diff_ids"):
        read_image(layout, "1.0")
    with pytest.raises(LayoutError, match="names tag '2.0' 0 times"):
        read_image(layout, "2.0")
