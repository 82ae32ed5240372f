"""URL rules: lists of domains, URLs, words and subwords, each drop naming its list; real
adult URLs (UT1) against real article and page URLs; per-domain caps across the corpus."""

from __future__ import annotations

import gzip

import pyarrow as pa
import pytest

from conftest import TEST_DATA, write_dataset
from tamis.dataset import Dataset
from tamis.runner import run_stage
from tamis.stages.domain_cap import DomainCap
from tamis.stages.url_filter import UrlFilter


def urls(name: str) -> list[str]:
    lines = gzip.decompress((TEST_DATA / "urls" / f"{name}.txt.gz").read_bytes()).decode().split()
    return [u if "://" in u else "http://" + u for u in lines]


ADULT = urls("ut1_adult_urls")
PAGES = urls("page_urls")


def table(url_list: list[str | None], source: str = "web") -> pa.Table:
    n = len(url_list)
    return pa.table(
        {
            "id": [f"{source}/{i}" for i in range(n)],
            "source": [source] * n,
            "text": ["page text"] * n,
            "url": pa.array(url_list, pa.string()),
        }
    )


def stage(**params) -> UrlFilter:
    s = UrlFilter(params)
    s.check_ready()
    s.setup()
    return s


def reasons(result) -> dict[str, str]:
    return dict(zip(result.dropped.column("id").to_pylist(), result.dropped.column("reason").to_pylist()))


def write_list(folder, kind: str, name: str, entries: list[str]):
    (folder / kind).mkdir(parents=True, exist_ok=True)
    (folder / kind / f"{name}.txt").write_text("# a comment line\n" + "\n".join(entries) + "\n")
    return folder


def test_default_lists_drop_adult_urls_and_keep_article_urls():
    adult = stage().process_batch(table(ADULT))
    pages = stage().process_batch(table(PAGES))
    assert pages.dropped.num_rows == 0
    assert adult.dropped.num_rows >= 40  # the word lists alone; whole-domain lists catch the rest
    assert {r.rsplit(".", 1)[0] for r in reasons(adult).values()} <= {
        "url_filter.word",
        "url_filter.soft_words",
        "url_filter.subword",
        "url_filter.domain",
    }


def test_a_listed_domain_blocks_its_subdomains_and_the_reason_names_the_list(tmp_path):
    lists = write_list(tmp_path / "lists", "domains", "mine", ["wordpress.com"])
    result = stage(lists=str(lists), default_lists=False).process_batch(table(PAGES))
    blocked = [u for u in PAGES if u.split("/")[2].endswith(".wordpress.com") or u.split("/")[2] == "wordpress.com"]
    assert blocked and len(reasons(result)) == len(blocked)
    assert set(reasons(result).values()) == {"url_filter.domain.mine"}
    assert (
        result.dropped.column("detail")[0].as_py().startswith("host ")
        and "under wordpress.com" in result.dropped.column("detail")[0].as_py()
    )
    # The domain's name inside another host is not that domain.
    kept = stage(lists=str(lists), default_lists=False).process_batch(
        table(["https://notwordpress.com/a", "https://wordpress.com.evil.org/"])
    )
    assert kept.dropped.num_rows == 0


def test_a_url_list_matches_without_scheme_www_case_or_trailing_slash(tmp_path):
    page = PAGES[3]
    bare = page.split("://", 1)[1].removeprefix("www.")
    lists = write_list(tmp_path / "lists", "urls", "takedowns", [bare.upper() + "/"])
    result = stage(lists=str(lists), default_lists=False).process_batch(table([page, PAGES[4]]))
    assert reasons(result) == {"web/0": "url_filter.url.takedowns"}


def test_banned_words_match_whole_url_words_and_subwords_match_anywhere(tmp_path):
    lists = write_list(tmp_path / "lists", "words", "w", ["bundesliga"])
    write_list(lists, "subwords", "s", ["luxur"])
    result = stage(lists=str(lists), default_lists=False).process_batch(table(PAGES))
    got = reasons(result)
    by_url = {u: got.get(f"web/{i}") for i, u in enumerate(PAGES)}
    for url, reason in by_url.items():
        squeezed = "".join(c for c in url.lower() if c.isalnum())
        if "bundesliga" in url.lower().replace("-", " ").replace("/", " ").replace(".", " ").split():
            assert reason == "url_filter.word.w"
        elif "luxur" in squeezed:
            assert reason == "url_filter.subword.s", url
        else:
            assert reason is None, url
    assert "url_filter.subword.s" in got.values()


def test_documents_without_a_url_are_kept_and_counted():
    result = stage().process_batch(table([None, "", ADULT[0]]))
    assert result.kept.num_rows == 2 and result.metrics["url_filter.no_url"] == 2


def test_no_list_at_all_is_an_error_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="no list"):
        UrlFilter({"default_lists": False, "lists": str(tmp_path)}).check_ready()
    with pytest.raises(FileNotFoundError):
        UrlFilter({"lists": str(tmp_path / "missing")}).check_ready()


def test_domain_cap_keeps_the_first_documents_of_each_domain_across_shards(tmp_path):
    # Every page URL twice over three parts: the cap counts across parts, in corpus order.
    rows = [u for u in PAGES if "::" not in u] * 2  # a few page ids of the eval set are not URLs
    parts = {f"p{k}": table(rows[k::3], f"s{k}") for k in range(3)}
    write_dataset(tmp_path / "in", parts)
    manifest = run_stage(
        DomainCap({"max_per_domain": 2, "key": "host"}), str(tmp_path / "in"), str(tmp_path / "out"), workers=2
    )
    out = Dataset(str(tmp_path / "out")).read()
    hosts = [u.split("/")[2].removeprefix("www.") for u in out.column("url").to_pylist()]
    counts = {h: hosts.count(h) for h in hosts}
    assert max(counts.values()) == 2
    expected = {}
    for u in rows:
        h = u.split("/")[2].removeprefix("www.")
        expected[h] = min(expected.get(h, 0) + 1, 2)
    assert counts == expected
    assert manifest["counts"]["dropped"] == len(rows) - sum(expected.values())
    assert manifest["drop_reasons"] == {"domain_cap.over_cap": manifest["counts"]["dropped"]}
    # The first two of each domain in corpus order (part by part, row by row) are the ones kept.
    order = [u for k in range(3) for u in rows[k::3]]
    seen, first = {}, []
    for u in order:
        h = u.split("/")[2].removeprefix("www.")
        seen[h] = seen.get(h, 0) + 1
        if seen[h] <= 2:
            first.append(u)
    assert sorted(out.column("url").to_pylist()) == sorted(first)


def test_registered_domains_group_hosts_and_documents_without_a_url_are_never_capped(tmp_path):
    url_list = [
        "https://en.wikipedia.org/wiki/Albedo",
        "https://de.wikipedia.org/wiki/Albedo",
        "https://www.bbc.co.uk/news/a",
        "https://bbc.co.uk/news/b",
        None,
        None,
        None,
    ]
    write_dataset(tmp_path / "in", table(url_list))
    manifest = run_stage(DomainCap({"max_per_domain": 1}), str(tmp_path / "in"), str(tmp_path / "out"))
    kept = Dataset(str(tmp_path / "out")).read().column("url").to_pylist()
    assert kept == ["https://en.wikipedia.org/wiki/Albedo", "https://www.bbc.co.uk/news/a", None, None, None]
    assert manifest["metrics"]["domain_cap.domains"] == 2 and manifest["metrics"]["domain_cap.domains_capped"] == 2
    dropped = Dataset(str(tmp_path / "out")).read_side("dropped").column("detail").to_pylist()
    assert dropped == ["wikipedia.org: cap 1 reached", "bbc.co.uk: cap 1 reached"]
