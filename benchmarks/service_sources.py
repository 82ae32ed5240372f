"""Ingest from each kind of source, and preheat's verified copy, against plain baselines.

* ingest, one worker, of the same gzipped JSON Lines files (web_en and code of the
  evaluation corpora) from a local folder (the peer), a bare Git repository over file://,
  an HTTP server on loopback (checksums verified) and an S3 server on loopback (moto); each
  remote kind is measured cold (an empty source cache: fetch, verify, read) and warm;
* preheat of a release store of those files (five times over) to a hot folder, hashing every
  file, against ``shutil.copytree`` of the same files, unverified.

Prints seconds (best of ``--repeat``), MB/s of input and the ratio to the peer of the same run.

    .venv/bin/python benchmarks/service_sources.py [--data ../shared/data] [--repeat 3]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_servers import start_moto  # noqa: E402

from tamis.pipeline import load_pipeline  # noqa: E402
from tamis.preheat import preheat  # noqa: E402
from tamis.release import ReleaseConfig  # noqa: E402
from tamis.runner import run_stage  # noqa: E402

DAY = "date=2026-11-20"


def files_of(data: Path) -> list[Path]:
    return sorted([*(data / "web_en").glob("*.jsonl.gz"), *(data / "code").glob("*.jsonl.gz")])


def git(*args: str, cwd: Path) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@example.org",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@example.org",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def sources(root: Path, files: list[Path]) -> dict[str, dict]:
    local = root / "local"
    (local / DAY).mkdir(parents=True)
    for f in files:
        shutil.copyfile(f, local / DAY / f.name)
    work = root / "work"
    shutil.copytree(local, work / "corpus")
    git("init", "-q", "--initial-branch=main", cwd=work)
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "corpus", cwd=work)
    git("clone", "-q", "--bare", str(work), str(root / "repo.git"), cwd=root)
    shutil.rmtree(work)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(local)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    checksums = {f"{DAY}/{f.name}": hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    moto, s3, endpoint = start_moto("bench", "bench")
    for f in files:
        s3.upload_file(str(f), "bench", f"corpus/{DAY}/{f.name}")
    os.environ["AIRFLOW_CONN_BENCH_S3"] = json.dumps(
        {
            "conn_type": "aws",
            "login": "bench",
            "password": "bench",
            "extra": {"endpoint_url": endpoint},
        }
    )
    return {
        "local": {"path": str(local)},
        "git": {"kind": "git", "url": f"file://{root / 'repo.git'}", "revision": "main", "subdir": "corpus"},
        "http": {"kind": "http", "url": f"http://127.0.0.1:{server.server_address[1]}/", "checksums": checksums},
        "s3": {"path": "s3://bench/corpus", "connection": "bench_s3"},
        "_stop": lambda: (server.shutdown(), moto.terminate()),
    }


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def ingest_seconds(root: Path, name: str, source: dict, cold: bool) -> float:
    import yaml

    path = root / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "storage_root": str(root / "store"),
                "workers": 1,
                "sources": {name: source},
                "stages": {"ingest": {}},
            }
        )
    )
    stage = load_pipeline(str(path)).stage("ingest")
    if cold:
        shutil.rmtree(root / "cache", ignore_errors=True)
    out = root / "out" / f"{name}-{time.time_ns()}"
    started = time.perf_counter()
    manifest = run_stage(stage, None, str(out))
    elapsed = time.perf_counter() - started
    shutil.rmtree(out)
    assert manifest["counts"]["quarantined"] == 0, manifest["quarantine_reasons"]
    return elapsed


def store(root: Path, files: list[Path], copies: int) -> tuple[ReleaseConfig, list[Path]]:
    """A release store holding the files ``copies`` times over, and its manifest."""
    remote = root / "remote"
    entries, plain = [], []
    for k in range(copies):
        for f in files:
            data = f.read_bytes()
            md5 = hashlib.md5(data + bytes([k])).hexdigest()
            obj = remote / "files/md5" / md5[:2] / md5[2:]
            obj.parent.mkdir(parents=True, exist_ok=True)
            obj.write_bytes(data + bytes([k]))
            plain.append(obj)
            entries.append(
                {
                    "path": f"data/index/copy{k}/{f.name}",
                    "bytes": len(data) + 1,
                    "md5": md5,
                    "sha256": hashlib.sha256(data + bytes([k])).hexdigest(),
                }
            )
    manifest = {
        "version": "bench-1",
        "pipeline": "bench",
        "contents": {"datasets": ["index"], "files": entries, "bytes": sum(e["bytes"] for e in entries)},
    }
    (remote / "releases/bench-1").mkdir(parents=True)
    (remote / "releases/bench-1/release.json").write_text(json.dumps(manifest))
    return ReleaseConfig(workspace=str(root / "ws"), remote=str(remote), hot=str(root / "hot")), plain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--copies", type=int, default=5)
    args = parser.parse_args()
    files = files_of(args.data)
    mb = sum(f.stat().st_size for f in files) / 1e6
    root = Path(tempfile.mkdtemp(prefix="tamis-bench-sources-"))
    os.environ["TAMIS_SOURCE_CACHE"] = str(root / "cache")
    kinds = sources(root, files)
    try:
        print(f"ingest of {len(files)} files, {mb:.1f} MB gzipped JSON Lines, one worker, best of {args.repeat}")
        print(f"{'source':<14}{'seconds':>9}{'MB/s':>8}{'vs local':>10}")
        best_local = min(ingest_seconds(root, "local", kinds["local"], False) for _ in range(args.repeat))
        print(f"{'local':<14}{best_local:>9.2f}{mb / best_local:>8.1f}{1.0:>9.2f}x")
        for name in ("git", "http", "s3"):
            for cold in (True, False):
                if name == "s3" and not cold:
                    continue  # nothing is cached for S3
                best = min(ingest_seconds(root, name, kinds[name], cold) for _ in range(args.repeat))
                label = f"{name} ({'cold' if cold else 'warm'})" if name != "s3" else name
                print(f"{label:<14}{best:>9.2f}{mb / best:>8.1f}{best_local / best:>9.2f}x")

        config, plain = store(root, files, args.copies)
        total = sum(p.stat().st_size for p in plain) / 1e6
        print(f"\npreheat of {len(plain)} files, {total:.1f} MB, best of {args.repeat}")
        peer, ours = [], []
        for _ in range(args.repeat):
            shutil.rmtree(root / "hot", ignore_errors=True)
            shutil.rmtree(root / "copy", ignore_errors=True)
            started = time.perf_counter()
            for k, obj in enumerate(plain):
                target = root / "copy" / f"{k}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(obj, target)
            peer.append(time.perf_counter() - started)
            started = time.perf_counter()
            preheat(config, "bench-1")
            ours.append(time.perf_counter() - started)
        print(f"{'copy, unverified':<26}{min(peer):>7.2f} s {total / min(peer):>7.1f} MB/s")
        print(
            f"{'preheat, sha256 verified':<26}{min(ours):>7.2f} s {total / min(ours):>7.1f} MB/s"
            f"  ({min(peer) / min(ours):.2f}x the copy's speed)"
        )
    finally:
        kinds["_stop"]()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
