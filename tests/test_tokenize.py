"""Tokenizer training and loading, and the tokenize stage, on real text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import TEST_DATA, read_jsonl, write_dataset
from tamis.dataset import Dataset
from tamis.runner import run_stage
from tamis.stages.tokenize import Tokenize
from tamis.tokenizer import EOS_TOKEN, PAD_TOKEN, TokenizerError, load_tokenizer, train_tokenizer

WIKI = TEST_DATA / "web_en" / "wikipedia_en_sample.jsonl.gz"


def docs_table(path: Path, limit: int, source: str) -> pa.Table:
    rows = read_jsonl(path, limit)
    return pa.table(
        {
            "id": [f"{source}/{i}" for i in range(len(rows))],
            "source": [source] * len(rows),
            "text": [r["text"] for r in rows],
        }
    )


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return str(train_tokenizer(str(WIKI), str(out), vocab_size=1024, max_docs=40))


def test_training_is_deterministic(tmp_path, tokenizer_path):
    again = train_tokenizer(str(WIKI), str(tmp_path / "again"), vocab_size=1024, max_docs=40)
    assert again.name == "tokenizer.json"
    assert again.read_bytes() == Path(tokenizer_path).read_bytes()


def test_trained_tokenizer_has_eos_and_pad_and_round_trips(tokenizer_path):
    tokenizer = load_tokenizer(tokenizer_path)
    eos, pad = tokenizer.token_to_id(EOS_TOKEN), tokenizer.token_to_id(PAD_TOKEN)
    assert eos is not None and pad is not None and eos != pad
    assert tokenizer.get_vocab_size() == 1024
    text = read_jsonl(WIKI, 1)[0]["text"][:2000]
    assert tokenizer.decode(tokenizer.encode(text).ids) == text  # byte-level: lossless


def test_trains_from_a_tamis_dataset(tmp_path):
    url = write_dataset(tmp_path / "ds", [docs_table(WIKI, 10, "wiki")])
    out = train_tokenizer(url, str(tmp_path / "t.json"), vocab_size=400)
    assert load_tokenizer(str(out)).get_vocab_size() == 400


def test_loads_from_file_folder_and_transformers_folder(tmp_path, tokenizer_path):
    from transformers import PreTrainedTokenizerFast

    text = "Anarchism is a political philosophy."
    expected = load_tokenizer(tokenizer_path).encode(text).ids
    saved = tmp_path / "hf"
    PreTrainedTokenizerFast(tokenizer_file=tokenizer_path).save_pretrained(str(saved))
    assert load_tokenizer(str(Path(tokenizer_path).parent)).encode(text).ids == expected
    assert load_tokenizer(str(saved)).encode(text).ids == expected


def test_missing_tokenizer_path_fails_before_any_work(tmp_path):
    missing = str(tmp_path / "nowhere" / "tokenizer.json")
    stage = Tokenize({"tokenizer": missing})
    with pytest.raises(TokenizerError, match="nowhere/tokenizer.json"):
        run_stage(stage, str(tmp_path / "no_input"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_unreachable_hub_name_fails_with_its_name():
    # The hub is offline here, as on any machine without internet; the error must name the tokenizer.
    code = "from tamis.tokenizer import load_tokenizer; load_tokenizer('tamis-tests/no-such-tokenizer')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "TokenizerError" in done.stderr
    assert "'tamis-tests/no-such-tokenizer'" in done.stderr


def test_token_counts_match_the_tokenizers_own_encode(tokenizer_path):
    table = pa.concat_tables(
        [docs_table(WIKI, 5, "wiki"), docs_table(TEST_DATA / "code" / "code_03.jsonl.gz", 20, "code")]
    )
    tokenizer = load_tokenizer(tokenizer_path)
    eos = tokenizer.token_to_id(EOS_TOKEN)
    result = Tokenize({"tokenizer": tokenizer_path, "batch_size": 7}).process_batch(table)
    kept = result.kept.to_pylist()
    assert len(kept) + result.dropped.num_rows == table.num_rows
    for row in kept:
        ids = tokenizer.encode(row["text"], add_special_tokens=False).ids
        assert row["input_ids"] == ids + [eos]
        assert row["token_count"] == len(ids) + 1
    assert result.metrics["tokenize.tokens"] == sum(r["token_count"] for r in kept)
    assert result.kept.schema.field("input_ids").type == pa.list_(pa.int32())
    assert result.kept.schema.field("token_count").type == pa.int32()


def test_without_eos_counts_equal_plain_encode(tokenizer_path):
    table = docs_table(WIKI, 3, "wiki")
    tokenizer = load_tokenizer(tokenizer_path)
    result = Tokenize({"tokenizer": tokenizer_path, "add_eos": False}).process_batch(table)
    counts = result.kept.column("token_count").to_pylist()
    assert counts == [len(tokenizer.encode(t, add_special_tokens=False).ids) for t in table.column("text").to_pylist()]


def test_empty_and_oversized_documents_are_dropped_with_reasons(tokenizer_path):
    real = docs_table(WIKI, 3, "wiki").column("text").to_pylist()
    lengths = [len(t) for t in real]
    table = pa.table(
        {"id": ["a", "b", "c", "d", "e"], "source": ["wiki"] * 5, "text": [real[0], "", None, real[1], real[2]]}
    )
    limit = sorted(lengths)[1]  # the longest of the three is over the limit
    result = Tokenize({"tokenizer": tokenizer_path, "max_chars": limit}).process_batch(table)
    reasons = dict(zip(result.dropped.column("id").to_pylist(), result.dropped.column("reason").to_pylist()))
    longest = ["a", "d", "e"][lengths.index(max(lengths))]
    assert reasons == {"b": "no_tokens", "c": "no_tokens", longest: "too_many_chars"}
    assert result.kept.num_rows == 2


def test_counts_reconcile_through_the_runner(tmp_path, tokenizer_path):
    with_empty = docs_table(WIKI, 4, "wiki")
    with_empty = pa.concat_tables([with_empty, pa.table({"id": ["wiki/empty"], "source": ["wiki"], "text": [""]})])
    url = write_dataset(
        tmp_path / "in",
        [with_empty, docs_table(TEST_DATA / "web_en" / "movie_reviews_polarity_2000.jsonl.gz", 30, "reviews")],
    )
    stage = Tokenize({"tokenizer": tokenizer_path})
    manifest = run_stage(stage, url, str(tmp_path / "out"), workers=2)
    assert manifest["counts"] == {"in": 35, "kept": 34, "dropped": 1, "quarantined": 0}
    assert manifest["drop_reasons"] == {"no_tokens": 1}
    out = Dataset(str(tmp_path / "out")).read(["token_count", "input_ids"])
    assert manifest["metrics"]["tokenize.tokens"] == sum(out.column("token_count").to_pylist())
    assert [len(x) for x in out.column("input_ids").to_pylist()] == out.column("token_count").to_pylist()
