"""Where a source's files are, whatever its kind: listing them and opening one for a reader.

* ``local``: a folder (an NFS mount is one); ``s3``: an ``s3://`` prefix, through the store's
  credentials or, with a ``connection``, through the source's own;
* ``git``: a repository at a revision, resolved to a commit when the source is listed; the
  commit's files are read from a local export (:mod:`tamis.sources.git`);
* ``http``: files under a base URL, each with its expected sha256 (:mod:`tamis.sources.http`).

Every file is named by its lineage URL in listings, shards, manifests and quarantine entries:
the path or ``s3://`` URL itself, ``git+<url>@<commit>#<path>``, or
``<url>/<path>#sha256=<hex>``; :meth:`SourceLocation.open` turns that name back into bytes to
read, and :meth:`SourceLocation.snapshot` copies the source into a release workspace.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tamis import storage
from tamis.sources import git, http
from tamis.sources.chunk import open_target
from tamis.sources.connections import Connection, get_connection
from tamis.sources.files import DATE_DIR, FORMATS, Listing, SkippedEntry, SourceFile, file_format, list_source

if TYPE_CHECKING:
    from tamis.pipeline import SourceConfig


class RejectedFile(Exception):
    """A listed file whose bytes cannot be used (a checksum that does not match, a file gone)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Opened:
    fs: Any
    path: str
    size: int


def location(config: SourceConfig) -> SourceLocation:
    return _KINDS[config.kind](config)


class SourceLocation:
    def __init__(self, config: SourceConfig):
        self.config = config
        self._connection: Connection | None = None

    @property
    def connection(self) -> Connection | None:
        """The source's credentials, read when first needed (a missing one is a clear error then)."""
        if self.config.connection and self._connection is None:
            self._connection = get_connection(self.config.connection)
        return self._connection

    def check_ready(self) -> None:
        """What can be checked without credentials or network: nothing, for most kinds."""

    def list(self, undated: str = "undated", date: str | None = None) -> Listing:
        raise NotImplementedError

    def open(self, url: str, listed_size: int) -> Opened:
        raise NotImplementedError

    def origin(self) -> dict[str, Any]:
        """Where the source came from, for the lineage of a release."""
        return {"kind": self.config.kind, "location": self.config.location}

    def snapshot(self, dest: Path) -> dict[str, Any]:
        """Mirror the source into ``dest`` (a release workspace); returns its origin."""
        raise NotImplementedError


class FolderLocation(SourceLocation):
    """A local folder, an NFS mount or an ``s3://`` prefix."""

    @property
    def path(self) -> str:
        assert self.config.path is not None, "SourceConfig requires the path of a local or s3 source"
        return self.config.path

    def _fs(self):
        if self.config.kind == "s3" and self.config.connection:
            from fsspec.core import url_to_fs

            return url_to_fs(self.path, **self.connection.s3_options())[0]
        return None

    def check_ready(self) -> None:
        # A source reached with its own connection is checked when it is listed: the
        # connection is handed to tasks, not to whatever parses the pipeline.
        if not self.config.connection and not storage.exists(self.path):
            raise FileNotFoundError(f"path {self.path} does not exist")

    def list(self, undated: str = "undated", date: str | None = None) -> Listing:
        return list_source(self.path, self.config.format, undated, date, fs=self._fs())

    def open(self, url: str, listed_size: int) -> Opened:
        fs, path = open_target(url, self._fs())
        return Opened(fs, path, listed_size)

    def snapshot(self, dest: Path) -> dict[str, Any]:
        fs, root = open_target(self.path, self._fs())
        if not fs.exists(root):
            raise FileNotFoundError(f"source path {self.path} does not exist")
        mirror(fs, root, dest)
        return self.origin()


class GitLocation(SourceLocation):
    def __init__(self, config: SourceConfig):
        super().__init__(config)
        self.commit: str | None = None

    @property
    def url(self) -> str:
        assert self.config.url is not None, "SourceConfig requires the url of a git source"
        return self.config.url

    def resolve(self) -> str:
        """The commit the revision names, fixed for the rest of this object's life."""
        if self.commit is None:
            self.commit = git.resolve(self.url, self.config.revision or "HEAD", self.connection)
        return self.commit

    def _root(self, tree: Path, commit: str) -> Path:
        root = tree / self.config.subdir if self.config.subdir else tree
        if not root.is_dir():
            raise git.GitError(f"git: {self.url} at {commit} has no folder {self.config.subdir!r}")
        return root

    def _in_repository(self, relpath: str) -> str:
        return f"{self.config.subdir}/{relpath}" if self.config.subdir else relpath

    def list(self, undated: str = "undated", date: str | None = None) -> Listing:
        commit = self.resolve()
        tree = git.tree(self.url, commit, self.connection)
        found = list_source(str(self._root(tree, commit)), self.config.format, undated, date)

        def named(relpath: str) -> str:
            return git.lineage_url(self.url, commit, self._in_repository(relpath))

        listing = Listing(
            files=[replace(f, url=named(f.relpath)) for f in found.files],
            skipped=[replace(s, url=named(s.relpath)) for s in found.skipped],
        )
        prefix = f"{self.config.subdir}/" if self.config.subdir else ""
        for path, reason, detail in git.skipped_entries(tree):
            if path.startswith(prefix):
                relpath = path[len(prefix) :]
                entry_date = partition_date(relpath, undated)
                if not date or entry_date == date:
                    listing.skipped.append(SkippedEntry(named(relpath), relpath, entry_date, reason, detail))
        return listing

    def open(self, url: str, listed_size: int) -> Opened:
        repository, commit, path = git.parse_lineage_url(url)
        local = git.tree(repository, commit, self.connection) / path
        return Opened(*storage.filesystem(str(local)), listed_size)

    def origin(self) -> dict[str, Any]:
        return {
            **super().origin(),
            "url": self.url,
            "revision": self.config.revision or "HEAD",
            "subdir": self.config.subdir,
            "commit": self.resolve(),
        }

    def snapshot(self, dest: Path) -> dict[str, Any]:
        commit = self.resolve()
        fs, root = storage.filesystem(str(self._root(git.tree(self.url, commit, self.connection), commit)))
        mirror(fs, root, dest, exclude={git.SKIPPED_FILE})
        return self.origin()


class HttpLocation(SourceLocation):
    @property
    def url(self) -> str:
        assert self.config.url is not None, "SourceConfig requires the url of an http source"
        return self.config.url

    @property
    def checksums(self) -> dict[str, str]:
        assert self.config.checksums is not None, "SourceConfig requires the checksums of an http source"
        return self.config.checksums

    def _files(self, undated: str, date: str | None) -> list[tuple[str, str, str]]:
        """(path under the url, its sha256, its date) of the listed files, in path order."""
        rows = [
            (relpath, digest, partition_date(relpath, undated)) for relpath, digest in sorted(self.checksums.items())
        ]
        return [row for row in rows if not date or row[2] == date]

    def list(self, undated: str = "undated", date: str | None = None) -> Listing:
        listing = Listing()
        for relpath, digest, entry_date in self._files(undated, date):
            url = http.lineage_url(self.url, relpath, digest)
            fmt = file_format(relpath, self.config.format)
            if fmt is None:
                listing.skipped.append(
                    SkippedEntry(
                        url,
                        relpath,
                        entry_date,
                        "unsupported_format",
                        f"no reader for this file name (known: {', '.join(FORMATS)}; or set the source's format)",
                    )
                )
                continue
            try:
                size = http.size(http.file_url(self.url, relpath), self.connection)
            except http.FileGone as exc:
                listing.skipped.append(SkippedEntry(url, relpath, entry_date, "missing_file", str(exc)))
                continue
            # A size the server does not give is learnt when the file is fetched.
            listing.files.append(SourceFile(url, relpath, entry_date, size or 0, fmt))
        return listing

    def open(self, url: str, listed_size: int) -> Opened:
        address, digest = http.parse_lineage_url(url)
        try:
            local = http.download(address, digest, self.connection)
        except http.ChecksumMismatch as exc:
            raise RejectedFile("checksum_mismatch", str(exc)) from None
        except http.FileGone as exc:
            raise RejectedFile("missing_file", str(exc)) from None
        fs, path = storage.filesystem(str(local))
        return Opened(fs, path, local.stat().st_size)

    def origin(self) -> dict[str, Any]:
        return {**super().origin(), "url": self.url, "checksums": dict(sorted(self.checksums.items()))}

    def snapshot(self, dest: Path) -> dict[str, Any]:
        """The files whose bytes match their checksum; the others are named in the origin."""
        wanted = {relpath for relpath, _, _ in self._files("undated", None)}
        _remove_unwanted(dest, wanted)
        rejected = []
        for relpath, digest, _ in self._files("undated", None):
            target = dest / relpath
            if target.is_file() and storage.sha256(str(target)) == digest:
                continue
            try:
                local = http.download(http.file_url(self.url, relpath), digest, self.connection)
            except (http.ChecksumMismatch, http.FileGone) as exc:
                rejected.append(
                    {
                        "path": relpath,
                        "reason": "checksum_mismatch" if isinstance(exc, http.ChecksumMismatch) else "missing_file",
                        "detail": str(exc),
                    }
                )
                if target.exists():
                    target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.unlink()  # DVC may have linked it read-only to its cache
            shutil.copyfile(local, target)
        return {**self.origin(), "rejected": rejected}


_KINDS: dict[str, type[SourceLocation]] = {
    "local": FolderLocation,
    "s3": FolderLocation,
    "git": GitLocation,
    "http": HttpLocation,
}


def partition_date(relpath: str, undated: str) -> str:
    """The date of the ``date=YYYY-MM-DD/`` folder a file lies in (its first folder)."""
    parts = relpath.split("/")
    match = DATE_DIR.match(parts[0]) if len(parts) > 1 else None
    return match.group(1) if match else undated


def mirror(fs, root: str, dest: Path, exclude: AbstractSet[str] = frozenset()) -> None:
    """Copy every file under ``root`` to ``dest``, removing what is no longer there; a local
    file of the same size and modification time is kept, so DVC does not rehash it."""
    root = root.rstrip("/")
    wanted: dict[str, dict[str, Any]] = {}
    for path, info in fs.find(root, detail=True).items():
        rel = path[len(root) + 1 :]
        if info["type"] == "file" and rel not in exclude:
            wanted[rel] = info
    _remove_unwanted(dest, set(wanted))
    local = storage._is_local(fs)
    for rel, info in sorted(wanted.items()):
        target = dest / rel
        src = f"{root}/{rel}"
        if local:
            stat = os.stat(src)
            if target.exists() and target.stat().st_size == stat.st_size and target.stat().st_mtime == stat.st_mtime:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.unlink()  # DVC may have linked it read-only to its cache
            shutil.copy2(src, target)
        else:
            if target.exists() and target.stat().st_size == info["size"]:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.unlink()
            fs.get(src, str(target))


def _remove_unwanted(dest: Path, wanted: set[str]) -> None:
    if not dest.exists():
        return
    for path in sorted(dest.rglob("*"), reverse=True):
        rel = path.relative_to(dest).as_posix()
        if path.is_file() and rel not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
