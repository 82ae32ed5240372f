"""Mix: weighted sampling by source, to a token budget, deterministic, with epoch caps."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from conftest import TEST_DATA, read_jsonl
from tamis import storage
from tamis.dataset import Dataset
from tamis.pipeline import ConfigError, SourceConfig
from tamis.runner import run_stage
from tamis.stages.mix import Mix, MixError, MixParams, realized_shares

# (source, file, documents, characters kept per document): real text of three kinds.
CORPUS = [
    ("web", "web_en/wikipedia_en_sample.jsonl.gz", 80, 1500),
    ("books", "web_en/us_presidential_speeches.jsonl.gz", 40, 3000),
    ("code", "code/code_00.jsonl.gz", 200, 800),
]
SOURCES = {
    name: SourceConfig(path=str(TEST_DATA / path), type="code" if name == "code" else "prose")
    for name, path, _, _ in CORPUS
}


@pytest.fixture(scope="module")
def tokenized_docs() -> pa.Table:
    """Tokenized documents as the tokenize stage writes them, with a BPE trained here."""
    rows = []
    for source, path, n, chars in CORPUS:
        for i, record in enumerate(read_jsonl(TEST_DATA / path, n)):
            rows.append(
                {
                    "id": f"{source}/{i:04d}",
                    "source": source,
                    "date": "2026-11-20",
                    "url": None,
                    "text": record["text"][:chars],
                    "lang": "en",
                }
            )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|eos|>"]
    )
    tokenizer.train_from_iterator([r["text"] for r in rows], trainer)
    ids = [e.ids for e in tokenizer.encode_batch([r["text"] for r in rows])]
    table = pa.Table.from_pylist(rows)
    table = table.append_column("input_ids", pa.array(ids, pa.list_(pa.int32())))
    return table.append_column("token_count", pc.cast(pc.list_value_length(table.column("input_ids")), pa.int32()))


def _write_dataset(root: Path, table: pa.Table, parts: int = 3) -> str:
    """A committed dataset of ``parts`` Parquet parts, as the runner would leave it."""
    url = str(root)
    root.mkdir(parents=True, exist_ok=True)
    step = -(-table.num_rows // parts)
    entries = []
    for k in range(parts):
        name = f"2026-11-20_part_{k:05d}"
        pq.write_table(table.slice(k * step, step), root / f"{name}.parquet", row_group_size=64)
        entries.append(
            {
                "name": name,
                "input": "test",
                "rows": min(step, max(table.num_rows - k * step, 0)),
                "bytes": (root / f"{name}.parquet").stat().st_size,
            }
        )
    storage.write_json_atomic(storage.join(url, "_manifest.json"), {"parts": entries}, url)
    return url


def _tokens(table: pa.Table) -> dict[str, int]:
    grouped = table.group_by("source").aggregate([("token_count", "sum")])
    return dict(zip(grouped.column("source").to_pylist(), grouped.column("token_count_sum").to_pylist()))


WEIGHTS = {"web": 0.6, "books": 0.3, "code": 0.1}


def test_realized_shares_within_one_point_of_requested(tmp_path, tokenized_docs):
    input_url = _write_dataset(tmp_path / "tokenize", tokenized_docs)
    budget = sum(_tokens(tokenized_docs).values())
    stage = Mix({"weights": WEIGHTS, "token_budget": budget, "seed": 7}, context={"sources": SOURCES})
    manifest = run_stage(stage, input_url, str(tmp_path / "mix"), workers=1)

    out = Dataset(str(tmp_path / "mix")).read()
    tokens = _tokens(out)
    total = sum(tokens.values())
    for source, weight in WEIGHTS.items():
        assert abs(tokens[source] / total - weight) < 0.01, (source, tokens)
        assert manifest["metrics"][f"mix.tokens.{source}"] == tokens[source]
    shares = realized_shares(manifest)
    assert all(abs(s["realized"] - s["requested"]) < 0.01 for s in shares.values())
    assert abs(total - budget) / budget < 0.01


def test_counts_reconcile_with_repeats_counted_apart(tmp_path, tokenized_docs):
    input_url = _write_dataset(tmp_path / "tokenize", tokenized_docs)
    # books is ~1/4 of the tokens but asks for 0.6: it must be upsampled (> 2 epochs).
    stage = Mix({"weights": {"web": 0.3, "books": 0.6, "code": 0.1}, "seed": 1}, context={"sources": SOURCES})
    manifest = run_stage(stage, input_url, str(tmp_path / "mix"), workers=2)
    c, m = manifest["counts"], manifest["metrics"]
    assert c["in"] == c["kept"] + c["dropped"] + c["quarantined"]
    assert m["mix.input_docs"] == tokenized_docs.num_rows
    assert c["in"] == m["mix.input_docs"] + m["mix.repeat_rows"]
    assert m["mix.repeat_rows"] > 0
    out = Dataset(str(tmp_path / "mix")).read()
    ids = out.column("id").to_pylist()
    assert len(set(ids)) == len(ids), "repeated documents must get distinct ids"
    repeats = out.filter(pc.greater(out.column("epoch"), 0))
    assert set(repeats.column("source").to_pylist()) == {"books"}
    originals = {i.split("#")[0] for i in repeats.column("id").to_pylist()}
    assert originals <= set(tokenized_docs.column("id").to_pylist())
    assert all(
        i.endswith(f"#{e}") for i, e in zip(repeats.column("id").to_pylist(), repeats.column("epoch").to_pylist())
    )
    dropped = Dataset(str(tmp_path / "mix")).read_side("dropped")
    assert dropped.num_rows == c["dropped"]
    assert set(dropped.column("reason").to_pylist()) == {"mix_not_sampled"}


def test_same_seed_same_selection_other_seed_differs(tmp_path, tokenized_docs):
    input_url = _write_dataset(tmp_path / "tokenize", tokenized_docs)
    budget = sum(_tokens(tokenized_docs).values()) // 2
    selections = []
    for run, seed in enumerate([3, 3, 4]):
        stage = Mix({"weights": WEIGHTS, "token_budget": budget, "seed": seed}, context={"sources": SOURCES})
        run_stage(stage, input_url, str(tmp_path / f"mix{run}"), workers=1)
        selections.append(sorted(Dataset(str(tmp_path / f"mix{run}")).read(["id"]).column("id").to_pylist()))
    assert selections[0] == selections[1]
    assert selections[0] != selections[2]


def test_epoch_cap_reports_the_shortfall_honestly(tmp_path, tokenized_docs):
    input_url = _write_dataset(tmp_path / "tokenize", tokenized_docs)
    available = _tokens(tokenized_docs)
    budget = sum(available.values())
    weights = {"web": 0.2, "books": 0.7, "code": 0.1}  # books needs ~3 epochs, capped at 1.5
    stage = Mix(
        {"weights": weights, "token_budget": budget, "max_epochs_by_source": {"books": 1.5}},
        context={"sources": SOURCES},
    )
    manifest = run_stage(stage, input_url, str(tmp_path / "mix"), workers=1)
    shares = realized_shares(manifest)
    assert shares["books"]["capped"] and not shares["web"]["capped"]
    assert abs(shares["books"]["tokens"] - 1.5 * available["books"]) <= max(
        tokenized_docs.column("token_count").to_pylist()
    )
    assert shares["books"]["realized"] < weights["books"] - 0.05
    out = Dataset(str(tmp_path / "mix")).read()
    assert max(out.filter(pc.equal(out.column("source"), "books")).column("epoch").to_pylist()) == 1
    assert manifest["metrics"]["mix.tokens_requested.books"] == round(0.7 * budget)


def test_weights_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        MixParams(weights={"web": 0.6, "books": 0.3, "code": 0.2})
    MixParams(weights={"web": 0.6, "books": 0.3, "code": 0.1 + 5e-7})  # within tolerance


def test_negative_weight_is_rejected():
    with pytest.raises(ValueError, match=">= 0"):
        MixParams(weights={"web": 1.2, "code": -0.2})


def test_unknown_source_fails_before_any_work(tmp_path, tokenized_docs):
    input_url = _write_dataset(tmp_path / "tokenize", tokenized_docs)
    stage = Mix({"weights": {"web": 0.5, "wiki": 0.5}}, context={"sources": SOURCES})
    with pytest.raises(MixError, match="wiki"):
        run_stage(stage, input_url, str(tmp_path / "mix"))
    assert not (tmp_path / "mix" / "_work").exists()


def test_weighted_source_without_documents_is_named(tmp_path, tokenized_docs):
    no_code = tokenized_docs.filter(pc.not_equal(tokenized_docs.column("source"), "code"))
    input_url = _write_dataset(tmp_path / "tokenize", no_code)
    stage = Mix({"weights": WEIGHTS}, context={"sources": SOURCES})
    with pytest.raises(MixError, match=r"code \(0 documents\)"):
        run_stage(stage, input_url, str(tmp_path / "mix"))
    assert not Dataset(str(tmp_path / "mix")).is_complete()


def test_unweighted_source_is_dropped_with_its_reason(tmp_path, tokenized_docs):
    input_url = _write_dataset(tmp_path / "tokenize", tokenized_docs)
    stage = Mix({"weights": {"web": 0.7, "books": 0.3}}, context={"sources": SOURCES})
    manifest = run_stage(stage, input_url, str(tmp_path / "mix"))
    n_code = pc.sum(pc.equal(tokenized_docs.column("source"), "code")).as_py()
    assert manifest["drop_reasons"]["mix_source_unweighted"] == n_code
    assert "code" not in Dataset(str(tmp_path / "mix")).read(["source"]).column("source").to_pylist()


def test_input_without_token_counts_is_a_clear_error(tmp_path, tokenized_docs):
    input_url = _write_dataset(tmp_path / "normalize", tokenized_docs.drop_columns(["input_ids", "token_count"]))
    with pytest.raises(MixError, match="tokenized documents"):
        run_stage(Mix({"weights": WEIGHTS}), input_url, str(tmp_path / "mix"))


def test_weights_from_yaml_and_run_params_are_checked(make_pipeline, tmp_path):
    sources = {"web": {"path": str(tmp_path)}, "code": {"path": str(tmp_path), "type": "code"}}
    with pytest.raises(ConfigError, match="sum to 1"):
        make_pipeline(sources, stages={"mix": {"weights": {"web": 0.5, "code": 0.4}}}, name="bad")
    pipeline = make_pipeline(sources, stages={"mix": {"weights": {"web": 0.5, "code": 0.5}}})
    pipeline.stage("mix").check_ready()
    # Run parameters (a DAG trigger's conf) override the YAML and meet the same checks.
    with pytest.raises(MixError, match="wiki"):
        pipeline.stage("mix", overrides={"weights": {"web": 0.5, "wiki": 0.5}}).check_ready()
