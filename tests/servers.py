"""Real servers on loopback for the source tests: an HTTP file server that demands
credentials (it also serves bare Git repositories over Git's HTTP protocol) and Git
repositories made with the git command line from the test corpora."""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

from conftest import REPO, TEST_DATA, read_jsonl

SAMPLE = REPO / "include/sample"


class FileServer:
    """``http.server`` over a folder, on 127.0.0.1, accepting only the given credentials (a
    login and password as Basic auth, or a token as Bearer). Records every request."""

    def __init__(self, root: Path, login: str | None = None, password: str | None = None, token: str | None = None):
        accepted = set()
        if login is not None:
            accepted.add("Basic " + base64.b64encode(f"{login}:{password}".encode()).decode())
        if token is not None:
            accepted.add(f"Bearer {token}")
        self.requests: list[tuple[str, str, bool]] = []  # (method, path, authorized)
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def _allowed(self) -> bool:
                ok = not accepted or self.headers.get("Authorization") in accepted
                server.requests.append((self.command, self.path, ok))
                if not ok:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="tamis-test"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                return ok

            def do_GET(self):
                if self._allowed():
                    super().do_GET()

            def do_HEAD(self):
                if self._allowed():
                    super().do_HEAD()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def git(*args: str, cwd: Path) -> str:
    env = {
        "GIT_AUTHOR_NAME": "tamis",
        "GIT_AUTHOR_EMAIL": "tamis@example.org",
        "GIT_COMMITTER_NAME": "tamis",
        "GIT_COMMITTER_EMAIL": "tamis@example.org",
        "GIT_AUTHOR_DATE": "2026-11-20T08:00:00Z",
        "GIT_COMMITTER_DATE": "2026-11-20T08:00:00Z",
        "PATH": "/usr/bin:/bin",
        "HOME": str(cwd),
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def write_jsonl_lines(path: Path, rows: list[dict], compress: bool = False) -> bytes:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if compress:
        data = gzip.compress(data, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def wiki_rows(n: int, start: int = 0) -> list[dict]:
    return [
        {"id": f"wiki-{i}", "text": r["text"][:3000]}
        for i, r in enumerate(read_jsonl(TEST_DATA / "web_en/wikipedia_en_sample.jsonl.gz", start + n))
        if i >= start
    ]


def make_repository(root: Path) -> dict:
    """A bare repository with two commits of Wikipedia excerpts under ``corpus/``: ``v1`` has 6
    documents, the branch ``main`` one more file; a README beside the corpus is not a source file.
    Prepared for Git's HTTP protocol (``update-server-info``)."""
    work = root / "work"
    work.mkdir(parents=True)
    git("init", "--quiet", "--initial-branch=main", cwd=work)
    write_jsonl_lines(work / "corpus/date=2026-11-20/wiki.jsonl", wiki_rows(6))
    (work / "README.md").write_text("Excerpts of English Wikipedia (see tests/data/SOURCE.md).\n")
    git("add", ".", cwd=work)
    git("commit", "--quiet", "-m", "six articles", cwd=work)
    git("tag", "v1", cwd=work)
    first = git("rev-parse", "HEAD", cwd=work)
    write_jsonl_lines(work / "corpus/date=2026-11-21/wiki.jsonl", wiki_rows(3, start=6))
    git("add", ".", cwd=work)
    git("commit", "--quiet", "-m", "three more", cwd=work)
    second = git("rev-parse", "HEAD", cwd=work)
    bare = root / "repo.git"
    git("clone", "--quiet", "--bare", str(work), str(bare), cwd=root)
    git("update-server-info", cwd=bare)
    shutil.rmtree(work)
    return {"bare": bare, "v1": first, "main": second}


def review_files(root: Path) -> dict[str, str]:
    """Movie reviews as two gzipped JSON Lines files under ``date=2026-11-20/``; returns
    {path: sha256}."""
    rows = read_jsonl(TEST_DATA / "web_en/movie_reviews_polarity_2000.jsonl.gz", 10)
    checksums = {}
    for k, chunk in enumerate((rows[:6], rows[6:])):
        relpath = f"date=2026-11-20/reviews_{k}.jsonl.gz"
        data = write_jsonl_lines(
            root / relpath, [{"id": f"review-{k}-{i}", "text": r["text"]} for i, r in enumerate(chunk)], compress=True
        )
        checksums[relpath] = hashlib.sha256(data).hexdigest()
    return checksums


# --- the Airflow api-server as a client sees it ------------------------------------------


def wait_for(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    import time
    import urllib.error
    import urllib.request

    end = time.time() + timeout
    while time.time() < end:
        assert server.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout}s:\n{log.read_text()[-3000:]}")


def token(base: str, username: str, password: str) -> str:
    return request(f"{base}/auth/token", None, method="POST", body={"username": username, "password": password})[1][
        "access_token"
    ]


def request(url: str, bearer: str | None, method: str = "GET", body: dict | None = None, cookie: bool = False):
    """(status, JSON or text, or the redirect's location) of one request, with the token as a
    bearer header or as the UI's cookie."""
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    headers = {"Content-Type": "application/json"}
    if bearer:
        headers["Cookie" if cookie else "Authorization"] = f"_token={bearer}" if cookie else f"Bearer {bearer}"
    req = urllib.request.Request(
        url, method=method, headers=headers, data=json.dumps(body).encode() if body is not None else None
    )
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=60) as response:
            status, raw, location = response.status, response.read().decode(), response.headers.get("location")
    except urllib.error.HTTPError as exc:
        status, raw, location = exc.code, exc.read().decode(), exc.headers.get("location")
    if location:
        return status, location
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw
