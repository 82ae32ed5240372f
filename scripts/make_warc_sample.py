"""Build the sample web archive, ``include/sample/warc/date=2026-11-20/crawl.warc.gz``, from the
sample's HTML pages (``include/sample/html``), byte for byte the same on every run.

    python scripts/make_warc_sample.py

It holds what a crawl holds: for each page a ``request``, its ``response`` and a
``metadata`` record; and the responses that are not documents: a redirect, a plain-text
file, and an HTML-labelled response whose body is compressed bytes without the
``Content-Encoding`` that would say so. Each record is its own gzip member (as Common Crawl
writes them), with fixed record ids and dates, and gzip's timestamp at zero.
"""

from __future__ import annotations

import gzip
import hashlib
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "include" / "sample" / "html"
OUT = ROOT / "include" / "sample" / "warc" / "date=2026-11-20" / "crawl.warc.gz"
FETCHED = "2026-11-20T08:{minute:02d}:00Z"

# page file -> the URL it was fetched from (its canonical link)
PAGES = {
    "creativecommons.org.about.html.gz": "https://creativecommons.org/about/",
    "en.wikipedia.org.tsne.html.gz": "https://en.wikipedia.org/wiki/T-distributed_stochastic_neighbor_embedding",
    "wikimediafoundation.org.turkey.html.gz": "https://wikimediafoundation.org/news/2020/01/15/"
    "access-to-wikipedia-restored-in-turkey-after-more-than-two-and-a-half-years/",
    "rueda.wikidot.com.enchufla.html.gz": "http://rueda.wikidot.com/enchufla",
}


def record_id(n: int) -> str:
    return f"<urn:uuid:{uuid.UUID(int=n, version=4)}>"


def record(kind: str, n: int, uri: str, content: bytes, content_type: str, minute: int) -> bytes:
    headers = [
        ("WARC-Type", kind),
        ("WARC-Record-ID", record_id(n)),
        ("WARC-Date", FETCHED.format(minute=minute)),
        ("WARC-Target-URI", uri),
        ("WARC-Block-Digest", "sha1:" + hashlib.sha1(content).hexdigest()),
        ("Content-Type", content_type),
        ("Content-Length", str(len(content))),
    ]
    head = "WARC/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return gzip.compress(head.encode() + content + b"\r\n\r\n", mtime=0)


def http_response(status: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items()), f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def http_request(uri: str) -> bytes:
    host = uri.split("/")[2]
    path = "/" + uri.split("/", 3)[3] if uri.count("/") > 2 else "/"
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tamis-sample\r\n\r\n".encode()


def main() -> int:
    members = []
    n = 0

    def add(kind: str, uri: str, content: bytes, content_type: str) -> None:
        nonlocal n
        n += 1
        members.append(record(kind, n, uri, content, content_type, minute=n))

    for name, uri in PAGES.items():
        page = gzip.decompress((HTML / name).read_bytes())
        add("request", uri, http_request(uri), "application/http; msgtype=request")
        add(
            "response",
            uri,
            http_response("200 OK", {"Content-Type": "text/html; charset=utf-8"}, page),
            "application/http; msgtype=response",
        )
        add("metadata", uri, b"fetchTimeMs: 100\r\n", "application/warc-fields")
    # Responses that are not documents, each quarantined with its reason.
    add(
        "response",
        "http://creativecommons.org/about",
        http_response(
            "301 Moved Permanently",
            {"Location": PAGES["creativecommons.org.about.html.gz"], "Content-Type": "text/html"},
            b"",
        ),
        "application/http; msgtype=response",
    )
    udhr = (ROOT / "include" / "sample" / "udhr" / "date=2026-11-20" / "eng.txt").read_bytes()
    add(
        "response",
        "https://www.ohchr.org/udhr/eng.txt",
        http_response("200 OK", {"Content-Type": "text/plain; charset=utf-8"}, udhr),
        "application/http; msgtype=response",
    )
    packed = gzip.compress(gzip.decompress((HTML / "en.wikipedia.org.tsne.html.gz").read_bytes()), mtime=0)
    add(
        "response",
        "https://en.wikipedia.org/wiki/T-SNE",
        http_response("200 OK", {"Content-Type": "text/html; charset=utf-8"}, packed),
        "application/http; msgtype=response",
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(b"".join(members))
    print(f"{OUT.relative_to(ROOT)}: {n} records, {OUT.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
