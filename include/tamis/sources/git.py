"""Git repositories as sources: a revision resolved to a commit, and that commit's files.

The revision (a branch, a tag, ``HEAD`` or a commit) is fetched into a bare mirror kept in
the source cache and resolved to its commit; the commit's files are then exported once into
``trees/<repository key>-<commit>/`` (written aside and moved into place, so a reader never
sees half a tree), where the ordinary folder listing and readers take over. The commit names
every file's lineage: ``git+<url>@<commit>#<path in the repository>``.

Credentials of an HTTP(S) remote come from the source's connection as an ``Authorization``
header handed to git through its environment (``GIT_CONFIG_*``), never on a command line or
in a file; git never prompts (``GIT_TERMINAL_PROMPT=0``), so a wrong credential fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from tamis.sources.connections import Connection

COMMIT = re.compile(r"^[0-9a-f]{40}$")
SKIPPED_FILE = ".tamis-skipped.json"  # entries of the commit that could not be exported safely
GIT_TIMEOUT_S = 600


class GitError(OSError):
    pass


def cache_root() -> Path:
    """Where fetched sources are kept: ``TAMIS_SOURCE_CACHE``, else the temporary folder (a
    writable scratch volume in pods)."""
    import tempfile

    return Path(os.environ.get("TAMIS_SOURCE_CACHE") or Path(tempfile.gettempdir()) / "tamis-sources")


def repository_key(url: str) -> str:
    return hashlib.blake2b(url.encode(), digest_size=8).hexdigest()


def lineage_url(url: str, commit: str, path: str) -> str:
    return f"git+{url}@{commit}#{path}"


def parse_lineage_url(value: str) -> tuple[str, str, str]:
    """(repository url, commit, path in the repository) of :func:`lineage_url`."""
    head, _, path = value[len("git+") :].partition("#")
    url, _, commit = head.rpartition("@")
    if not value.startswith("git+") or not COMMIT.match(commit):
        raise GitError(f"{value!r} does not name a file of a git commit")
    return url, commit, path


def resolve(url: str, revision: str, connection: Connection | None = None) -> str:
    """The commit that ``revision`` names in the repository at ``url`` now."""
    mirror = _mirror(url)
    with _locked(mirror):
        if COMMIT.match(revision) and _has_commit(mirror, revision):
            return revision
        try:
            _git(["fetch", "--quiet", "--no-tags", "--force", "--", url, revision], mirror, url, connection)
            return _git(["rev-parse", "--verify", "FETCH_HEAD^{commit}"], mirror, url).strip()
        except GitError:
            if not COMMIT.match(revision):
                raise
        # A commit the server does not hand out by name: fetch every branch and tag, then look.
        _git(
            ["fetch", "--quiet", "--force", "--", url, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
            mirror,
            url,
            connection,
        )
        if not _has_commit(mirror, revision):
            raise GitError(f"git: {url} has no commit {revision}")
        return revision


def tree(url: str, commit: str, connection: Connection | None = None) -> Path:
    """The files of ``commit``, exported once into the cache (fetched first when needed)."""
    target = cache_root() / "trees" / f"{repository_key(url)}-{commit}"
    if target.is_dir():
        return target
    mirror = _mirror(url)
    with _locked(mirror):
        if target.is_dir():
            return target
        if not _has_commit(mirror, commit):
            resolve(url, commit, connection)
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        staging.mkdir(parents=True)
        try:
            skipped = _export(mirror, url, commit, staging)
            if skipped:
                (staging / SKIPPED_FILE).write_text(json.dumps(skipped))
            os.rename(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target


def skipped_entries(root: Path) -> list[list[str]]:
    """[path, reason, detail] of the commit's entries that were not exported."""
    path = root / SKIPPED_FILE
    return json.loads(path.read_text()) if path.exists() else []


def _export(mirror: Path, url: str, commit: str, dest: Path) -> list[list[str]]:
    """Untar ``git archive`` of the commit into ``dest``; a link leading out of the tree or an
    entry of another special kind is not written, and is returned with its reason."""
    skipped: list[list[str]] = []

    def safe(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        try:
            return tarfile.data_filter(member, path)
        except tarfile.FilterError as exc:
            skipped.append([member.name, "unsafe_entry", f"{type(exc).__name__}: {exc}"])
            return None

    process = subprocess.Popen(
        ["git", "archive", "--format=tar", commit],
        cwd=mirror,
        env=_env(None, url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None, "both are pipes"
    try:
        with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
            archive.extractall(dest, filter=safe)
    finally:
        stderr = process.stderr.read().decode(errors="replace")
        process.stdout.close()
        process.stderr.close()
        code = process.wait()
    if code != 0:
        raise GitError(f"git archive of {url} at {commit} failed: {stderr.strip()[-500:]}")
    return skipped


def _mirror(url: str) -> Path:
    mirror = cache_root() / "git" / f"{repository_key(url)}.git"
    if not (mirror / "HEAD").exists():
        mirror.parent.mkdir(parents=True, exist_ok=True)
        staging = mirror.with_name(f".{mirror.name}.{uuid.uuid4().hex}")
        subprocess.run(
            ["git", "init", "--quiet", "--bare", str(staging)], check=True, capture_output=True, env=_env(None, url)
        )
        try:
            os.rename(staging, mirror)
        except OSError:  # another process made it first
            shutil.rmtree(staging, ignore_errors=True)
    return mirror


@contextlib.contextmanager
def _locked(mirror: Path) -> Iterator[None]:
    """One fetch or export of a repository at a time, across the processes of this machine."""
    with open(mirror.with_name(mirror.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _has_commit(mirror: Path, commit: str) -> bool:
    return (
        subprocess.run(
            ["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=mirror, capture_output=True, env=_env(None, "")
        ).returncode
        == 0
    )


def _git(args: list[str], mirror: Path, url: str, connection: Connection | None = None) -> str:
    result = subprocess.run(
        ["git", *args], cwd=mirror, env=_env(connection, url), capture_output=True, text=True, timeout=GIT_TIMEOUT_S
    )
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()
        raise GitError(f"git {args[0]} of {url} failed: {' / '.join(message[-3:]) or f'exit {result.returncode}'}")
    return result.stdout


def _env(connection: Connection | None, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_CONFIG_")}
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"})
    headers = connection.http_headers() if connection is not None and url.startswith(("http://", "https://")) else {}
    for k, (name, value) in enumerate(headers.items()):
        env[f"GIT_CONFIG_KEY_{k}"] = f"http.{url}.extraHeader"
        env[f"GIT_CONFIG_VALUE_{k}"] = f"{name}: {value}"
    env["GIT_CONFIG_COUNT"] = str(len(headers))
    return env
