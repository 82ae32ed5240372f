"""Pre-heating: a release copied to the hot location that training jobs read, verified, and
only then ready.

The hot location is a local folder or the mount of a volume that training pods share (a
ReadWriteMany claim, ``k8s/hot-volume.yaml``)::

    <hot>/<version>/                  the release's contents (data/<stage>/...) and release.json
    <hot>/<version>/_READY.json       every file with its size and sha256, written last
    <hot>/_latest/<pipeline>.json     the pipeline's version made ready last
    <hot>/.incoming/<version>.<id>/   a copy being made, never read

A copy is made aside from the store (the release's DVC remote, where each file is the object
of its md5), every file's sha256 is checked against the release manifest as it streams, the
ready file is written, and only then the folder is moved into place in one rename. A folder
without its ready file, or holding a file of another size than the ready file says, is never
used: :func:`hot_copy` returns None and readers fall back to the store. A version's copy is
made once, whichever team's pipeline asks for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tamis import storage
from tamis.release import ReleaseError

if TYPE_CHECKING:
    from tamis.release import ReleaseConfig

log = logging.getLogger("tamis.preheat")

READY_FILE = "_READY.json"
INCOMING = ".incoming"
LATEST = "_latest"
BLOCK = 8 << 20


class PreheatError(ReleaseError):
    pass


def hot_copy(hot_root: str | Path, version: str) -> Path | None:
    """The complete, verified copy of ``version`` under ``hot_root``, or None."""
    folder = Path(hot_root) / version
    ready = folder / READY_FILE
    try:
        listed = json.loads(ready.read_text())["files"]
    except (OSError, ValueError, KeyError):
        return None
    for entry in listed:
        path = folder / entry["path"]
        try:
            if path.stat().st_size != entry["bytes"]:
                return None
        except OSError:
            return None
    return folder


def latest(hot_root: str | Path, pipeline: str) -> str | None:
    """The version of ``pipeline`` made ready last under ``hot_root``."""
    try:
        return json.loads((Path(hot_root) / LATEST / f"{pipeline}.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def stored_manifest(config: ReleaseConfig, version: str) -> dict[str, Any]:
    """The release manifest of ``version`` as the remote holds it."""
    from tamis.release import RELEASE_FILE, remote_filesystem

    url = storage.join(config.remote_url, "releases", version, RELEASE_FILE)
    fs, path = remote_filesystem(config, url)
    if not fs.exists(path):
        raise PreheatError(f"preheat: the release store {config.remote} has no release {version}")
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def preheat(config: ReleaseConfig, version: str) -> dict[str, Any]:
    """Copy release ``version`` from its store to ``config.hot``, verify every file, make it ready."""
    from tamis.release import RELEASE_FILE, remote_filesystem, store_object_url

    if not config.hot:
        raise PreheatError("preheat: no hot location; set release.hot to a local folder or a mounted volume")
    manifest = stored_manifest(config, version)
    contents = manifest.get("contents")
    if not contents:
        raise PreheatError(f"preheat: release {version} lists no contents (made by an older tamis); release it again")
    hot = Path(config.hot)
    done = hot_copy(hot, version)
    if done is not None:
        log.info("preheat: %s is already ready at %s", version, done)
        return _mark_latest(hot, manifest, done, copied=False)
    staging = hot / INCOMING / f"{version}.{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        copied = 0
        for entry in contents["files"]:
            source_url = store_object_url(config.remote_url, entry["md5"])
            fs, path = remote_filesystem(config, source_url)
            target = staging / entry["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with fs.open(path, "rb") as src, open(target, "wb") as out:
                while block := src.read(BLOCK):
                    digest.update(block)
                    out.write(block)
            size = target.stat().st_size
            if digest.hexdigest() != entry["sha256"] or size != entry["bytes"]:
                raise PreheatError(
                    f"preheat: {entry['path']} of release {version} read from {source_url} has sha256 "
                    f"{digest.hexdigest()} ({size} bytes), the manifest says {entry['sha256']} "
                    f"({entry['bytes']} bytes); the release is not made ready"
                )
            copied += size
        (staging / RELEASE_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        ready = {
            "version": version,
            "verified_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "bytes": copied,
            "files": [{k: e[k] for k in ("path", "bytes", "sha256")} for e in contents["files"]],
        }
        (staging / READY_FILE).write_text(json.dumps(ready, indent=2))
        target = hot / version
        if target.exists():  # a copy left without its ready file: never used, now replaced
            shutil.rmtree(target)
        try:
            os.rename(staging, target)
        except OSError:
            if hot_copy(hot, version) is None:  # another preheat of the same version finished first
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("preheat: %s copied to %s, %d files, %d bytes verified", version, target, len(contents["files"]), copied)
    return _mark_latest(hot, manifest, target, copied=True)


def _mark_latest(hot: Path, manifest: dict[str, Any], folder: Path, copied: bool) -> dict[str, Any]:
    pointer = {"version": manifest["version"], "path": str(folder), "pipeline": manifest["pipeline"]}
    path = hot / LATEST / f"{manifest['pipeline']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(pointer))
    os.replace(tmp, path)
    return {
        **pointer,
        "ready": True,
        "copied": copied,
        "files": len(manifest["contents"]["files"]),
        "bytes": manifest["contents"]["bytes"],
    }
