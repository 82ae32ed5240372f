"""One writer per dataset: an exclusive, expiring lease on an output folder.

A run writes ``<dataset>/_lease.json`` before it touches anything else there: its owner,
host, pid and expiry. The file is created exclusively (``O_EXCL`` on a local disk, a
conditional ``PUT`` with ``If-None-Match: *`` on S3), so of two writers only one gets it;
the other gets :class:`LeaseHeld`, naming the holder, and touches nothing. The holder
renews the lease while it works and removes it when it is done. A lease whose owner died
expires: at its expiry time, or at once when its process is known dead (same host, no such
pid). Taking over an expired lease is again conditional (``If-Match`` on its ETag on S3).

Tasks of one orchestrated run (mapped pods over the shards of one stage) share an owner
token (``TAMIS_LEASE_OWNER``, e.g. the Airflow run and task): they write disjoint shards of
the same dataset together, and a different run is still kept out.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from tamis import storage

log = logging.getLogger("tamis.lease")

LEASE_FILE = "_lease.json"
DEFAULT_TTL_S = 60.0


class LeaseHeld(RuntimeError):
    """Another writer holds the dataset."""


def owner_token() -> tuple[str, bool]:
    """This process's owner token, and whether it is shared with other processes."""
    shared = os.environ.get("TAMIS_LEASE_OWNER")
    if shared:
        return shared, True
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}", False


class Lease:
    """``with Lease(dataset_url):`` holds the dataset for the block."""

    def __init__(
        self, dataset_url: str, ttl_s: float = DEFAULT_TTL_S, owner: str | None = None, shared: bool | None = None
    ):
        self.url = storage.join(dataset_url, LEASE_FILE)
        self.dataset_url = dataset_url
        self.ttl_s = ttl_s
        token, is_shared = owner_token()
        self.owner = owner or token
        self.shared = is_shared if shared is None else shared
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- the record -----------------------------------------------------------------------

    def _record(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "expires_at": time.time() + self.ttl_s,
                "expires": datetime.fromtimestamp(time.time() + self.ttl_s, UTC).isoformat(timespec="seconds"),
            },
            sort_keys=True,
        ).encode()

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        """The current lease and its version (ETag or mtime), or (None, None)."""
        fs, path = storage.filesystem(self.url)
        if storage.is_s3(self.url):
            # The ETag is read first: a conditional write on it fails if the lease moved since.
            try:
                fs.invalidate_cache(path)
                version = fs.info(path)["ETag"]
                data = fs.cat_file(path)
            except FileNotFoundError:
                return None, None
            return json.loads(data), version
        try:
            with open(path, "rb") as f:
                data = f.read()
            version = str(os.stat(path).st_mtime_ns)
        except FileNotFoundError:
            return None, None
        try:
            return json.loads(data), version
        except ValueError:  # a writer died between create and write: treat as expired
            return {"owner": "?", "expires_at": 0}, version

    def _create(self) -> bool:
        fs, path = storage.filesystem(self.url)
        data = self._record()
        if storage.is_s3(self.url):
            bucket, key = path.split("/", 1)
            try:
                fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            except Exception as exc:
                if _precondition_failed(exc):
                    return False
                raise
            return True
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def _replace(self, version: str) -> bool:
        """Overwrite the lease if it is still the version read; False if someone else moved first."""
        fs, path = storage.filesystem(self.url)
        data = self._record()
        if storage.is_s3(self.url):
            bucket, key = path.split("/", 1)
            try:
                fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=version)
            except Exception as exc:
                if _precondition_failed(exc):
                    return False
                raise
            return True
        # Locally: move the stale file aside by an atomic rename that only one writer wins,
        # then create afresh.
        aside = f"{path}.{uuid.uuid4().hex}.stale"
        try:
            if str(os.stat(path).st_mtime_ns) != version:
                return False
            os.rename(path, aside)
        except FileNotFoundError:
            return self._create()
        os.unlink(aside)
        return self._create()

    # -- acquire, renew, release -------------------------------------------------------------

    def acquire(self) -> Lease:
        for _ in range(10):
            if self._create():
                break
            current, version = self._read()
            if current is None:
                continue  # released in between: try again
            if current.get("owner") == self.owner:
                if self._replace(version or ""):
                    break
                continue
            if not _expired(current):
                raise LeaseHeld(
                    f"{self.dataset_url} is being written by another run ({current.get('owner')}, host "
                    f"{current.get('host')}, pid {current.get('pid')}) until {current.get('expires')}; "
                    "wait for it to finish, or write to another --run-id or --output"
                )
            log.warning("taking over the expired lease of %s on %s", current.get("owner"), self.dataset_url)
            if self._replace(version or ""):
                break
        else:
            raise LeaseHeld(f"could not take the lease on {self.dataset_url}: other writers keep changing it")
        self._renewer = threading.Thread(target=self._renew, daemon=True, name="tamis-lease")
        self._renewer.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                current, version = self._read()
                if current is None or current.get("owner") != self.owner:
                    log.error("lost the lease on %s to %s", self.dataset_url, current and current.get("owner"))
                    return
                self._replace(version or "")
            except Exception as exc:  # a failed renewal is retried on the next tick
                log.warning("could not renew the lease on %s: %s", self.dataset_url, exc)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        if self.shared:
            return  # other tasks of the same run may still be writing; the lease expires
        try:
            current, _ = self._read()
            if current is not None and current.get("owner") == self.owner:
                storage.remove_tree(self.url)
        except Exception as exc:
            log.warning("could not release the lease on %s: %s", self.dataset_url, exc)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _expired(record: dict[str, Any]) -> bool:
    if float(record.get("expires_at", 0)) < time.time():
        return True
    if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
        try:
            os.kill(record["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def _precondition_failed(exc: Exception) -> bool:
    """A conditional write lost (S3 412, or 409 when two conditional writes race); s3fs
    hands these on as OSErrors carrying S3's message."""
    text = f"{type(exc).__name__} {exc} {exc.__cause__ or ''}"
    return any(
        marker in text
        for marker in (
            "PreconditionFailed",
            "412",
            "ConditionalRequestConflict",
            "pre-conditions you specified did not hold",
        )
    )
