"""Main-text extraction from HTML: resiliparse against trafilatura, quality and speed.

    .venv/bin/python benchmarks/html_extraction.py --html-dir ARTICLE_BENCHMARK/html \
        [--data ../shared/data] [--repeat 1]

Quality is measured on the article-extraction benchmark of scrapinghub
(github.com/scrapinghub/article-extraction-benchmark @ 4a3bc979, MIT): its ``html/*.html.gz``
pages (give the folder of a checkout with ``--html-dir``) against the hand-made article
bodies in ``<data>/quality/article_extraction_benchmark.jsonl`` (its ``ground-truth.json``),
with that benchmark's own metric: precision and recall of 4-word shingles, each page
weighted equally (``string_shingle_matching`` of its ``evaluate.py``, re-implemented below).

Speed: pages per second on one core (this process), the whole set, each extractor with the
settings the WARC reader uses (:data:`tamis.sources.warc.EXTRACTORS`): extraction alone, and
the whole reader (``read_warc``: gzipped WARC records parsed, decoded and extracted) on a
WARC file of the same pages.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from tamis.sources.warc import EXTRACTORS, decode_html, read_warc

_TOKEN = re.compile(r"\w+", re.UNICODE)


def shingles(text: str, n: int = 4) -> Counter:
    tokens = _TOKEN.findall(text or "")
    return Counter(tuple(tokens[i : i + n]) for i in range(max(1, len(tokens) - n + 1)) if tokens[i : i + n])


def tp_fp_fn(true: str, pred: str) -> tuple[float, float, float]:
    t, p = shingles(true), shingles(pred)
    tp = sum((t & p).values())
    fp = sum((p - t).values())
    fn = sum((t - p).values())
    total = tp + fp + fn
    return (tp / total, fp / total, fn / total) if total else (0.0, 0.0, 0.0)


def precision_recall(rows: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    def precision(tp, fp, fn):
        return 1.0 if fp == fn == 0 else 0.0 if tp == fp == 0 else tp / (tp + fp)

    def recall(tp, fp, fn):
        return 1.0 if fp == fn == 0 else 0.0 if tp == fn == 0 else tp / (tp + fn)

    p = statistics.mean(precision(*r) for r in rows if r[0] + r[1] > 0)
    r = statistics.mean(recall(*r) for r in rows if r[0] + r[2] > 0)
    return p, r, 2 * p * r / (p + r)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--html-dir", type=Path, required=True, help="html/ of the article-extraction-benchmark checkout"
    )
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=1, help="passes over the pages for the speed figure")
    args = parser.parse_args()

    gold = {}
    with open(args.data / "quality" / "article_extraction_benchmark.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            gold[row["id"]] = row["article_body"]
    pages = {}
    for key in sorted(gold):
        path = args.html_dir / f"{key}.html.gz"
        pages[key] = decode_html(gzip.decompress(path.read_bytes()), None)
    mb = sum(len(h.encode()) for h in pages.values()) / 1e6
    print(f"{len(pages)} pages, {mb:.1f} MB of HTML; gold: article bodies of the article-extraction benchmark")
    with tempfile.NamedTemporaryFile(suffix=".warc.gz") as warc:
        warc.write(b"".join(warc_record(k, html.encode()) for k, html in pages.items()))
        warc.flush()
        print_results(pages, gold, mb, warc.name, args.repeat)
    return 0


def print_results(pages: dict[str, str], gold: dict[str, str], mb: float, warc: str, repeat: int) -> None:
    print(
        f"{'extractor':<14}{'precision':>10}{'recall':>10}{'F1':>8}{'pages/s/core':>14}{'MB/s/core':>11}{'WARC pages/s/core':>19}"
    )
    for name, extract in EXTRACTORS.items():
        extract("<html><body><p>warm up</p></body></html>")
        started = time.perf_counter()
        for _ in range(repeat):
            out = {key: extract(html) for key, html in pages.items()}
        seconds = (time.perf_counter() - started) / repeat
        for _ in read_warc(warc, 50_000_000, name):  # imports and file cache warmed up
            break
        started = time.perf_counter()
        read = sum(chunk.records.num_rows for chunk in read_warc(warc, 50_000_000, name))
        warc_seconds = time.perf_counter() - started
        assert read == len(pages)
        p, r, f1 = precision_recall([tp_fp_fn(gold[k], out[k] or "") for k in pages])
        print(
            f"{name:<14}{p:>10.3f}{r:>10.3f}{f1:>8.3f}{len(pages) / seconds:>14.1f}{mb / seconds:>11.2f}"
            f"{len(pages) / warc_seconds:>19.1f}"
        )


def warc_record(key: str, html: bytes) -> bytes:
    """One gzipped WARC response record holding ``html`` (as a crawler writes it)."""
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html
    head = (
        f"WARC/1.1\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{key[:8]}-0000-4000-8000-{key[8:20]}>\r\n"
        f"WARC-Date: 2026-11-20T00:00:00Z\r\nWARC-Target-URI: https://example.org/{key}\r\n"
        f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n"
    ).encode()
    return gzip.compress(head + http + b"\r\n\r\n", mtime=0)


if __name__ == "__main__":
    raise SystemExit(main())
