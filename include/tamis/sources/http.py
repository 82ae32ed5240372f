"""Files over HTTP(S), each with the sha256 it must have.

A file is downloaded once into the source cache, named by its content hash
(``http/<sha256>``): the bytes are hashed while they stream to disk and kept only when the
hash is the expected one. A file with other bytes is a :class:`ChecksumMismatch`, which ingest
quarantines; a missing file (404, 410) is :class:`FileGone`, a skipped entry; a refused
credential or an unreachable server is an error, so the task fails (and is retried) instead
of quarantining good data.

The lineage URL of a file carries its expected hash as a fragment, which is never sent:
``https://host/base/<path>#sha256=<hex>``.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import quote

from tamis.sources.connections import Connection
from tamis.sources.git import cache_root

TIMEOUT_S = 60
BLOCK = 1 << 20
GONE = (404, 410)


class HttpSourceError(OSError):
    pass


class FileGone(HttpSourceError):
    pass


class ChecksumMismatch(ValueError):
    def __init__(self, url: str, expected: str, actual: str, size: int):
        super().__init__(f"sha256 {actual} of {size} bytes, expected {expected}")
        self.url, self.expected, self.actual, self.size = url, expected, actual, size


def file_url(base: str, relpath: str) -> str:
    return f"{base.rstrip('/')}/{quote(relpath, safe='/=:@!$&()*+,;-._~')}"


def lineage_url(base: str, relpath: str, sha256: str) -> str:
    return f"{file_url(base, relpath)}#sha256={sha256}"


def parse_lineage_url(value: str) -> tuple[str, str]:
    url, _, fragment = value.partition("#sha256=")
    return url, fragment


def size(url: str, connection: Connection | None = None) -> int | None:
    """The file's size from a HEAD request (None when the server does not say)."""
    with _open(url, connection, method="HEAD") as response:
        length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def download(url: str, sha256: str, connection: Connection | None = None) -> Path:
    """The local copy of the file, verified; :class:`ChecksumMismatch` when its bytes differ."""
    target = cache_root() / "http" / sha256
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{sha256}.{uuid.uuid4().hex}")
    digest = hashlib.sha256()
    written = 0
    try:
        with _open(url, connection) as response, open(staging, "wb") as out:
            while block := response.read(BLOCK):
                digest.update(block)
                out.write(block)
                written += len(block)
        actual = digest.hexdigest()
        if actual != sha256:
            raise ChecksumMismatch(url, sha256, actual, written)
        os.replace(staging, target)
    finally:
        if staging.exists():
            staging.unlink()
    return target


def _open(url: str, connection: Connection | None, method: str = "GET"):
    request = urllib.request.Request(url, method=method)
    for name, value in (connection.http_headers() if connection is not None else {}).items():
        request.add_unredirected_header(name, value)  # credentials never follow a redirect elsewhere
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code in GONE:
            raise FileGone(f"HTTP {exc.code} {exc.reason}") from None
        hint = "; check the source's connection" if exc.code in (401, 403) else ""
        raise HttpSourceError(f"{method} {url} failed: HTTP {exc.code} {exc.reason}{hint}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HttpSourceError(f"{method} {url} failed: {reason}") from None
