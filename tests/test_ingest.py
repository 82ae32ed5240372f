"""Ingest: every input format, stable ids, partitions, and every kind of bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, write_jsonl
from tamis.cli import run_one
from tamis.dataset import Dataset
from tamis.pipeline import ConfigError

SPEECHES = REPO / "include/sample/web/date=2026-11-20/speeches.jsonl"


def real_docs(n: int) -> list[dict]:
    return [json.loads(line) for line in SPEECHES.read_text().splitlines()[:n]]


def ingest(pipeline, run_id="r1", **overrides):
    manifest = run_one(pipeline, "ingest", run_id, overrides=overrides or None)
    return manifest, Dataset(manifest["output"])


def assert_reconciles(manifest):
    c = manifest["counts"]
    assert c["in"] == c["kept"] + c["dropped"] + c["quarantined"]
    assert sum(manifest["drop_reasons"].values()) == c["dropped"]
    assert sum(manifest["quarantine_reasons"].values()) == c["quarantined"]


def test_reads_every_format_with_source_and_date(tmp_path, make_pipeline):
    docs = real_docs(6)
    write_jsonl(tmp_path / "web/date=2026-11-20/a.jsonl", docs[:2])
    (tmp_path / "web/date=2026-11-21").mkdir(parents=True)
    (tmp_path / "web/date=2026-11-21/b.jsonl.gz").write_bytes(
        gzip.compress("".join(json.dumps(d) + "\n" for d in docs[2:4]).encode())
    )
    (tmp_path / "books").mkdir()
    pq.write_table(
        pa.table({"id": ["x", "y"], "text": [d["text"] for d in docs[4:6]]}), tmp_path / "books/part.parquet"
    )
    (tmp_path / "notes/date=2026-11-20").mkdir(parents=True)
    (tmp_path / "notes/date=2026-11-20/hello.txt").write_text("Bonjour tout le monde.\n")
    pipeline = make_pipeline(
        {
            "web": {"path": str(tmp_path / "web"), "id_field": "id"},
            "books": {"path": str(tmp_path / "books"), "id_field": "id"},
            "notes": {"path": str(tmp_path / "notes"), "format": "text"},
        }
    )

    manifest, dataset = ingest(pipeline)
    table = dataset.read().sort_by("id")

    assert manifest["counts"] == {"in": 7, "kept": 7, "dropped": 0, "quarantined": 0}
    assert table.column("id").to_pylist() == sorted(
        [f"web/{d['id']}" for d in docs[:4]] + ["books/x", "books/y", "notes/date=2026-11-20/hello.txt"]
    )
    by_id = {r["id"]: r for r in table.to_pylist()}
    assert by_id[f"web/{docs[3]['id']}"]["date"] == "2026-11-21"
    assert by_id["books/x"]["date"] == "undated"
    assert by_id["notes/date=2026-11-20/hello.txt"]["text"] == "Bonjour tout le monde.\n"
    assert by_id["books/y"]["text"] == docs[5]["text"]


def test_generated_ids_are_stable_across_runs(tmp_path, make_pipeline):
    rows = [{"text": d["text"]} for d in real_docs(5)]
    write_jsonl(tmp_path / "web/a.jsonl", rows)
    pipeline = make_pipeline({"web": {"path": str(tmp_path / "web")}})
    _, first = ingest(pipeline, "r1")
    _, second = ingest(pipeline, "r2")
    ids = first.read().column("id").to_pylist()
    assert ids == second.read().column("id").to_pylist()
    assert len(set(ids)) == 5 and all(i.startswith("web/") for i in ids)


def test_date_parameter_reads_only_that_partition(tmp_path, make_pipeline):
    docs = real_docs(3)
    write_jsonl(tmp_path / "web/date=2026-11-20/a.jsonl", docs[:1])
    write_jsonl(tmp_path / "web/date=2026-11-21/a.jsonl", docs[1:3])
    pipeline = make_pipeline({"web": {"path": str(tmp_path / "web"), "id_field": "id"}})
    manifest, dataset = ingest(pipeline, date="2026-11-21")
    assert manifest["counts"]["kept"] == 2
    assert set(dataset.read().column("date").to_pylist()) == {"2026-11-21"}


def test_bad_json_lines_are_quarantined_with_file_line_and_reason(tmp_path, make_pipeline):
    good = real_docs(3)
    lines = [
        json.dumps(good[0]).encode(),
        b'{"id": "broken", "text": "unterminated',  # malformed JSON
        b'{"id": "latin1", "text": "caf\xe9"}',  # invalid UTF-8
        json.dumps({"id": "no-text", "title": "x"}).encode(),  # missing text field
        json.dumps({"id": "number", "text": 42}).encode(),  # wrong type
        json.dumps({"id": "blank", "text": "   \n "}).encode(),  # empty text
        b"[1, 2, 3]",  # not an object
        json.dumps(good[1]).encode(),
    ]
    path = tmp_path / "web/a.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    pipeline = make_pipeline({"web": {"path": str(tmp_path / "web"), "id_field": "id"}})

    manifest, dataset = ingest(pipeline)

    assert_reconciles(manifest)
    assert manifest["counts"] == {"in": 8, "kept": 2, "dropped": 1, "quarantined": 5}
    assert manifest["drop_reasons"] == {"empty_text": 1}
    quarantine = dataset.read_side("quarantine").sort_by("line").to_pylist()
    assert [(q["line"], q["reason"]) for q in quarantine] == [
        (2, "malformed_json"),
        (3, "invalid_utf8"),
        (4, "missing_text_field"),
        (5, "bad_field_type"),
        (7, "not_an_object"),
    ]
    assert all(q["source_file"].endswith("web/a.jsonl") for q in quarantine)
    assert dataset.read().column("id").to_pylist() == [f"web/{good[0]['id']}", f"web/{good[1]['id']}"]


def test_zero_byte_file_is_one_quarantine_entry(tmp_path, make_pipeline):
    write_jsonl(tmp_path / "web/a.jsonl", real_docs(2))
    (tmp_path / "web/empty.jsonl").write_bytes(b"")
    pipeline = make_pipeline({"web": {"path": str(tmp_path / "web"), "id_field": "id"}})
    manifest, dataset = ingest(pipeline)
    assert_reconciles(manifest)
    assert manifest["quarantine_reasons"] == {"empty_file": 1}
    (entry,) = dataset.read_side("quarantine").to_pylist()
    assert entry["source_file"].endswith("web/empty.jsonl")


def test_wrong_schema_and_corrupt_parquet_are_quarantined_by_file(tmp_path, make_pipeline):
    (tmp_path / "books").mkdir()
    pq.write_table(pa.table({"id": ["a"], "body": ["text under another name"]}), tmp_path / "books/wrong.parquet")
    pq.write_table(pa.table({"id": ["b"], "text": [3]}), tmp_path / "books/typed.parquet")
    (tmp_path / "books/corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    pq.write_table(pa.table({"id": ["c"], "text": ["A fine document."]}), tmp_path / "books/good.parquet")
    pipeline = make_pipeline({"books": {"path": str(tmp_path / "books"), "id_field": "id"}})

    manifest, dataset = ingest(pipeline)

    assert_reconciles(manifest)
    assert manifest["counts"]["kept"] == 1
    assert manifest["quarantine_reasons"] == {"schema_mismatch": 2, "unreadable_parquet": 1}
    details = {q["source_file"].rsplit("/", 1)[-1]: q["detail"] for q in dataset.read_side("quarantine").to_pylist()}
    assert "missing column 'text'" in details["wrong.parquet"]
    assert "not a string" in details["typed.parquet"]


def test_a_50_mb_document_is_quarantined_not_loaded_downstream(tmp_path, make_pipeline):
    big = "word " * (10 * 1024 * 1024)  # 50 MiB on one line
    write_jsonl(tmp_path / "web/a.jsonl", [{"id": "big", "text": big}] + real_docs(1))
    pipeline = make_pipeline({"web": {"path": str(tmp_path / "web"), "id_field": "id"}})
    manifest, dataset = ingest(pipeline)
    assert_reconciles(manifest)
    assert manifest["quarantine_reasons"] == {"doc_too_large": 1}
    (entry,) = dataset.read_side("quarantine").to_pylist()
    assert entry["id"] == "web/big" and entry["reason"] == "doc_too_large"
    assert len(entry["sample"]) <= 200
    assert dataset.read().num_rows == 1


def test_truncated_gzip_keeps_the_lines_before_the_damage(tmp_path, make_pipeline):
    payload = gzip.compress("".join(json.dumps(d) + "\n" for d in real_docs(4)).encode())
    (tmp_path / "web").mkdir()
    (tmp_path / "web/a.jsonl.gz").write_bytes(payload[: len(payload) // 2])
    pipeline = make_pipeline({"web": {"path": str(tmp_path / "web"), "id_field": "id"}})
    manifest, _ = ingest(pipeline)
    assert_reconciles(manifest)
    assert manifest["quarantine_reasons"] == {"unreadable_file": 1}


def test_sample_fraction_is_deterministic(tmp_path, make_pipeline):
    write_jsonl(tmp_path / "web/a.jsonl", [{"text": f"document number {i}"} for i in range(400)])
    pipeline = make_pipeline({"web": {"path": str(tmp_path / "web")}})
    first, d1 = ingest(pipeline, "r1", sample_fraction=0.25)
    second, d2 = ingest(pipeline, "r2", sample_fraction=0.25)
    assert_reconciles(first)
    assert 60 < first["counts"]["kept"] < 140
    assert first["drop_reasons"] == {"sampled_out": 400 - first["counts"]["kept"]}
    assert d1.read().column("id").to_pylist() == d2.read().column("id").to_pylist()


def test_unknown_source_is_a_clear_error(tmp_path, make_pipeline):
    write_jsonl(tmp_path / "web/a.jsonl", real_docs(1))
    pipeline = make_pipeline({"web": {"path": str(tmp_path / "web")}})
    with pytest.raises(ValueError, match="unknown sources \\['books'\\]"):
        ingest(pipeline, sources=["books"])


def test_one_invalid_utf8_byte_quarantines_only_its_line(tmp_path, make_pipeline):
    good = real_docs(3)
    lines = [
        json.dumps(good[0]).encode(),
        b'{"id": "a", "text": "caf\xe9"}',
        json.dumps(good[1]).encode(),
        b'{"id": "caf\xe9", "text": "a fine text"}',
        json.dumps(good[2]).encode(),
    ]
    path = tmp_path / "web/a.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    pipeline = make_pipeline({"web": {"path": str(tmp_path / "web"), "id_field": "id"}})

    manifest, dataset = ingest(pipeline)

    assert_reconciles(manifest)
    assert manifest["counts"] == {"in": 5, "kept": 3, "dropped": 0, "quarantined": 2}
    quarantine = dataset.read_side("quarantine").sort_by("line").to_pylist()
    assert [(q["line"], q["reason"]) for q in quarantine] == [(2, "invalid_utf8"), (4, "invalid_utf8")]
    assert all(q["source_file"].endswith("web/a.jsonl") for q in quarantine)
    assert sorted(dataset.read().column("id").to_pylist()) == sorted(f"web/{d['id']}" for d in good)


def test_a_line_longer_than_max_doc_bytes_is_skipped_while_streaming(tmp_path, make_pipeline):
    docs = real_docs(3)
    small = max(len(json.dumps(d)) for d in docs) + 1
    long_line = json.dumps({"id": "long", "text": "word " * (small // 5 + 100)})
    lines = [json.dumps(docs[0]), long_line, json.dumps(docs[1]), long_line, json.dumps(docs[2])]
    (tmp_path / "web").mkdir()
    (tmp_path / "web/a.jsonl").write_text("\n".join(lines) + "\n")
    pipeline = make_pipeline({"web": {"path": str(tmp_path / "web"), "id_field": "id"}})

    # Blocks smaller and larger than the long lines: the verdict must not depend on where a block ends.
    for run_id, block_bytes in (("small-blocks", 1024), ("large-blocks", 1 << 20)):
        manifest, dataset = ingest(pipeline, run_id, max_doc_bytes=small, block_bytes=block_bytes)
        assert_reconciles(manifest)
        assert manifest["quarantine_reasons"] == {"doc_too_large": 2}
        quarantine = dataset.read_side("quarantine").sort_by("line").to_pylist()
        assert [(q["line"], q["id"]) for q in quarantine] == [(2, "web/long"), (4, "web/long")]
        assert all(f"> max_doc_bytes {small}" in q["detail"] and len(q["sample"]) <= 200 for q in quarantine)
        assert sorted(dataset.read().column("id").to_pylist()) == sorted(f"web/{d['id']}" for d in docs)


def test_a_600_mb_line_in_a_small_gzip_is_quarantined_in_bounded_memory(tmp_path):
    """The line is skipped while it streams in: under a 1 GiB address-space cap the stage
    finishes, where buffering the line (and parsing it) would need several times its size."""
    source = tmp_path / "web"
    source.mkdir()
    with gzip.open(source / "a.jsonl.gz", "wb", compresslevel=1) as f:
        f.write(json.dumps(real_docs(1)[0]).encode() + b'\n{"id": "huge", "text": "')
        chunk = b"word " * (1 << 20)
        for _ in range(120):  # 600 MiB
            f.write(chunk)
        f.write(b'"}\n' + json.dumps(real_docs(2)[1]).encode() + b"\n")
    config = tmp_path / "p.yaml"
    config.write_text(
        json.dumps(
            {
                "name": "big",
                "storage_root": str(tmp_path / "store"),
                "sources": {"web": {"path": str(source), "id_field": "id"}},
                "stages": {"ingest": {}},
            }
        )
    )
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from tamis.cli import main\n"
        f"sys.exit(main(['run', 'ingest', '--pipeline', {str(config)!r}, '--run-id', 'r1', '--workers', '1']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    dataset = Dataset(str(tmp_path / "store/runs/r1/ingest"))
    assert dataset.manifest()["counts"] == {"in": 3, "kept": 2, "dropped": 0, "quarantined": 1}
    (entry,) = dataset.read_side("quarantine").to_pylist()
    assert (entry["line"], entry["id"], entry["reason"]) == (2, "web/huge", "doc_too_large")
    assert entry["source_file"].endswith("web/a.jsonl.gz")


def write_row_groups(path, table, rows_per_group):
    pq.write_table(table, path, row_group_size=rows_per_group)
    return pq.ParquetFile(path).metadata


def test_parquet_bytes_that_are_not_utf8_quarantine_their_record(tmp_path, make_pipeline):
    texts = [d["text"] for d in real_docs(3)]
    (tmp_path / "books").mkdir()
    pq.write_table(
        pa.table({"id": pa.array([b"a", b"caf\xe9", b"c"], pa.binary()), "text": texts}),
        tmp_path / "books/binary_id.parquet",
    )
    # A writer that declared a string column but stored other bytes in it.
    raw = pa.array([texts[0].encode(), b"caf\xe9", texts[2].encode()], pa.binary())
    mislabelled = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())
    pq.write_table(pa.table({"id": ["x", "y", "z"], "text": mislabelled}), tmp_path / "books/bad_text.parquet")
    pipeline = make_pipeline({"books": {"path": str(tmp_path / "books"), "id_field": "id"}})

    manifest, dataset = ingest(pipeline)

    assert_reconciles(manifest)
    assert manifest["counts"] == {"in": 6, "kept": 4, "dropped": 0, "quarantined": 2}
    quarantine = {q["source_file"].rsplit("/", 1)[-1]: q for q in dataset.read_side("quarantine").to_pylist()}
    assert {name: (q["line"], q["reason"]) for name, q in quarantine.items()} == {
        "binary_id.parquet": (2, "invalid_utf8"),
        "bad_text.parquet": (2, "invalid_utf8"),
    }
    assert "'id'" in quarantine["binary_id.parquet"]["detail"]
    assert "'text'" in quarantine["bad_text.parquet"]["detail"]
    assert sorted(dataset.read().column("id").to_pylist()) == ["books/a", "books/c", "books/x", "books/z"]


def test_parquet_column_of_a_type_that_is_not_text_quarantines_the_file(tmp_path, make_pipeline):
    (tmp_path / "books").mkdir()
    pq.write_table(
        pa.table({"id": ["a"], "url": [{"host": "example.org", "path": "/"}], "text": ["A fine document."]}),
        tmp_path / "books/struct_url.parquet",
    )
    pq.write_table(
        pa.table({"id": ["b"], "url": ["https://example.org/b"], "text": ["Another document."]}),
        tmp_path / "books/good.parquet",
    )
    pipeline = make_pipeline({"books": {"path": str(tmp_path / "books"), "id_field": "id", "url_field": "url"}})

    manifest, dataset = ingest(pipeline)

    assert_reconciles(manifest)
    assert manifest["counts"]["kept"] == 1
    (entry,) = dataset.read_side("quarantine").to_pylist()
    assert entry["reason"] == "schema_mismatch" and entry["source_file"].endswith("struct_url.parquet")
    assert "'url'" in entry["detail"] and "struct" in entry["detail"]


def test_a_corrupt_parquet_page_quarantines_its_row_group_and_keeps_the_others(tmp_path, make_pipeline):
    docs = real_docs(9)
    (tmp_path / "books").mkdir()
    path = tmp_path / "books/damaged.parquet"
    metadata = write_row_groups(path, pa.table({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]}), 3)
    text_chunk = metadata.row_group(1).column(1)
    page = text_chunk.dictionary_page_offset or text_chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[page : page + 8] = b"\xff" * 8  # the page header no longer decodes
    path.write_bytes(bytes(data))
    pipeline = make_pipeline({"books": {"path": str(tmp_path / "books"), "id_field": "id"}})

    manifest, dataset = ingest(pipeline)

    assert_reconciles(manifest)
    assert manifest["counts"]["kept"] == 6
    (entry,) = dataset.read_side("quarantine").to_pylist()
    assert entry["reason"] == "unreadable_row_group" and entry["source_file"].endswith("damaged.parquet")
    assert "row group 1" in entry["detail"]
    kept = set(dataset.read().column("id").to_pylist())
    assert kept == {f"books/{d['id']}" for d in docs[:3] + docs[6:]}


@pytest.mark.parametrize("name", ["x/y", "..", "x/../../OUTSIDE", ".hidden", "a b", ""])
def test_unsafe_source_names_are_refused_when_the_pipeline_loads(tmp_path, make_pipeline, name):
    write_jsonl(tmp_path / "web/a.jsonl", real_docs(1))
    with pytest.raises(ConfigError, match="source name"):
        make_pipeline({name: {"path": str(tmp_path / "web")}})
    assert not (tmp_path / "OUTSIDE").exists()


def test_source_names_with_letters_digits_dots_dashes_and_underscores_load(tmp_path, make_pipeline):
    write_jsonl(tmp_path / "web/a.jsonl", real_docs(1))
    pipeline = make_pipeline({name: {"path": str(tmp_path / "web")} for name in ("web", "web_en-2", "books.v2")})
    assert sorted(pipeline.sources) == ["books.v2", "web", "web_en-2"]
