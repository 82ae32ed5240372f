"""Bytes read and time: lookups through the index vs a full scan of the corpus.

Builds a document dataset from the real corpora under shared/data (about 14k
documents, ids are content hashes and rows are shuffled across parts, as ingest
leaves them), indexes it with the index stage, then measures

* a single-id lookup: ``tamis.lookup.get`` (index row group + the record's row group)
  vs a full scan of the corpus filtered to that id;
* a ~1% subset query: ``tamis.lookup.query`` (DuckDB over the index) vs a full scan
  filtered the same way, and vs a column-pruned scan of the corpus (no text).

Bytes read are the process's ``rchar`` from /proc/self/io (every read syscall,
DuckDB's and Arrow's threads included); times are warm-cache medians.

    .venv/bin/python benchmarks/index_lookup.py [--data ../shared/data] [--work /tmp/tamis_bench_index]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from tamis import lookup, storage
from tamis.dataset import Dataset
from tamis.runner import run_stage
from tamis.stages.index import IndexStage

# source name -> (file, language field or fixed language). Research-only files are left out.
FILES = {
    "wikipedia": ("web_en/wikipedia_en_sample.jsonl", "en"),
    "speeches": ("web_en/us_presidential_speeches.jsonl", "en"),
    "reviews": ("web_en/movie_reviews_polarity_2000.jsonl.gz", "en"),
    "web_pages": ("web_en/trafilatura_eval_en_pages.jsonl", "en"),
    "web_fixtures": ("web_en/cc_c4_pile_fixtures_by_source.jsonl", "en"),
    "code0": ("code/code_00.jsonl.gz", "en"),
    "code1": ("code/code_01.jsonl.gz", "en"),
    "code2": ("code/code_02.jsonl.gz", "en"),
    "code3": ("code/code_03.jsonl.gz", "en"),
    "web_multilingual": ("multilingual/trafilatura_eval_pages_non_en.jsonl.gz", "lang"),
    "udhr": ("multilingual/udhr_unicode_388docs.jsonl.gz", "lang"),
    "articles": ("quality/article_extraction_benchmark.jsonl", "en"),
    "dclm": ("quality/dclm_human_quality.jsonl", "en"),
    "sms": ("quality/sms_spam_collection.jsonl", "en"),
    "synthetic": ("pii/presidio_synth_v2.jsonl", "en"),
}
PARTS = 8
ROW_GROUP_ROWS = 512  # document parts; the index uses its own (smaller) row groups
SUBSET_WHERE = "source = 'speeches'"


def rchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def measure(fn, repeat: int = 5):
    result = fn()  # warm: imports, page cache
    bytes_read, times = [], []
    for _ in range(repeat):
        before, start = rchar(), time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        bytes_read.append(rchar() - before)
    return result, int(statistics.median(bytes_read)), statistics.median(times)


def load_corpus(data: Path) -> pa.Table:
    rows = []
    for source, (path, lang) in FILES.items():
        opener = gzip.open if path.endswith(".gz") else open
        with opener(data / path, "rt", encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                text = record.get("text") or ""
                if not text:
                    continue
                language = record.get(lang) or record.get("language") or "und" if lang == "lang" else lang
                digest = hashlib.sha256(text.encode()).hexdigest()[:16]
                rows.append(
                    {
                        "id": f"{source}/{digest}",
                        "source": source,
                        "date": "2026-11-20",
                        "url": record.get("url"),
                        "text": text,
                        "lang": str(language),
                    }
                )
    table = pa.Table.from_pylist(rows)
    # Content-hash ids repeat for identical texts; keep the first, as exact dedup would.
    _, first = np.unique(np.array(table.column("id").to_pylist(), dtype=object), return_index=True)
    table = table.take(np.sort(first))
    return table.take(np.random.default_rng(0).permutation(table.num_rows))


def add_signals(table: pa.Table) -> pa.Table:
    texts = table.column("text").to_pylist()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(
        texts[:2000],
        trainers.BpeTrainer(vocab_size=4096, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    counts = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    n_chars = pc.utf8_length(table.column("text"))
    n_words = pc.list_value_length(pc.utf8_split_whitespace(table.column("text")))
    table = table.append_column("quality_n_chars", n_chars)
    table = table.append_column(
        "quality_mean_word_len", pc.divide(pc.cast(n_chars, pa.float64()), pc.max_element_wise(n_words, 1))
    )
    return table.append_column("token_count", pa.array(counts, pa.int32()))


def write_documents(table: pa.Table, url: str) -> None:
    root = Path(url)
    root.mkdir(parents=True)
    step = -(-table.num_rows // PARTS)
    parts = []
    for k in range(PARTS):
        name = f"2026-11-20_docs_{k:05d}"
        pq.write_table(
            table.slice(k * step, step), root / f"{name}.parquet", row_group_size=ROW_GROUP_ROWS, compression="zstd"
        )
        parts.append({"name": name, "input": "benchmark", "bytes": (root / f"{name}.parquet").stat().st_size})
    storage.write_json_atomic(storage.join(url, "_manifest.json"), {"parts": parts}, url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--work", default="/tmp/tamis_bench_index")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)

    started = time.perf_counter()
    corpus = add_signals(load_corpus(Path(args.data)))
    docs_url, index_url = str(work / "documents"), str(work / "indexed")
    write_documents(corpus, docs_url)
    built = time.perf_counter()
    run_stage(IndexStage({"documents": None, "row_group_rows": 1024}), docs_url, index_url, workers=1)
    corpus_bytes = sum(p.stat().st_size for p in Path(docs_url).glob("*.parquet"))
    index_bytes = (Path(index_url) / "_index" / "metadata.parquet").stat().st_size
    print(
        f"corpus: {corpus.num_rows} documents, {PARTS} parts, {corpus_bytes / 1e6:.1f} MB Parquet "
        f"(built in {built - started:.1f}s); index {index_bytes / 1e6:.2f} MB "
        f"(built in {time.perf_counter() - built:.1f}s)"
    )

    target = corpus.column("id")[corpus.num_rows // 2].as_py()
    dataset = ds.dataset(docs_url, format="parquet")
    meta_columns = [c for c in corpus.column_names if c != "text"]

    def full_scan_get():
        table = Dataset(docs_url).read()
        return table.filter(pc.equal(table.column("id"), target)).to_pylist()[0]

    def full_scan_query(columns=None):
        table = dataset.to_table(columns=columns)
        return table.filter(pc.equal(table.column("source"), "speeches"))

    record, b_get, t_get = measure(lambda: lookup.get(index_url, target))
    _, b_entry, t_entry = measure(lambda: lookup.get(index_url, target, with_record=False))
    peer, b_scan, t_scan = measure(full_scan_get, repeat=3)
    assert record["text"] == peer["text"], "lookup and scan disagree"
    subset, b_q, t_q = measure(lambda: lookup.query(index_url, SUBSET_WHERE))
    scanned, b_qscan, t_qscan = measure(full_scan_query, repeat=3)
    _, b_qcols, t_qcols = measure(lambda: full_scan_query(meta_columns), repeat=3)
    assert sorted(subset.column("id").to_pylist()) == sorted(scanned.column("id").to_pylist())

    share = subset.num_rows / corpus.num_rows
    print(f"\n{'operation':44s} {'bytes read':>12s} {'time ms':>9s}")
    rows = [
        ("get(id): index entry only", b_entry, t_entry),
        ("get(id): index entry + full record", b_get, t_get),
        ("peer: full scan, filter id", b_scan, t_scan),
        (f"query({SUBSET_WHERE}) [{share:.2%} of docs]", b_q, t_q),
        ("peer: full scan, filter source", b_qscan, t_qscan),
        ("peer: scan without text, filter source", b_qcols, t_qcols),
    ]
    for name, b, t in rows:
        print(f"{name:44s} {b:12,d} {t * 1e3:9.1f}")
    print("\nratios (peer / index; higher is better for the index)")
    print(f"  get(id) with record vs full scan:    bytes x{b_scan / max(b_get, 1):.0f}, time x{t_scan / t_get:.1f}")
    print(f"  get(id) entry only vs full scan:     bytes x{b_scan / max(b_entry, 1):.0f}, time x{t_scan / t_entry:.1f}")
    print(f"  1% query vs full scan:               bytes x{b_qscan / max(b_q, 1):.0f}, time x{t_qscan / t_q:.1f}")
    print(f"  1% query vs scan without text:       bytes x{b_qcols / max(b_q, 1):.1f}, time x{t_qcols / t_q:.1f}")


if __name__ == "__main__":
    main()
