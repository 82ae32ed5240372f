"""Source readers and listing: every line, record and entry is read or accounted for."""

from __future__ import annotations

import io
import json
import os
import random

import pytest

from conftest import REPO, write_jsonl
from tamis import storage
from tamis.cli import run_one
from tamis.dataset import Dataset
from tamis.sources import list_source
from tamis.sources.jsonl import HEAD_BYTES, Block, LineBlocks, LongLine, given_id

SPEECHES = REPO / "include/sample/web/date=2026-11-20/speeches.jsonl"


def real_docs(n: int) -> list[dict]:
    return [json.loads(line) for line in SPEECHES.read_text().splitlines()[:n]]


@pytest.mark.parametrize("seed", range(6))
def test_line_blocks_give_back_every_line_once_with_its_number_whatever_the_block_size(seed):
    rng = random.Random(seed)
    lines = [b"x" * rng.choice([0, 1, 5, 40, 90, 300]) for _ in range(200)]
    data = b"\n".join(lines) + (b"\n" if seed % 2 else b"")  # with and without a final newline
    max_line = 64

    pieces = list(LineBlocks(io.BytesIO(data), block_bytes=rng.choice([1, 7, 64, 100, 1000]), max_line_bytes=max_line))

    seen = {}
    for piece in pieces:
        if isinstance(piece, LongLine):
            seen[piece.line] = ("long", piece.size)
        else:
            assert isinstance(piece, Block) and piece.data.endswith(b"\n")
            assert piece.lines == piece.data.count(b"\n")
            for k, line in enumerate(piece.data.split(b"\n")[:-1]):
                seen[piece.first_line + k] = ("kept", line)
    expected = {k + 1: ("long", len(line)) if len(line) > max_line else ("kept", line) for k, line in enumerate(lines)}
    assert seen == expected


def test_a_long_line_comes_out_as_its_size_and_head_while_it_streams_past():
    class Stream(io.RawIOBase):
        """Hands out a 100 MiB line, then a short one, 1 MiB at a time."""

        def __init__(self):
            self.left = 100

        def read(self, n=-1):
            self.left -= 1
            if self.left >= 0:
                return b"y" * (1 << 20)
            return b"\nshort\n" if self.left == -1 else b""

    pieces = list(LineBlocks(Stream(), block_bytes=1 << 20, max_line_bytes=4 << 20))

    assert [type(p) for p in pieces] == [LongLine, Block]
    assert (pieces[0].line, pieces[0].size, len(pieces[0].head)) == (1, 100 << 20, HEAD_BYTES)
    assert (pieces[1].first_line, pieces[1].data) == (2, b"short\n")


def test_the_id_of_a_cut_line_is_read_from_its_top_level_only():
    assert given_id(b'{"id": "a1", "text": "word word wo', "id") == "a1"
    assert given_id(b'{"meta": {"id": "nested"}, "id": 7, "text": "wo', "id") == "7"
    assert given_id(b'{"text": "word word wo', "id") is None
    assert given_id(b'{"text": "short", "id": "after-the-text"}', "id") == "after-the-text"
    assert given_id(b"not json at all", "id") is None
    assert given_id(b'{"id": "a1"}', None) is None


@pytest.fixture
def odd_source(tmp_path):
    """A source holding one good file next to every kind of entry that cannot be read."""
    day = tmp_path / "web/date=2026-11-20"
    write_jsonl(day / "good.jsonl", real_docs(2))
    os.mkfifo(day / "pipe.jsonl")
    (day / "dangling.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    (day / "loop_a.jsonl").symlink_to(day / "loop_b.jsonl")
    (day / "loop_b.jsonl").symlink_to(day / "loop_a.jsonl")
    (day / "folder.jsonl").mkdir()
    (day / "notes.csv").write_text("a,b\n")
    (day / "_SUCCESS").write_text("")  # writers' markers and hidden files are not data
    (day / ".part.jsonl.crc").write_text("")
    return tmp_path / "web"


@pytest.mark.timeout(60)
def test_entries_that_are_not_readable_files_are_counted_with_a_reason(odd_source, make_pipeline):
    pipeline = make_pipeline({"web": {"path": str(odd_source), "id_field": "id"}})

    manifest = run_one(pipeline, "ingest", "r1")

    counts = manifest["counts"]
    assert counts["in"] == counts["kept"] + counts["dropped"] + counts["quarantined"]
    assert counts["kept"] == 2
    assert manifest["quarantine_reasons"] == {
        "dangling_symlink": 1,
        "not_a_regular_file": 2,
        "symlink_loop": 2,
        "unsupported_format": 1,
    }
    entries = {
        q["source_file"].rsplit("/", 1)[-1]: q for q in Dataset(manifest["output"]).read_side("quarantine").to_pylist()
    }
    assert {name: q["reason"] for name, q in entries.items()} == {
        "pipe.jsonl": "not_a_regular_file",
        "folder.jsonl": "not_a_regular_file",
        "dangling.jsonl": "dangling_symlink",
        "loop_a.jsonl": "symlink_loop",
        "loop_b.jsonl": "symlink_loop",
        "notes.csv": "unsupported_format",
    }
    assert "FIFO" in entries["pipe.jsonl"]["detail"]
    assert "nowhere.jsonl" in entries["dangling.jsonl"]["detail"]


def test_skipped_entries_of_other_dates_are_not_counted_on_a_nightly_run(odd_source, make_pipeline):
    write_jsonl(odd_source / "date=2026-11-21/next.jsonl", real_docs(3)[2:])
    pipeline = make_pipeline({"web": {"path": str(odd_source), "id_field": "id"}})
    manifest = run_one(pipeline, "ingest", "r1", overrides={"date": "2026-11-21"})
    assert manifest["counts"] == {"in": 1, "kept": 1, "dropped": 0, "quarantined": 0}


def test_a_symlinked_folder_is_read_and_a_link_back_to_its_parent_is_a_loop(tmp_path, make_pipeline):
    elsewhere = tmp_path / "elsewhere/date=2026-11-20"
    write_jsonl(elsewhere / "a.jsonl", real_docs(2))
    (tmp_path / "web").mkdir()
    (tmp_path / "web/date=2026-11-20").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "again").symlink_to(elsewhere, target_is_directory=True)
    pipeline = make_pipeline({"web": {"path": str(tmp_path / "web"), "id_field": "id"}})

    manifest = run_one(pipeline, "ingest", "r1")

    assert manifest["counts"]["kept"] == 2
    assert manifest["quarantine_reasons"] == {"symlink_loop": 1}
    assert set(Dataset(manifest["output"]).read().column("date").to_pylist()) == {"2026-11-20"}


def test_a_folder_named_like_a_data_file_is_read_as_its_parts(tmp_path, make_pipeline):
    docs = real_docs(3)
    write_jsonl(tmp_path / "web/export.jsonl/part-0.jsonl", docs[:2])
    write_jsonl(tmp_path / "web/export.jsonl/part-1.jsonl", docs[2:])
    pipeline = make_pipeline({"web": {"path": str(tmp_path / "web"), "id_field": "id"}})
    manifest = run_one(pipeline, "ingest", "r1")
    assert manifest["counts"] == {"in": 3, "kept": 3, "dropped": 0, "quarantined": 0}


def test_an_object_store_source_is_listed_by_date_with_its_unreadable_objects(tmp_path):
    import fsspec

    store = fsspec.filesystem("memory")
    for path in (
        "web/date=2026-11-20/a.jsonl",
        "web/date=2026-11-20/_SUCCESS",
        "web/date=2026-11-21/b.jsonl.gz",
        "web/loose.parquet",
        "web/date=2026-11-21/notes.md",
    ):
        store.pipe(f"/{tmp_path.name}/{path}", b"{}\n")
    root = f"memory://{tmp_path.name}/web"

    listing = list_source(root)

    assert [(f.relpath, f.date, f.format) for f in listing.files] == [
        ("date=2026-11-20/a.jsonl", "2026-11-20", "jsonl"),
        ("date=2026-11-21/b.jsonl.gz", "2026-11-21", "jsonl.gz"),
        ("loose.parquet", "undated", "parquet"),
    ]
    assert all(storage.read_bytes(f.url) == b"{}\n" for f in listing.files)
    assert [(s.relpath, s.reason) for s in listing.skipped] == [("date=2026-11-21/notes.md", "unsupported_format")]
    assert [f.relpath for f in list_source(root, date="2026-11-21").files] == ["date=2026-11-21/b.jsonl.gz"]
