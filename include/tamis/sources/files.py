"""A source's files, by date partition, and every entry that cannot be read.

A source is a folder, local or in an object store, laid out as ``date=YYYY-MM-DD/<files>``;
files outside any date folder get the date named ``undated``. Names that start with '.' or
'_' (writers' markers such as ``_SUCCESS``, checksum files) are not data and are passed
over. Everything else is either a file to read or a :class:`SkippedEntry` with its reason:
a FIFO or device (``not_a_regular_file``; never opened, so a FIFO cannot hang a run), a
dangling symlink, a symlink loop, a folder named like a data file with nothing in it, a file
of no known format. A run counts each one, so nothing in a source disappears without a
trace. Symlinked folders are followed, except back into a folder above them.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

from fsspec.implementations.local import LocalFileSystem

from tamis.sources.chunk import open_target

FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".jsonl.gz": "jsonl.gz",
    ".json.gz": "jsonl.gz",
    ".parquet": "parquet",
    ".txt": "text",
    ".warc": "warc",
    ".warc.gz": "warc",
}
DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True)
class SourceFile:
    url: str
    relpath: str  # its path inside the source
    date: str
    size: int
    format: str


@dataclass(frozen=True)
class SkippedEntry:
    url: str
    relpath: str
    date: str
    reason: str
    detail: str


@dataclass
class Listing:
    files: list[SourceFile] = field(default_factory=list)
    skipped: list[SkippedEntry] = field(default_factory=list)


def file_format(name: str, configured: str = "auto") -> str | None:
    if configured != "auto":
        return configured
    name = name.rsplit("/", 1)[-1].lower()
    for suffix, fmt in sorted(FORMATS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return fmt
    return None


def list_source(
    url: str, configured_format: str = "auto", undated: str = "undated", date: str | None = None, fs=None
) -> Listing:
    """The files of the source at ``url`` and its skipped entries, in path order; with
    ``date``, only that partition's. ``fs``: the filesystem to list it through (an object store
    reached with the source's own credentials)."""
    fs, root = open_target(url, fs)
    root = root.rstrip("/")
    prefix = url.split("://", 1)[0] + "://" if "://" in url else ""
    entries = _walk_local(root) if isinstance(fs, LocalFileSystem) else _walk_store(fs, root)
    listing = Listing()
    for relpath, kind, size, detail in entries:
        parts = relpath.split("/")
        # A skipped entry may be the date folder itself (a dangling link named date=...).
        match = DATE_DIR.match(parts[0]) if len(parts) > 1 or kind != "file" else None
        entry_date = match.group(1) if match else undated
        if date and entry_date != date:
            continue
        entry_url = f"{prefix}{root}/{relpath}"
        fmt = file_format(relpath, configured_format) if kind == "file" else None
        if kind == "file" and fmt is not None:
            listing.files.append(SourceFile(entry_url, relpath, entry_date, size, fmt))
        elif kind == "file":
            known = ", ".join(FORMATS)
            listing.skipped.append(
                SkippedEntry(
                    entry_url,
                    relpath,
                    entry_date,
                    "unsupported_format",
                    f"no reader for this file name (known: {known}; or set the source's format)",
                )
            )
        else:
            assert detail is not None, "the walk says why it skips an entry"
            listing.skipped.append(SkippedEntry(entry_url, relpath, entry_date, kind, detail))
    listing.files.sort(key=lambda f: f.relpath)
    listing.skipped.sort(key=lambda s: s.relpath)
    return listing


# (path inside the source, "file" or the reason it is skipped, size, detail)
Entry = tuple[str, str, int, str | None]


def _walk_local(root: str) -> Iterator[Entry]:
    return _walk_folder(root, "", frozenset({_identity(os.stat(root))}))


def _walk_folder(folder: str, relfolder: str, above: frozenset) -> Generator[Entry, None, int]:
    """Yields the folder's entries; returns how many it yielded."""
    count = 0
    try:
        children = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        yield relfolder, "unreadable_entry", 0, f"the folder cannot be listed: {exc.strerror}"
        return 1
    for child in children:
        if child.name.startswith((".", "_")):
            continue
        relpath = f"{relfolder}/{child.name}" if relfolder else child.name
        try:
            info = os.stat(child.path)  # through symlinks
        except OSError as exc:
            count += 1
            yield relpath, *_broken(child, exc)
            continue
        if stat.S_ISDIR(info.st_mode):
            if _identity(info) in above:
                count += 1
                target = os.readlink(child.path) if child.is_symlink() else os.path.realpath(child.path)
                yield relpath, "symlink_loop", 0, f"leads to {target}, a folder above it"
                continue
            found = yield from _walk_folder(child.path, relpath, above | {_identity(info)})
            if not found and file_format(child.name) is not None:
                count += 1
                yield relpath, "not_a_regular_file", 0, "a folder named like a data file, with no file in it"
            count += found
        elif stat.S_ISREG(info.st_mode):
            count += 1
            yield relpath, "file", info.st_size, None
        else:
            count += 1
            yield (
                relpath,
                "not_a_regular_file",
                0,
                f"a {_KINDS.get(stat.S_IFMT(info.st_mode), 'special file')}, not a regular file",
            )
    return count


_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device"}


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _broken(entry: os.DirEntry, exc: OSError) -> tuple[str, int, str]:
    if entry.is_symlink():
        target = os.readlink(entry.path)
        if exc.errno == errno.ELOOP:
            return "symlink_loop", 0, f"a symlink to {target}, which leads back to itself"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "dangling_symlink", 0, f"a symlink to {target}, which does not exist"
    return "unreadable_entry", 0, f"{type(exc).__name__}: {exc.strerror}"


def _walk_store(fs, root: str) -> Iterator[Entry]:
    """An object store lists only objects: each is a file unless it says otherwise."""
    for path, info in sorted(fs.find(root, detail=True).items()):
        relpath = path[len(root) + 1 :]
        if any(part.startswith((".", "_")) for part in relpath.split("/")):
            continue
        if info["type"] == "file":
            yield relpath, "file", info["size"], None
        else:
            yield relpath, "not_a_regular_file", 0, f"a {info['type']} entry, not a file"
