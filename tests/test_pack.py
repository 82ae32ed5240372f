"""The pack stage: fixed-length sequences from tokenized real documents."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from conftest import TEST_DATA, read_jsonl, write_dataset
from tamis.dataset import Dataset
from tamis.runner import run_stage
from tamis.stages.pack import Pack
from tamis.stages.tokenize import Tokenize
from tamis.tokenizer import PAD_TOKEN, load_tokenizer, train_tokenizer

SEQ_LEN = 512
CORPUS = [  # (file, documents): prose of every length and code, as a mix would hold them
    ("web_en/wikipedia_en_sample.jsonl.gz", 12),
    ("web_en/movie_reviews_polarity_2000.jsonl.gz", 150),
    ("web_en/cc_c4_pile_fixtures_by_source.jsonl.gz", 80),
    ("code/code_03.jsonl.gz", 60),
]


def docs_table(name: str, limit: int) -> pa.Table:
    path = TEST_DATA / name
    rows = read_jsonl(path, limit)
    source = name.split("/")[0]
    return pa.table(
        {
            "id": [f"{path.name}/{i}" for i in range(len(rows))],
            "source": [source] * len(rows),
            "text": [r["text"] for r in rows],
        }
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(tokenizer path, tokenized dataset URL, its documents in dataset order)."""
    root = tmp_path_factory.mktemp("pack")
    tokenizer = str(
        train_tokenizer(str(TEST_DATA / CORPUS[0][0]), str(root / "tokenizer.json"), vocab_size=2048, max_docs=40)
    )
    source = write_dataset(root / "normalized", [docs_table(name, n) for name, n in CORPUS])
    run_stage(Tokenize({"tokenizer": tokenizer}), source, str(root / "tokenized"))
    docs = Dataset(str(root / "tokenized")).read(["id", "input_ids", "token_count"])
    return tokenizer, str(root / "tokenized"), docs


def pack(corpus, tmp_path, mode: str, workers: int = 1, name: str | None = None):
    tokenizer, url, _ = corpus
    out = str(tmp_path / (name or mode))
    manifest = run_stage(Pack({"tokenizer": tokenizer, "seq_len": SEQ_LEN, "mode": mode}), url, out, workers=workers)
    return manifest, Dataset(out).read().sort_by("id")


def test_seq_len_below_two_is_a_config_error():
    with pytest.raises(ValidationError, match="seq_len"):
        Pack({"seq_len": 1})


def test_concat_streams_every_token_once_in_order(corpus, tmp_path):
    tokenizer, _, docs = corpus
    manifest, seqs = pack(corpus, tmp_path, "concat")
    ids = seqs.column("input_ids").to_pylist()
    assert all(len(s) == SEQ_LEN for s in ids)
    n_pad = seqs.column("n_pad").to_pylist()
    assert all(p == 0 for p in n_pad[:-1])  # only the last sequence is padded
    stream = np.concatenate([np.array(s[: SEQ_LEN - p]) for s, p in zip(ids, n_pad)])
    expected = np.concatenate([np.array(d) for d in docs.column("input_ids").to_pylist()])
    assert np.array_equal(stream, expected)
    pad = load_tokenizer(tokenizer).token_to_id(PAD_TOKEN)
    assert ids[-1][SEQ_LEN - n_pad[-1] :] == [pad] * n_pad[-1]


def test_offsets_point_at_document_starts(corpus, tmp_path):
    _, _, docs = corpus
    tokens = dict(zip(docs.column("id").to_pylist(), docs.column("input_ids").to_pylist()))
    for mode in ("concat", "best_fit"):
        _, seqs = pack(corpus, tmp_path, mode)
        pieces: dict[str, list[int]] = {}
        for row in seqs.to_pylist():
            ends = row["doc_offsets"][1:] + [SEQ_LEN - row["n_pad"]]
            assert row["doc_offsets"] == sorted(row["doc_offsets"]) and row["doc_offsets"][0] == 0
            for doc, start, end in zip(row["doc_ids"], row["doc_offsets"], ends):
                pieces.setdefault(doc, []).extend(row["input_ids"][start:end])
        # Every document's tokens appear exactly once, in order, across the sequences.
        assert pieces == tokens, mode


def test_best_fit_does_not_split_documents_shorter_than_seq_len(corpus, tmp_path):
    _, _, docs = corpus
    counts = dict(zip(docs.column("id").to_pylist(), docs.column("token_count").to_pylist()))
    _, seqs = pack(corpus, tmp_path, "best_fit")
    appearances: dict[str, int] = {}
    for doc_ids in seqs.column("doc_ids").to_pylist():
        for doc in doc_ids:
            appearances[doc] = appearances.get(doc, 0) + 1
    assert set(appearances) == set(counts)
    for doc, n in counts.items():
        assert appearances[doc] == (1 if n <= SEQ_LEN else -(-n // SEQ_LEN)), doc
    assert all(len(s) == SEQ_LEN for s in seqs.column("input_ids").to_pylist())


def test_best_fit_pads_under_one_percent_where_pad_to_max_wastes_far_more(corpus, tmp_path):
    _, _, docs = corpus
    manifest, _ = pack(corpus, tmp_path, "best_fit")
    m = manifest["metrics"]
    padding = m["pack.pad_tokens"] / (m["pack.sequences"] * SEQ_LEN)
    assert padding <= 0.01
    lengths = np.array(docs.column("token_count").to_pylist())
    pad_to_max = np.maximum(SEQ_LEN - lengths, 0).sum() / (len(lengths) * SEQ_LEN)
    assert pad_to_max > 10 * max(padding, 1e-4)


def test_counts_reconcile_through_the_runner(corpus, tmp_path):
    _, _, docs = corpus
    manifest, seqs = pack(corpus, tmp_path, "best_fit")
    c, m = manifest["counts"], manifest["metrics"]
    # A row of this stage is a sequence; documents are counted in the metrics.
    assert c == {"in": seqs.num_rows, "kept": seqs.num_rows, "dropped": 0, "quarantined": 0}
    assert m["pack.sequences"] == seqs.num_rows
    assert m["pack.docs_packed"] == docs.num_rows
    assert m["pack.tokens"] == sum(docs.column("token_count").to_pylist())
    assert m["pack.pad_tokens"] == sum(seqs.column("n_pad").to_pylist())
    assert m["pack.tokens"] + m["pack.pad_tokens"] == seqs.num_rows * SEQ_LEN


def test_packing_is_deterministic_across_worker_counts(corpus, tmp_path):
    _, one = pack(corpus, tmp_path, "best_fit", workers=1, name="one")
    _, two = pack(corpus, tmp_path, "best_fit", workers=2, name="two")
    assert one.equals(two)
    assert len(set(one.column("id").to_pylist())) == one.num_rows


def test_resume_rebuilds_only_the_missing_part_identically(corpus, tmp_path):
    manifest, first = pack(corpus, tmp_path, "best_fit", name="resume")
    out = tmp_path / "resume"
    (out / "_manifest.json").unlink()
    (out / "_commits" / "part_00001.json").unlink()
    (out / "part_00001.parquet").unlink()
    kept_part = (out / "part_00000.parquet").stat().st_mtime_ns
    again_manifest, again = pack(corpus, tmp_path, "best_fit", name="resume")
    assert again.equals(first)
    assert again_manifest["counts"] == manifest["counts"]
    assert (out / "part_00000.parquet").stat().st_mtime_ns == kept_part  # committed part untouched
    assert not list((out / "_work").rglob("*.parquet"))  # no pieces left behind
