#!/usr/bin/python3
"""A one-binary container image as a `docker save` archive, made without an engine:

    image-archive.py BINARY TAG OUT.tar [--label KEY=VALUE]...

The image holds BINARY as /NAME and runs it as its entrypoint (what images/pause/Dockerfile
builds). `docker load` and `podman load` both read the archive. The Debian package ships
lbctl/pause this way, so building the package needs no running engine, and the archive is the
same bytes on every build (every time stamp is 0).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def archive(binary: str, tag: str, labels: dict[str, str]) -> bytes:
    name = os.path.basename(binary)
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.USTAR_FORMAT) as layer:
        with open(binary, "rb") as f:
            _tar_member(layer, name, f.read(), 0o755)
    layer_bytes = layer_buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine,
                                                                   os.uname().machine),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": [f"/{name}"], "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "lbctl image-archive"}],
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_name = diff_id.removeprefix("sha256:") + "/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag],
                            "Layers": [layer_name]}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _tar_member(tar, config_name, config)
        _tar_member(tar, layer_name, layer_bytes)
        _tar_member(tar, "manifest.json", manifest)
    return out.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("binary")
    p.add_argument("tag")
    p.add_argument("out")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    labels = dict(item.split("=", 1) for item in args.label)
    with open(args.out, "wb") as f:
        f.write(archive(args.binary, args.tag, labels))


if __name__ == "__main__":
    main()
