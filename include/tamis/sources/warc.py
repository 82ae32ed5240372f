"""Web archives: WARC files, plain or gzipped, as Common Crawl and web crawlers write them.

Each ``response`` (or ``resource``) record is one document: its main text is extracted from
the HTML with resiliparse by default (``benchmarks/html_extraction.py``: 0.94 F1 on the
article-extraction benchmark against trafilatura's 0.96, at over ten times its speed) or
trafilatura (ingest's ``html_extractor``), and the
target URL, the fetch date (``WARC-Date``) and the content type are kept. Other records
(``request``, ``metadata``, ``warcinfo``, ``revisit``) describe a capture rather than hold
one; they are counted under ``ingest.warc.skipped.<type>``, never turned into documents.

A document record is rejected with its reason when it cannot become text:
``warc.not_html`` (another content type: images, PDFs, feeds...), ``warc.http_status``
(no page: a redirect, an error), ``warc.undecodable`` (no declared or detected encoding
decodes it, its content encoding is damaged, or it is binary under an HTML label),
``doc_too_large`` (a payload over ``max_doc_bytes``, never read). A damaged archive stops
at the damage with ``unreadable_file``; the records before it are kept.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator

import pyarrow as pa

from tamis.sources.chunk import SOURCE_RECORD_SCHEMA, Chunk, open_target, rejected

HTML_TYPES = ("text/html", "application/xhtml+xml")
# Extra columns of a WARC document (null for other sources).
WARC_COLUMNS = [("fetch_date", pa.string()), ("content_type", pa.string())]
RECORD_SCHEMA = pa.schema([*SOURCE_RECORD_SCHEMA, *WARC_COLUMNS])
BATCH_RECORDS = 256
# Decoded text with more control characters than this share is binary under a text label.
MAX_CONTROL_SHARE = 0.01
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


_SKIPPED_ELEMENTS = ["figcaption", "aside", "nav", "footer"]


def extract_resiliparse(html: str) -> str:
    from resiliparse.extract.html2text import extract_plain_text

    # Post meta (bylines, dates), captions and navigation are not the page's text.
    return extract_plain_text(
        html,
        main_content=True,
        preserve_formatting=True,
        alt_texts=False,
        list_bullets=True,
        comments=False,
        post_meta=False,
        skip_elements=_SKIPPED_ELEMENTS,
    )


def extract_trafilatura(html: str) -> str:
    import trafilatura

    return trafilatura.extract(html, include_comments=False, include_tables=True, favor_precision=False) or ""


EXTRACTORS: dict[str, Callable[[str], str]] = {"resiliparse": extract_resiliparse, "trafilatura": extract_trafilatura}


def decode_html(data: bytes, declared: str | None) -> str | None:
    """The page as text: its declared charset, else its ``<meta>`` charset, else the detected
    one, else UTF-8, each tried strictly; None when none decodes it into text."""
    tried: set[str] = set()
    for encoding in _encodings(data, declared):
        if not encoding or encoding.lower() in tried:
            continue
        tried.add(encoding.lower())
        try:
            text = data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
        head = text[:100_000]
        if len(_CONTROL.findall(head)) > MAX_CONTROL_SHARE * len(head):
            return None
        return text.removeprefix("\ufeff")
    return None


def _encodings(data: bytes, declared: str | None) -> Iterator[str | None]:
    """Candidate encodings, best first; the detectors run only when the declared one fails."""
    from resiliparse.parse.encoding import detect_encoding

    yield declared
    yield detect_encoding(data, from_html_meta=True)
    yield detect_encoding(data)
    yield "utf-8"


def read_warc(
    url: str, max_doc_bytes: int, extractor: str = "resiliparse", batch_records: int = BATCH_RECORDS, fs=None
) -> Iterator[Chunk]:
    from fastwarc.warc import ArchiveIterator

    fs, path = open_target(url, fs)
    with fs.open(path, "rb") as stream:
        extract = EXTRACTORS[extractor]
        batch = _Batch(extract)
        ordinal = 0
        try:
            # auto_decode: content and transfer encodings (gzip, brotli, chunked) are undone.
            for record in ArchiveIterator(stream, parse_http=True, auto_decode="all"):
                kind = str(record.record_type)
                if kind not in ("response", "resource"):
                    batch.metrics[f"ingest.warc.skipped.{kind}"] += 1
                    continue
                ordinal += 1
                batch.add(record, ordinal, max_doc_bytes)
                if batch.size >= batch_records:
                    yield batch.chunk()
                    batch = _Batch(extract)
        except _Truncated as exc:
            batch.bad.append((ordinal, None, "unreadable_file", str(exc), None))
        except Exception as exc:  # a damaged archive: what was read before the damage is kept
            batch.bad.append(
                (None, None, "unreadable_file", f"after record {ordinal}: {type(exc).__name__}: {exc}", None)
            )
        yield batch.chunk()


class _Truncated(Exception):
    pass


class _Batch:
    def __init__(self, extract: Callable[[str], str]):
        self.extract = extract
        self.rows: list[tuple] = []
        self.bad: list[tuple] = []
        self.metrics: Counter = Counter()

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.bad)

    def add(self, record, ordinal: int, max_doc_bytes: int) -> None:
        record_id = (record.record_id or "").strip("<>") or None
        target = record.headers.get("WARC-Target-URI")
        fetched = record.headers.get("WARC-Date")
        if record.content_length > max_doc_bytes:
            self.bad.append(
                (
                    ordinal,
                    record_id,
                    "doc_too_large",
                    f"a record of {record.content_length} bytes > max_doc_bytes {max_doc_bytes}",
                    target,
                )
            )
            return
        http = record.is_http
        status = record.http_headers.status_code if http else None
        content_type = (record.http_content_type if http else record.headers.get("Content-Type")) or ""
        mime = content_type.split(";", 1)[0].strip().lower()
        if http and status is not None and not 200 <= status < 300:
            self.bad.append((ordinal, record_id, "warc.http_status", f"HTTP {status} {target}", None))
            return
        try:
            data = record.reader.read()
        except Exception as exc:  # a damaged content encoding
            self.bad.append((ordinal, record_id, "warc.undecodable", f"{type(exc).__name__}: {exc}", None))
            return
        if len(data) < record.content_length and not (http and record.http_headers.get("Content-Encoding")):
            raise _Truncated(f"the archive ends inside record {ordinal} ({len(data)} of {record.content_length} bytes)")
        if not mime:
            from resiliparse.parse.encoding import detect_mime

            mime = detect_mime(data[:4096])
        if mime not in HTML_TYPES:
            self.bad.append(
                (ordinal, record_id, "warc.not_html", f"content type {mime or 'unknown'} at {target}", None)
            )
            return
        charset = record.http_charset if http else None
        html = decode_html(data, charset)
        if html is None:
            self.bad.append(
                (
                    ordinal,
                    record_id,
                    "warc.undecodable",
                    f"no encoding (declared {charset or 'none'}) decodes it into text",
                    None,
                )
            )
            return
        self.rows.append((self.extract(html), record_id, target, ordinal, ordinal - 1, fetched, mime))

    def chunk(self) -> Chunk:
        columns = list(zip(*self.rows)) or [()] * 7
        text, ids, urls, lines, ordinals, fetched, mimes = columns
        records = pa.table(
            [
                pa.array(text, pa.string()),
                pa.array(ids, pa.string()),
                pa.array(urls, pa.string()),
                pa.array(lines, pa.int64()),
                pa.array(ordinals, pa.int64()),
                pa.array(fetched, pa.string()),
                pa.array(mimes, pa.string()),
            ],
            schema=RECORD_SCHEMA,
        )
        return Chunk(records=records, rejected=rejected(self.bad), metrics=self.metrics)
