"""Index: metadata index by id, lookups by id and by predicate, and the Megatron export."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from conftest import TEST_DATA, read_jsonl, write_dataset
from tamis import export, lookup, storage
from tamis.dataset import Dataset
from tamis.runner import run_stage
from tamis.stages.index import IndexBuildError, IndexStage

CORPUS = [
    ("web", "web_en/wikipedia_en_sample.jsonl.gz", 60, 1200),
    ("books", "web_en/us_presidential_speeches.jsonl.gz", 30, 2000),
    ("code", "code/code_01.jsonl.gz", 120, 700),
]
SEQ_LEN = 512
EOS = 0


@pytest.fixture(scope="module")
def documents() -> pa.Table:
    """Tokenized documents with language and quality columns, as the stages before mix leave them."""
    rows = []
    for source, path, n, chars in CORPUS:
        for i, record in enumerate(read_jsonl(TEST_DATA / path, n)):
            text = record["text"][:chars]
            rows.append(
                {
                    "id": f"{source}/{i:04d}",
                    "source": source,
                    "date": "2026-11-20",
                    "url": None,
                    "text": text,
                    # a real, if crude, signal: code and prose are told apart by their symbol density
                    "lang": "en" if i % 5 else "fr",
                    "quality_symbol_ratio": sum(not c.isalnum() and not c.isspace() for c in text) / max(len(text), 1),
                }
            )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|eos|>"]
    )
    tokenizer.train_from_iterator([r["text"] for r in rows], trainer)
    assert tokenizer.token_to_id("<|eos|>") == EOS
    ids = [e.ids for e in tokenizer.encode_batch([r["text"] for r in rows])]
    table = pa.Table.from_pylist(rows)
    table = table.append_column("input_ids", pa.array(ids, pa.list_(pa.int32())))
    return table.append_column("token_count", pc.cast(pc.list_value_length(table.column("input_ids")), pa.int32()))


def pack(docs: pa.Table, seq_len: int) -> pa.Table:
    """Pack documents end to end, EOS after each, into rows of ``seq_len`` (the pack stage's schema)."""
    stream, owners, starts = [], [], []
    for doc_id, ids in zip(docs.column("id").to_pylist(), docs.column("input_ids").to_pylist()):
        starts.append(len(stream))
        owners.append(doc_id)
        stream.extend(ids + [EOS])
    rows = []
    for row_start in range(0, len(stream), seq_len):
        chunk = stream[row_start : row_start + seq_len]
        n_pad = seq_len - len(chunk)
        doc_ids, offsets = [], []
        for doc_id, start, end in zip(owners, starts, starts[1:] + [len(stream)]):
            if start < row_start + seq_len and end > row_start:
                doc_ids.append(doc_id)
                offsets.append(max(start - row_start, 0))
        rows.append(
            {
                "id": f"seq/{len(rows):06d}",
                "input_ids": chunk + [EOS] * n_pad,
                "doc_ids": doc_ids,
                "doc_offsets": offsets,
                "source": [d.split("/")[0] for d in doc_ids],
                "n_pad": n_pad,
            }
        )
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("input_ids", pa.list_(pa.int32())),
            ("doc_ids", pa.list_(pa.string())),
            ("doc_offsets", pa.list_(pa.int32())),
            ("source", pa.list_(pa.string())),
            ("n_pad", pa.int32()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def write_parts(root: Path, table: pa.Table, parts: int = 2, row_group_rows: int = 50) -> str:
    step = -(-table.num_rows // parts)
    return write_dataset(root, [table.slice(k * step, step) for k in range(parts)], row_group_size=row_group_rows)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, documents):
    """A run folder with mix (documents), pack (sequences) and index (the stage under test)."""
    run = tmp_path_factory.mktemp("run")
    write_parts(run / "mix", documents, parts=3)
    packed = pack(documents, SEQ_LEN)
    pack_url = write_parts(run / "pack", packed, parts=2)
    manifest = run_stage(IndexStage({"row_group_rows": 32}), pack_url, str(run / "index"), workers=2)
    return {"run": run, "url": str(run / "index"), "manifest": manifest, "packed": packed}


def test_counts_reconcile_and_sequences_pass_through(indexed):
    c = indexed["manifest"]["counts"]
    assert c["in"] == c["kept"] == indexed["packed"].num_rows
    assert c["dropped"] == c["quarantined"] == 0
    assert (
        Dataset(indexed["url"]).read(["input_ids"]).column("input_ids").to_pylist()
        == indexed["packed"].column("input_ids").to_pylist()
    )


def test_metadata_index_is_sorted_by_id_in_small_row_groups(indexed, documents):
    parquet = pq.ParquetFile(Path(indexed["url"]) / "_index" / "metadata.parquet")
    table = parquet.read()
    ids = table.column("id").to_pylist()
    assert ids == sorted(documents.column("id").to_pylist())
    assert parquet.metadata.num_row_groups == -(-len(ids) // 32)
    assert {
        "id",
        "source",
        "lang",
        "quality_symbol_ratio",
        "token_count",
        "shard",
        "row_group",
        "row",
        "seq",
        "seq_offset",
    } <= set(table.column_names)
    assert "text" not in table.column_names and "input_ids" not in table.column_names
    assert indexed["manifest"]["metrics"]["index.documents"] == documents.num_rows


def test_get_returns_the_full_record_reading_one_row_group(indexed, documents):
    for doc_id in ["books/0007", "code/0119", "web/0000"]:
        record = lookup.get(indexed["url"], doc_id)
        original = documents.filter(pc.equal(documents.column("id"), doc_id)).to_pylist()[0]
        assert record["text"] == original["text"]
        assert record["token_count"] == original["token_count"]
        assert record["lang"] == original["lang"]
    parquet = pq.ParquetFile(Path(indexed["url"]) / "_index" / "metadata.parquet")
    assert len(lookup._row_groups_holding(parquet, "books/0007")) == 1
    assert lookup.get(indexed["url"], "web/9999") is None


def test_document_tokens_come_back_from_the_packed_binary(indexed, documents):
    sample = documents.take(list(range(0, documents.num_rows, 7)))
    pieces = lookup.query(indexed["url"], "true", columns=["id", "n_pieces"])
    n_pieces = dict(zip(pieces.column("id").to_pylist(), pieces.column("n_pieces").to_pylist()))
    assert {n_pieces[i] == 1 for i in sample.column("id").to_pylist()} == {True, False}  # both paths
    for doc_id, original in zip(sample.column("id").to_pylist(), sample.column("input_ids").to_pylist()):
        assert lookup.document_tokens(indexed["url"], doc_id).tolist() == original


def test_packed_only_index_counts_pieces_and_tokens(tmp_path, documents):
    docs = documents.slice(0, 40)
    pack_url = write_parts(tmp_path / "pack", pack(docs, SEQ_LEN), parts=2)
    run_stage(IndexStage({"documents": None}), pack_url, str(tmp_path / "index"))
    index = pq.read_table(tmp_path / "index" / "_index" / "metadata.parquet").sort_by("id")
    assert index.column("id").to_pylist() == sorted(docs.column("id").to_pylist())
    expected = {i: n + 1 for i, n in zip(docs.column("id").to_pylist(), docs.column("token_count").to_pylist())}
    assert dict(zip(index.column("id").to_pylist(), index.column("token_count").to_pylist())) == expected  # + EOS
    assert index.column("source").to_pylist() == [i.split("/")[0] for i in index.column("id").to_pylist()]


def test_query_by_source_and_language_matches_a_scan(indexed, documents):
    result = lookup.query(indexed["url"], "source = 'code' and lang = 'en'")
    expected = documents.filter(
        pc.and_(pc.equal(documents.column("source"), "code"), pc.equal(documents.column("lang"), "en"))
    )
    assert sorted(result.column("id").to_pylist()) == sorted(expected.column("id").to_pylist())
    few = lookup.query(indexed["url"], "quality_symbol_ratio > 0.1", columns=["id", "source"], limit=5)
    n_symbolic = pc.sum(pc.greater(documents.column("quality_symbol_ratio"), 0.1)).as_py()
    assert n_symbolic > 5
    assert few.column_names == ["id", "source"] and few.num_rows == 5


FILTERS = [
    # (filter, the same rows by pyarrow over the documents)
    (
        "source IN ('web', 'books') AND NOT lang = 'fr'",
        lambda d: pc.and_(pc.is_in(d["source"], pa.array(["web", "books"])), pc.invert(pc.equal(d["lang"], "fr"))),
    ),
    (
        "token_count BETWEEN 100 AND 200 OR quality_symbol_ratio >= 0.3",
        lambda d: pc.or_(
            pc.and_(pc.greater_equal(d["token_count"], 100), pc.less_equal(d["token_count"], 200)),
            pc.greater_equal(d["quality_symbol_ratio"], 0.3),
        ),
    ),
    ("id LIKE 'code/00%' and (lang <> 'en' or token_count > -1e9)", lambda d: pc.starts_with(d["id"], "code/00")),
    ("\"source\" = 'books' and url IS NULL", lambda d: pc.equal(d["source"], "books")),
    (
        "source NOT IN ('code') AND id NOT LIKE '%7'",
        lambda d: pc.and_(pc.not_equal(d["source"], "code"), pc.invert(pc.ends_with(d["id"], "7"))),
    ),
]


@pytest.mark.parametrize("where, expected", FILTERS, ids=[f for f, _ in FILTERS])
def test_filters_match_a_scan(indexed, documents, where, expected):
    result = lookup.query(indexed["url"], where, columns=["id"])
    wanted = documents.filter(expected(documents)).column("id").to_pylist()
    assert wanted and sorted(result.column("id").to_pylist()) == sorted(wanted)


def test_a_literal_is_a_value_whatever_it_holds(indexed):
    assert lookup.query(indexed["url"], "source = 'web''; DROP TABLE t; --'").num_rows == 0
    assert lookup.query(indexed["url"], "id = 'read_csv(''/etc/passwd'')'").num_rows == 0


ESCAPES = [
    ("read_csv('/etc/passwd')", "functions are not allowed"),
    ("id IN (SELECT id FROM read_parquet('/etc/x.parquet'))", "expected a column or a value"),
    ("id = (SELECT 1)", "expected a column or a value, found '('"),
    ("true; COPY (SELECT 42) TO '{sentinel}'", "unexpected ';'"),
    ("1=1; drop table x", "unexpected ';'"),
    ("source = 'web' UNION SELECT * FROM read_csv_auto('/etc/passwd')", "unexpected '*'"),
    ("source = 'web' UNION SELECT id FROM x", "expected AND, OR or the end, found 'UNION'"),
    ("id = read_text('/etc/passwd')", "functions are not allowed"),
    ("source = 'web' -- and more", "expected AND, OR or the end, found '-'"),
    ("source = -- a comment", "expected a column or a value, found '-'"),
    ("source = 'web' /* c */", "unexpected '/'"),
    ("COPY", "unknown column 'COPY'"),
    ('"read_csv" = 1', "unknown column 'read_csv'"),
    ("getvariable('x') = 1", "functions are not allowed"),
    ("source = $path", "unexpected '$'"),
    ("source::VARCHAR = 'web'", "unexpected ':'"),
    ("no_such_column = 1", "unknown column 'no_such_column'"),
    ("(" * 200 + "true" + ")" * 200, "nested deeper"),
]


@pytest.mark.parametrize("where, message", ESCAPES, ids=[w[:40] for w, _ in ESCAPES])
def test_anything_but_a_filter_over_the_index_columns_is_refused(indexed, tmp_path, where, message):
    sentinel = tmp_path / "copied.csv"
    with pytest.raises(lookup.QueryError, match=re.escape(message)):
        lookup.query(indexed["url"], where.format(sentinel=sentinel))
    assert not sentinel.exists()


def test_unknown_columns_to_print_are_a_clear_error(indexed):
    with pytest.raises(lookup.QueryError, match="not in the index"):
        lookup.query(indexed["url"], None, columns=["id", "text"])


def test_get_and_query_commands_print_what_the_lookups_return(indexed, documents, capsys):
    from tamis.cli import main

    assert main(["get", indexed["url"], "books/0003"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(lookup.get(indexed["url"], "books/0003"), default=str))
    assert printed["text"] == documents.filter(pc.equal(documents["id"], "books/0003"))["text"][0].as_py()
    assert main(["get", indexed["url"], "books/0003", "--index-only"]) == 0
    assert "text" not in json.loads(capsys.readouterr().out)

    assert (
        main(["query", indexed["url"], "--where", "source = 'code' and lang = 'fr'", "--columns", "id,token_count"])
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = documents.filter(pc.and_(pc.equal(documents["source"], "code"), pc.equal(documents["lang"], "fr")))
    assert sorted(r["id"] for r in rows) == sorted(expected["id"].to_pylist())
    assert {tuple(r) for r in rows} == {("id", "token_count")}

    assert main(["get", indexed["url"], "books/9999"]) == 2
    assert main(["query", indexed["url"], "--where", "read_csv('/etc/passwd')"]) == 2
    assert "tamis: error: --where: read_csv(...): functions are not allowed" in capsys.readouterr().err


def test_megatron_idx_layout_and_sequences(indexed):
    prefix = Path(indexed["url"]) / "_index" / "tokens"
    raw = (prefix.with_suffix(".idx")).read_bytes()
    magic, version, code, n_seq, n_doc = struct.unpack("<9sQBQQ", raw[:34])
    packed = indexed["packed"]
    assert (magic, version, code) == (b"MMIDIDX\x00\x00", 1, 8)  # uint16 for a 600-token vocabulary
    assert n_seq == packed.num_rows and n_doc == n_seq + 1
    sizes = np.frombuffer(raw, np.int32, n_seq, 34)
    pointers = np.frombuffer(raw, np.int64, n_seq, 34 + 4 * n_seq)
    assert (sizes == SEQ_LEN).all() and (np.diff(pointers) == SEQ_LEN * 2).all()
    assert prefix.with_suffix(".bin").stat().st_size == n_seq * SEQ_LEN * 2
    binary = export.TokenBinary(str(prefix))
    assert len(binary) == n_seq
    for i in [0, n_seq // 2, n_seq - 1]:
        assert binary[i].tolist() == packed.column("input_ids")[i].as_py()
        assert lookup.sequence(indexed["url"], i).tolist() == packed.column("input_ids")[i].as_py()


def test_parquet_token_shards(indexed, tmp_path):
    urls = export.export_parquet_shards(
        str(Path(indexed["run"]) / "pack"), str(tmp_path / "tokens"), sequences_per_shard=40
    )
    n = indexed["packed"].num_rows
    assert len(urls) == -(-n // 40)
    tables = [pq.read_table(u) for u in urls]
    assert [t.num_rows for t in tables[:-1]] == [40] * (len(urls) - 1)
    assert tables[0].schema.field("input_ids").type == pa.list_(pa.int32(), SEQ_LEN)
    assert pa.concat_tables(tables).column("input_ids").to_pylist() == indexed["packed"].column("input_ids").to_pylist()


def test_document_level_input_is_indexed_without_a_binary(tmp_path, documents):
    docs_url = write_parts(tmp_path / "tokenize", documents, parts=2)
    manifest = run_stage(IndexStage({"documents": None}), docs_url, str(tmp_path / "index"))
    assert manifest["counts"]["kept"] == documents.num_rows
    assert not (tmp_path / "index" / "_index" / "tokens.bin").exists()
    record = lookup.get(str(tmp_path / "index"), "code/0007")
    assert record["text"] == documents.filter(pc.equal(documents.column("id"), "code/0007")).column("text")[0].as_py()


def test_packed_input_without_its_documents_dataset_is_a_clear_error(tmp_path, documents):
    pack_url = write_parts(tmp_path / "pack", pack(documents.slice(0, 20), SEQ_LEN), parts=1)
    with pytest.raises(IndexBuildError, match="not a committed dataset"):
        run_stage(IndexStage({"documents": "mix"}), pack_url, str(tmp_path / "index"))


def test_duplicate_ids_are_refused(tmp_path, documents):
    docs_url = write_parts(
        tmp_path / "tokenize", pa.concat_tables([documents.slice(0, 5), documents.slice(3, 5)]), parts=1
    )
    with pytest.raises(IndexBuildError, match="appears more than once"):
        run_stage(IndexStage({"documents": None}), docs_url, str(tmp_path / "index"))


def test_duplicate_ids_are_refused_on_spark_too(tmp_path, documents, spark):
    # Two parts, the repeated ids one in each: the Spark sort brings them together.
    docs_url = write_parts(tmp_path / "tokenize", pa.concat_tables([documents.slice(0, 5), documents.slice(3, 5)]))
    with pytest.raises(IndexBuildError, match="'[^']+' appears more than once"):
        run_stage(IndexStage({"documents": None}), docs_url, str(tmp_path / "index"), engine=spark)


@pytest.fixture
def s3(monkeypatch):
    """An S3 endpoint of our own (moto), reached through the same environment as production."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "TAMIS_S3_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    fs, _ = storage.filesystem("s3://tamis-index-test/")
    fs.mkdir("tamis-index-test")
    yield "s3://tamis-index-test"
    fs.clear_instance_cache()
    server.stop()


def test_index_written_to_and_read_from_object_storage(s3, indexed, documents):
    url = f"{s3}/run/index"
    run_stage(
        IndexStage({"documents": str(Path(indexed["run"]) / "mix"), "binary": False}),
        str(Path(indexed["run"]) / "pack"),
        url,
    )
    record = lookup.get(url, "books/0011")
    assert record["text"] == documents.filter(pc.equal(documents.column("id"), "books/0011")).column("text")[0].as_py()
    web = lookup.query(url, "source = 'web' and lang = 'fr'", columns=["id"])
    expected = documents.filter(pc.and_(pc.equal(documents["source"], "web"), pc.equal(documents["lang"], "fr")))
    assert sorted(web.column("id").to_pylist()) == sorted(expected["id"].to_pylist())
