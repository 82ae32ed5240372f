"""Storage URLs (``file://``, ``s3://`` or plain paths) through fsspec.

Every dataset write goes through :func:`publish`: bytes are written aside under
``_tmp/`` and moved into place in one step, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from typing import Any

import fsspec
from fsspec.core import url_to_fs


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the filesystem for ``url`` and the path inside it."""
    fs, path = url_to_fs(url, **storage_options(url))
    return fs, path


class StorageError(RuntimeError):
    """The store cannot be used: nothing was read or written."""


def storage_options(url: str) -> dict[str, Any]:
    """Credentials and endpoint for S3 URLs, from the environment.

    Airflow tasks export the ``aws_default`` connection into these variables, so
    the library itself never needs Airflow.
    """
    if not url.startswith("s3://"):
        return {}
    # Fail in seconds, not minutes, when the endpoint is down or stops answering: each request
    # waits at most the read timeout, and is tried S3_ATTEMPTS times in all (botocore's own
    # retries are off, so they do not multiply s3fs's).
    read_timeout = float(os.environ.get("TAMIS_S3_READ_TIMEOUT_S", "30"))
    options: dict[str, Any] = {
        "config_kwargs": {
            "connect_timeout": min(5.0, read_timeout),
            "read_timeout": read_timeout,
            "retries": {"max_attempts": 1, "mode": "standard"},
        },
    }
    import s3fs

    s3fs.S3FileSystem.retries = S3_ATTEMPTS  # s3fs takes it from the class only
    endpoint = s3_endpoint()
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        options["key"] = os.environ["AWS_ACCESS_KEY_ID"]
        options["secret"] = os.environ.get("AWS_SECRET_ACCESS_KEY")
    return options


S3_ATTEMPTS = 2


def s3_endpoint() -> str | None:
    return os.environ.get("TAMIS_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or None


def check_reachable(url: str) -> None:
    """Before any work: an S3 location whose endpoint, credentials or bucket are wrong
    is a clear error, so that no stage starts and nothing is half-published."""
    if not url.startswith("s3://"):
        return
    bucket = url[len("s3://") :].split("/", 1)[0]
    endpoint = s3_endpoint() or "the default AWS endpoint"
    fs, _ = filesystem(url)
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        raise StorageError(f"S3 bucket {bucket!r} does not exist at {endpoint}") from None
    except PermissionError as exc:
        raise StorageError(
            f"access to S3 bucket {bucket!r} at {endpoint} was denied; check the storage connection's credentials ({exc})"
        ) from None
    except Exception as exc:  # botocore's connection and credential errors share no base class worth naming
        raise StorageError(f"cannot use S3 bucket {bucket!r} at {endpoint}: {type(exc).__name__}: {exc}") from None


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    if is_s3(url):
        # One GET: opening the file, or a download in parallel ranges, first asks for its size.
        return fs.cat_file(path, max_concurrency=1)
    return fs.cat_file(path)


def sha256(url: str) -> str:
    """Content hash of a file, read in blocks."""
    import hashlib

    digest = hashlib.sha256()
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def read_json_if_exists(url: str) -> Any:
    """The JSON document at ``url``, or None when there is none: one request, where asking
    first whether it exists costs an object store two more (a HEAD, then a listing)."""
    try:
        return read_json(url)
    except FileNotFoundError:
        return None


def tmp_url(dataset_url: str, name: str) -> str:
    """A private path inside the dataset where a file is written before it is published."""
    return join(dataset_url, "_tmp", f"{name}.{uuid.uuid4().hex}")


def publish(tmp: str, final: str) -> None:
    """Move a fully written file into place (atomic rename on local disks; one PUT-visible
    copy on object stores, which never expose a partially written object)."""
    fs, tmp_path = filesystem(tmp)
    _, final_path = filesystem(final)
    if not _is_local(fs):
        # An object store has no folders to make, and its copy replaces the object whole:
        # a server-side copy and a delete, nothing asked beforehand.
        fs.cp_file(tmp_path, final_path)
        fs.rm_file(tmp_path)
        return
    if fs.exists(final_path):
        fs.rm(final_path)
    fs.makedirs(final_path.rsplit("/", 1)[0], exist_ok=True)
    os.replace(tmp_path, final_path)


def write_bytes_atomic(url: str, data: bytes, dataset_url: str) -> None:
    fs, path = filesystem(url)
    if not _is_local(fs):
        # An object store shows an object only once its upload is complete: one PUT is atomic.
        fs.pipe_file(path, data)
        return
    tmp = tmp_url(dataset_url, url.rsplit("/", 1)[-1])
    _, tmp_path = filesystem(tmp)
    fs.makedirs(tmp_path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(tmp_path, "wb") as f:
        f.write(data)
    publish(tmp, url)


class HashingWriter(io.RawIOBase):
    """A writable file that passes its bytes on to ``raw`` and keeps their SHA-256 and count,
    so that a file's digest needs no second read of what was just written."""

    def __init__(self, raw: Any):
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += view.nbytes
        self.raw.write(view)
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
        super().close()


def write_json_atomic(url: str, obj: Any, dataset_url: str) -> None:
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    write_bytes_atomic(url, data, dataset_url)


def remove_tree(url: str) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")
