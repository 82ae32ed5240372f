"""Requests a build of the bundled sample makes to an S3 server, and its time.

``tamis build`` of the default pipeline (local engine) with the data root on moto's S3
server on loopback, then the same build on a local folder as the peer. Prints the build's
seconds on each, and the S3 server's requests by method (HEAD, GET, PUT, POST, DELETE) and
by kind of key: every request is a round trip a real object store charges in latency.

    .venv/bin/python benchmarks/s3_requests.py [--workers 1]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_servers import start_moto  # noqa: E402


def build(env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tamis.cli", "build", "--run-id", "bench"], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"build failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def key_kind(path: str) -> str:
    """A request's key with the run, stage and shard names folded, so that counts group."""
    path, _, query = path.partition("?")
    prefix = re.search(r"prefix=([^&]*)", query)
    if prefix:  # a listing: what it lists
        path = f"{path} list " + urllib.parse.unquote(prefix.group(1))
    path = re.sub(r"runs/[^/]+/[^/]+/", "runs/RUN/STAGE/", path)
    path = re.sub(r"/[^/]*\.[0-9a-f]{32}$", "/TMP", path)
    path = re.sub(r"/[^/]+\.(parquet|json|npy)/?$", r"/*.\1", path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    base = {k: v for k, v in os.environ.items() if not k.startswith(("TAMIS_", "AWS_", "AIRFLOW_CONN_"))}
    base.update(
        PYTHONPATH=os.pathsep.join([str(REPO / "include"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        TAMIS_WORKERS=str(args.workers),
        GX_ANALYTICS_ENABLED="False",
    )
    with tempfile.TemporaryDirectory(prefix="tamis-s3-bench-") as tmp:
        log = Path(tmp) / "moto.log"
        server, _, endpoint = start_moto("lake", "k", log)
        try:
            s3_env = {
                **base,
                "TAMIS_DATA_ROOT": "s3://lake/bench",
                "TAMIS_S3_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "k",
                "AWS_SECRET_ACCESS_KEY": "k",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
            s3_seconds = build(s3_env)
        finally:
            server.terminate()
            server.wait(timeout=10)
        local_seconds = build({**base, "TAMIS_DATA_ROOT": str(Path(tmp) / "local")})

        requests = [m.groups() for m in re.finditer(r'"([A-Z]+) (\S+) HTTP', log.read_text())]
    by_method = collections.Counter(method for method, _ in requests)
    by_kind = collections.Counter(f"{method} {key_kind(path)}" for method, path in requests)
    print(f"build of the sample, {args.workers} worker(s)")
    print(f"  on S3 (moto, loopback): {s3_seconds:7.1f} s   {len(requests)} requests")
    print(f"  on a local folder:      {local_seconds:7.1f} s   ratio {s3_seconds / local_seconds:.2f}")
    print("requests by method: " + ", ".join(f"{m} {n}" for m, n in by_method.most_common()))
    print("most frequent requests:")
    for kind, n in by_kind.most_common(15):
        print(f"  {n:6d}  {kind}")


if __name__ == "__main__":
    main()
