"""Servers the benchmarks run on loopback: moto's S3 server, with a bucket ready."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(bucket: str, key: str, log: Path | None = None) -> tuple[subprocess.Popen, Any, str]:
    """moto's S3 server on a free loopback port, its request log in ``log``, and ``bucket``
    made once it answers: (the server process, a boto3 client with ``key`` as key and
    secret, the endpoint URL)."""
    import boto3

    port = free_port()
    out = log.open("w") if log is not None else subprocess.DEVNULL
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key, aws_secret_access_key=key
    )
    for _ in range(100):
        try:
            client.create_bucket(Bucket=bucket)
            break
        except Exception:  # not listening yet
            time.sleep(0.1)
    return server, client, endpoint
