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
    unaided = Tokenize({"tokenizer": tokenizer_path, "max_chars": limit, "fast_bpe": False}).process_batch(table)
    assert unaided.metrics["tokenize.docs_by_tokenizer"] == 4, "the document over max_chars is encoded by neither"


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


# -- the tiktoken path (fast_bpe) ------------------------------------------------------

SAMPLE_TOKENIZER = str(Path(__file__).resolve().parents[1] / "include" / "sample" / "tokenizer.json")
UDHR = TEST_DATA / "multilingual" / "udhr_unicode_388docs.jsonl.gz"
GPT4_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def hard_texts() -> list[str]:
    """Real text in many scripts and code, and made-up text at the edges of the split
    pattern: code points from every plane in several contexts, contractions, digit runs,
    whitespace runs, very long words."""
    texts = [r["text"] for r in read_jsonl(UDHR)]
    texts += [r["text"] for r in read_jsonl(TEST_DATA / "code" / "code_00.jsonl.gz", 60)]
    texts += [r["text"] for r in read_jsonl(WIKI, 20)]
    points = [c for c in range(0x20, 0x32000, 13) if not 0xD800 <= c <= 0xDFFF] + list(range(0x2000, 0x2070))
    for start in range(0, len(points), 400):
        chars = [chr(c) for c in points[start : start + 400]]
        texts.append("".join(f"a{c}b {c}1 x{c}{c}  {c}\n{c}'s 9{c}" for c in chars))
        texts.append(" ".join(chars))
    texts += [
        "I'm sure it's theirs, they'll say THEY'LL and we'd SAY we'D.",
        "1234567 12 3.14159 2026-12-01 0x1F ٣٤٥ 四十二",
        "tabs\t\tand\r\nwindows\r\n\r\n   lines   \n\n\n  end  ",
        "a" * 40_000,
        "ab" * 20_000 + " " + "中文" * 10_000,
        " " * 5_000 + "x" + "\n" * 3_000,
    ]
    return texts


def tokenizer_ids(tokenizer_path: str, texts: list[str]) -> list[list[int]]:
    tokenizer = load_tokenizer(tokenizer_path)
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def stage_ids(tokenizer_path: str, texts: list[str], **params) -> tuple[list[list[int]], int]:
    table = pa.table({"id": [str(i) for i in range(len(texts))], "source": ["t"] * len(texts), "text": texts})
    result = Tokenize({"tokenizer": tokenizer_path, "add_eos": False, **params}).process_batch(table)
    assert result.dropped.num_rows == 0
    return result.kept.column("input_ids").to_pylist(), result.metrics["tokenize.docs_by_tokenizer"]


def split_tokenizer(tmp_path: Path) -> str:
    """A byte-level BPE with the GPT-4 / Llama 3 split pattern, trained here on the wikipedia sample."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([r["text"] for r in read_jsonl(WIKI, 60)], trainer=trainer)
    tokenizer.save(str(tmp_path / "split.json"))
    return str(tmp_path / "split.json")


@pytest.mark.parametrize("which", ["sample", "trained", "gpt4_split"])
def test_the_tiktoken_path_gives_the_tokenizer_s_own_ids(which, tokenizer_path, tmp_path):
    path = {"sample": SAMPLE_TOKENIZER, "trained": tokenizer_path}.get(which) or split_tokenizer(tmp_path)
    texts = hard_texts()
    ids, by_tokenizer = stage_ids(path, texts)
    assert by_tokenizer == 0, "the tokenizer qualifies and no text holds an added token: tiktoken encodes all"
    expected = tokenizer_ids(path, texts)
    differ = [i for i, (a, b) in enumerate(zip(ids, expected)) if a != b]
    assert not differ, f"{len(differ)} texts differ, the first: {texts[differ[0]][:200]!r}"


def test_text_holding_an_added_token_is_encoded_as_the_tokenizer_does(tokenizer_path):
    texts = ["plain prose, nothing special", f"an end{EOS_TOKEN}of text written in a page", f"{PAD_TOKEN}"]
    ids, by_tokenizer = stage_ids(tokenizer_path, texts)
    assert ids == tokenizer_ids(tokenizer_path, texts)
    assert load_tokenizer(tokenizer_path).token_to_id(EOS_TOKEN) in ids[1]  # the tokenizer cut it out as one token
    assert by_tokenizer == 2


def test_a_tokenizer_tiktoken_cannot_reproduce_goes_through_the_tokenizer(tokenizer_path, tmp_path):
    import json

    spec = json.loads(Path(tokenizer_path).read_text())
    spec["normalizer"] = {"type": "NFKC"}  # tiktoken does not normalize
    normalizing = tmp_path / "nfkc.json"
    normalizing.write_text(json.dumps(spec))
    texts = ["ﬁne ｆｕｌｌ－ｗｉｄｔｈ text", "plain"]
    ids, by_tokenizer = stage_ids(str(normalizing), texts)
    assert ids == tokenizer_ids(str(normalizing), texts) and by_tokenizer == 2


def test_a_token_made_by_a_merge_the_list_lacks_sends_its_documents_to_the_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    # "bc" merges before "ab", so the tokenizer leaves "abc" as [a, bc]: its only merge is
    # (ab, c). tiktoken would merge (a, bc) into "abc", a token, if the stage let it.
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in ("bc", "ab", "abc"):
        vocab[token] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[("b", "c"), ("a", "b"), ("ab", "c")]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    path = str(tmp_path / "phantom.json")
    tokenizer.save(path)
    texts = ["xabc abcabc", "ab ab c", "bcab", "abc"]
    ids, by_tokenizer = stage_ids(path, texts)
    assert ids == tokenizer_ids(path, texts)
    assert ids[3] == [vocab["a"], vocab["bc"]]
    assert by_tokenizer == 2, "the two texts with 'abc' in a word, which tiktoken would have made one token"


def test_the_tiktoken_path_and_the_tokenizer_write_the_same_dataset(tmp_path):
    url = write_dataset(tmp_path / "in", [docs_table(WIKI, 30, "wiki"), docs_table(UDHR, 60, "udhr")])
    fast = run_stage(Tokenize({"tokenizer": SAMPLE_TOKENIZER}), url, str(tmp_path / "fast"), workers=2)
    slow = run_stage(Tokenize({"tokenizer": SAMPLE_TOKENIZER, "fast_bpe": False}), url, str(tmp_path / "slow"))
    assert fast["metrics"]["tokenize.docs_by_tokenizer"] == 0
    assert slow["metrics"]["tokenize.docs_by_tokenizer"] == slow["counts"]["in"] > 0
    assert [p["sha256"] for p in fast["parts"]] == [p["sha256"] for p in slow["parts"]]
