"""WARC sources: a page becomes its main text with URL, fetch date and content type; what is
not a page is quarantined with its reason; plain, gzipped and damaged archives."""

from __future__ import annotations

import gzip
import shutil
import zlib

from conftest import REPO
from tamis.cli import run_one
from tamis.dataset import Dataset

SAMPLE_WARC = REPO / "include/sample/warc/date=2026-11-20/crawl.warc.gz"


def members(path) -> list[bytes]:
    """The gzip members of an archive: one record each."""
    data, out = path.read_bytes(), []
    while data:
        d = zlib.decompressobj(wbits=31)
        d.decompress(data)
        out.append(data[: len(data) - len(d.unused_data)])
        data = d.unused_data
    return out


def ingest(make_pipeline, folder, **params):
    pipeline = make_pipeline({"crawl": {"path": str(folder)}}, stages={"ingest": params})
    manifest = run_one(pipeline, "ingest", "r1")
    return manifest, Dataset(manifest["output"]).read().to_pylist()


def test_pages_become_main_text_with_url_date_and_content_type(tmp_path, make_pipeline):
    shutil.copytree(SAMPLE_WARC.parent, tmp_path / "crawl" / SAMPLE_WARC.parent.name)
    manifest, rows = ingest(make_pipeline, tmp_path / "crawl")
    by_url = {r["url"]: r for r in rows}
    assert set(by_url) == {
        "https://creativecommons.org/about/",
        "https://en.wikipedia.org/wiki/T-distributed_stochastic_neighbor_embedding",
        "https://wikimediafoundation.org/news/2020/01/15/access-to-wikipedia-restored-in-turkey-after-more-than-two-and-a-half-years/",
        "http://rueda.wikidot.com/enchufla",
    }
    page = by_url["https://en.wikipedia.org/wiki/T-distributed_stochastic_neighbor_embedding"]
    assert (
        "stochastic neighbor embedding" in page["text"]
        and "<div" not in page["text"]
        and "function(" not in page["text"]
    )
    assert page["content_type"] == "text/html" and page["fetch_date"].startswith("2026-11-20T08:")
    assert page["id"].startswith("crawl/urn:uuid:") and page["source"] == "crawl" and page["date"] == "2026-11-20"
    assert manifest["counts"] == {"in": 7, "kept": 4, "dropped": 0, "quarantined": 3}
    assert manifest["quarantine_reasons"] == {"warc.http_status": 1, "warc.not_html": 1, "warc.undecodable": 1}
    # Requests and capture metadata are not documents: counted, never read as pages.
    assert manifest["metrics"]["ingest.warc.skipped.request"] == 4
    assert manifest["metrics"]["ingest.warc.skipped.metadata"] == 4


def test_plain_warc_reads_like_the_gzipped_one(tmp_path, make_pipeline):
    (tmp_path / "crawl").mkdir()
    (tmp_path / "crawl" / "crawl.warc").write_bytes(gzip.decompress(SAMPLE_WARC.read_bytes()))
    manifest, rows = ingest(make_pipeline, tmp_path / "crawl")
    assert manifest["counts"]["kept"] == 4 and rows[0]["date"] == "undated"


def test_a_declared_legacy_charset_is_decoded(tmp_path, make_pipeline):
    record = members(SAMPLE_WARC)[7]  # the wikimediafoundation.org response
    raw = gzip.decompress(record)
    head, _, rest = raw.partition(b"\r\n\r\n")
    http_head, _, body = rest.partition(b"\r\n\r\n")
    html = body[: body.rindex(b"\r\n\r\n")].decode("utf-8")
    latin = html.replace('charset="UTF-8"', 'charset="windows-1252"').encode("cp1252", "replace")
    http_head = http_head.replace(b"charset=utf-8", b"charset=windows-1252").replace(
        f"Content-Length: {len(html.encode())}".encode(), f"Content-Length: {len(latin)}".encode()
    )
    block = http_head + b"\r\n\r\n" + latin
    head = head.replace(f"Content-Length: {len(rest) - 4}".encode(), f"Content-Length: {len(block)}".encode())
    (tmp_path / "crawl").mkdir()
    (tmp_path / "crawl" / "one.warc").write_bytes(head + b"\r\n\r\n" + block + b"\r\n\r\n")
    manifest, rows = ingest(make_pipeline, tmp_path / "crawl")
    assert manifest["counts"]["kept"] == 1
    # Non-ASCII letters come back as written: the page was read as windows-1252, not UTF-8.
    assert "Bu yazının Türkçe" not in rows[0]["text"] and "Türkçe" in rows[0]["text"]
    assert "Access to Wikipedia restored in Turkey" in rows[0]["text"] and "\ufffd" not in rows[0]["text"]


def test_a_truncated_archive_keeps_the_records_before_the_damage(tmp_path, make_pipeline):
    data = b"".join(members(SAMPLE_WARC)[:6])
    (tmp_path / "crawl").mkdir()
    (tmp_path / "crawl" / "cut.warc.gz").write_bytes(data + members(SAMPLE_WARC)[7][:500])
    manifest, _ = ingest(make_pipeline, tmp_path / "crawl")
    assert manifest["counts"]["kept"] == 2
    assert manifest["quarantine_reasons"] == {"unreadable_file": 1}


def test_trafilatura_extracts_the_same_pages(tmp_path, make_pipeline):
    shutil.copytree(SAMPLE_WARC.parent, tmp_path / "crawl" / SAMPLE_WARC.parent.name)
    manifest, rows = ingest(make_pipeline, tmp_path / "crawl", html_extractor="trafilatura")
    assert manifest["counts"]["kept"] == 4
    texts = {r["url"]: r["text"] for r in rows}
    assert "Creative Commons helps you legally share" in texts["https://creativecommons.org/about/"]
