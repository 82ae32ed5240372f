"""Rebuild include/sample/ from the evaluation corpora (../shared/data in the
development checkout). Deterministic: the same inputs give the same sample files.

Layout written (one folder per source, date partitions, every ingest format):
  web/date=2026-11-20/*.jsonl     Wikipedia, public-domain speeches, C4/RedPajama fixtures
  web/date=2026-11-21/*.jsonl.gz  movie reviews
  web/date=2026-11-22/*.jsonl     more reviews, and Wikipedia pages crawled again
  code/date=2026-11-20/*.parquet  CPython stdlib, lingua-rs, go-trafilatura
  udhr/date=2026-11-20/*.txt      the UDHR in many languages, one file per document
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DATA = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data")
OUT = Path(__file__).resolve().parents[1] / "include" / "sample"
UDHR_LANGS = [
    "eng",
    "cmn_hans",
    "cmn_hant",
    "jpn",
    "deu",
    "fra",
    "spa",
    "por_PT",
    "ita",
    "rus",
    "arb",
    "hin",
    "kor",
    "nld",
    "pol",
    "tur",
    "vie",
    "swe",
    "ukr",
    "pes_1",
    "heb",
    "tha",
    "ind",
    "ell_monotonic",
    "ces",
    "fin",
    "dan",
    "hun",
    "ron",
    "bul",
    "ben",
    "swh",
    "zul",
    "amh",
    "tam",
    "kat",
    "hye",
    "khm",
    "yor",
    "mya",
]


def read(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_jsonl(path: Path, rows: list[dict], compress: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)


def main() -> None:
    web = DATA / "web_en"
    wiki = [
        {"id": r["id"], "url": f"https://en.wikipedia.org/wiki/{r['title'].replace(' ', '_')}", "text": r["text"]}
        for r in read(web / "wikipedia_en_sample.jsonl")[:40]
    ]
    speeches = [{"id": r["id"], "text": r["text"]} for r in read(web / "us_presidential_speeches.jsonl")[::6]]
    fixtures = [
        {"id": r["id"], "text": r["text"], "origin": r["source"]}
        for r in read(web / "cc_c4_pile_fixtures_by_source.jsonl")
    ]
    reviews = [{"id": r["id"], "text": r["text"]} for r in read(web / "movie_reviews_polarity_2000.jsonl.gz")[::8]]
    write_jsonl(OUT / "web/date=2026-11-20/wikipedia.jsonl", wiki)
    write_jsonl(OUT / "web/date=2026-11-20/speeches.jsonl", speeches)
    write_jsonl(OUT / "web/date=2026-11-20/fixtures.jsonl", fixtures)
    write_jsonl(OUT / "web/date=2026-11-21/movie_reviews.jsonl.gz", reviews, compress=True)
    # A later crawl: new reviews, plus pages fetched again under new record ids, which
    # the nightly ingest must recognise as already in the corpus.
    later = [{"id": r["id"], "text": r["text"]} for r in read(web / "movie_reviews_polarity_2000.jsonl.gz")[4::8][:20]]
    recrawled = [{**r, "id": f"recrawl-{r['id']}"} for r in wiki[:5]]
    write_jsonl(OUT / "web/date=2026-11-22/crawl.jsonl", later + recrawled)

    code = []
    for name in ["code_00", "code_01", "code_03"]:
        code += read(DATA / "code" / f"{name}.jsonl.gz")
    picked = [r for r in code if r["language"] == "Python"][::12] + [
        r for r in code if r["language"] in ("Rust", "Go")
    ][::3]
    table = pa.table(
        {
            "id": [f"{r['repo']}:{r['path']}" for r in picked],
            "text": [r["text"] for r in picked],
            "language": [r["language"] for r in picked],
            "license": [r["license"] for r in picked],
        }
    )
    (OUT / "code/date=2026-11-20").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, OUT / "code/date=2026-11-20/files.parquet", compression="zstd")

    udhr = {r["lang_code"]: r for r in read(DATA / "multilingual" / "udhr_unicode_388docs.jsonl.gz")}
    for lang in UDHR_LANGS:
        path = OUT / "udhr/date=2026-11-20" / f"{lang}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(udhr[lang]["text"], encoding="utf-8")


if __name__ == "__main__":
    main()
