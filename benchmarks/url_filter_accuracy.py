"""The url_filter stage on real URLs: adult URLs caught, article URLs kept, and speed.

    .venv/bin/python benchmarks/url_filter_accuracy.py [--ut1 url_filterblacklistsv0_3_0.tar.gz]

Positives: the ``urls`` list of the UT1 blacklists (Université Toulouse 1 Capitole, adult
category, CC BY-SA 4.0) as shipped in the datatrove 0.10.1 wheel
(``datatrove/assets/url_filterblacklistsv0_3_0.tar.gz``; default: that file in
``benchmarks/.peer-venv``, else the 200-URL excerpt in ``tests/data/urls``). Negatives: the
352 page and article URLs of ``tests/data/urls/page_urls.txt.gz``. Three settings: the
package's default lists; the default lists plus UT1's 4.5 million ``domains`` as a list of
one's own (the hashed lookup at that size); and, for speed, documents per second on one core.
"""

from __future__ import annotations

import argparse
import gzip
import tarfile
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from tamis.stages.url_filter import UrlFilter

REPO = Path(__file__).resolve().parents[1]
PEER_ASSET = (
    REPO / "benchmarks/.peer-venv/lib/python3.11/site-packages/datatrove/assets/url_filterblacklistsv0_3_0.tar.gz"
)


def table(urls: list[str]) -> pa.Table:
    urls = [u if "://" in u else "http://" + u for u in urls]
    return pa.table(
        {"id": [str(i) for i in range(len(urls))], "source": ["b"] * len(urls), "text": ["t"] * len(urls), "url": urls}
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ut1", type=Path, default=PEER_ASSET)
    args = parser.parse_args()
    pages = table(gzip.decompress((REPO / "tests/data/urls/page_urls.txt.gz").read_bytes()).decode().split())
    with tempfile.TemporaryDirectory() as tmp:
        lists = Path(tmp) / "lists"
        if args.ut1.exists():
            with tarfile.open(args.ut1) as tar:
                tar.extractall(tmp, filter="data")
            adult = table((Path(tmp) / "urls").read_text().split())
            (lists / "domains").mkdir(parents=True)
            (Path(tmp) / "domains").rename(lists / "domains" / "ut1_adult.txt")
            source = f"{args.ut1.name} (UT1 urls)"
        else:
            adult = table(
                gzip.decompress((REPO / "tests/data/urls/ut1_adult_urls.txt.gz").read_bytes()).decode().split()
            )
            lists = None
            source = "tests/data/urls/ut1_adult_urls.txt.gz (excerpt)"
        print(f"positives: {adult.num_rows} adult URLs from {source}; negatives: {pages.num_rows} page/article URLs")
        settings = {"default lists": UrlFilter()}
        if lists is not None:
            settings["default + UT1 domains (4.5M)"] = UrlFilter({"lists": str(lists)})
        print(f"{'setting':<32}{'recall':>8}{'kept negatives':>16}{'docs/s/core':>13}{'setup s':>9}")
        for name, stage in settings.items():
            started = time.perf_counter()
            stage.setup()
            setup = time.perf_counter() - started
            started = time.perf_counter()
            caught = sum(
                stage.process_batch(adult.slice(i, 2048)).dropped.num_rows for i in range(0, adult.num_rows, 2048)
            )
            seconds = time.perf_counter() - started
            false = stage.process_batch(pages).dropped.num_rows
            print(
                f"{name:<32}{caught / adult.num_rows:>8.3f}{(pages.num_rows - false) / pages.num_rows:>16.3f}"
                f"{adult.num_rows / seconds:>13,.0f}{setup:>9.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
