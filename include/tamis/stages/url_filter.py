"""URL rules: block lists of domains and URLs, and banned words in the URL.

As in RefinedWeb (Penedo et al. 2023, section G.1) and datatrove's URL filter, a document
is dropped when its URL

* has a host on a domain list, or under one (``url_filter.domain.<list>``);
* is on a URL list, compared without scheme, ``www.``, case or trailing slash
  (``url_filter.url.<list>``);
* holds a banned word, its words being the runs of letters and digits
  (``url_filter.word.<list>``), or at least ``soft_word_threshold`` distinct words of a soft
  list (``url_filter.soft_words.<list>``);
* contains a banned subword once everything but letters and digits is removed
  (``url_filter.subword.<list>``).

Lists are text files, one entry a line (``#`` starts a comment), laid out as
``<folder>/<kind>/<name>.txt`` with kind one of ``domains``, ``urls``, ``words``,
``soft_words``, ``subwords``; the reason names the kind and the list. The package's small
default lists (``tamis/data/url_lists``, their origin in its README) apply unless
``default_lists`` is off; ``lists`` adds a folder of a pipeline's own. Words and subwords
are compared as datatrove does: lower-cased, with everything but letters and digits removed.

Matching is vectorised: hosts, their parent domains, URLs and URL words are hashed a batch
at a time and looked up in sorted hash arrays built once per worker, so a list of millions
of domains costs one binary search per candidate, not a scan. Documents without a URL are
kept and counted (``url_filter.no_url``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tamis.stage import BatchResult, LocalPath, Stage, StageParams, split_by_reason
from tamis.text_hash import string_hashes

DEFAULT_LISTS = Path(__file__).resolve().parent.parent / "data" / "url_lists"
KINDS = ("domains", "urls", "words", "soft_words", "subwords")
REASON_KIND = {"domains": "domain", "urls": "url", "words": "word", "soft_words": "soft_words", "subwords": "subword"}
# Parent domains looked up per host: a.b.c.example.co.uk is six levels.
MAX_LEVELS = 8
_HOST = r"^(?:[a-z][a-z0-9+.-]*:)?//(?:[^@/?#]*@)?(?P<host>[^/:?#]+)"


class UrlFilterParams(StageParams):
    # A folder of the pipeline's own lists (<kind>/<name>.txt); null: none.
    lists: LocalPath | None = None
    default_lists: bool = True  # the package's lists (tamis/data/url_lists)
    soft_word_threshold: int = Field(default=2, ge=1)


def normalize_words(values: pa.Array) -> pa.Array:
    return pc.replace_substring_regex(pc.utf8_lower(values), r"[^a-z0-9]+", "")


def normalize_url(values: pa.Array) -> pa.Array:
    """Scheme, credentials, ``www.``, case and a trailing slash do not make another URL."""
    url = pc.utf8_lower(pc.utf8_trim_whitespace(values))
    url = pc.replace_substring_regex(url, r"^(?:[a-z][a-z0-9+.-]*:)?//(?:[^@/?#]*@)?(?:www\.)?", "")
    return pc.replace_substring_regex(url, r"/+$", "")


def read_list(path: Path) -> pa.Array:
    """A list file's entries: its lines, trimmed, without blank and comment lines (columnar:
    a list of millions of domains reads in seconds)."""
    whole = pa.array([path.read_text(encoding="utf-8")], pa.large_string())
    lines = pc.utf8_trim_whitespace(pc.list_flatten(pc.split_pattern(whole, "\n")))
    keep = pc.and_(pc.not_equal(lines, ""), pc.invert(pc.starts_with(lines, "#")))
    return lines.filter(keep).cast(pa.string())


class _Lists:
    """Each kind's entries, hashed and sorted, with the list each came from."""

    def __init__(self, folders: list[Path]):
        self.names: list[str] = []
        self.hashes: dict[str, np.ndarray] = {}
        self.list_of: dict[str, np.ndarray] = {}
        self.subwords: list[tuple[int, str]] = []  # (list, RE2 alternation)
        for kind in KINDS:
            hashes, owners = [], []
            for folder in folders:
                for path in sorted((folder / kind).glob("*.txt")) if (folder / kind).is_dir() else []:
                    entries = read_list(path)
                    index = len(self.names)
                    self.names.append(path.stem)
                    if kind == "subwords":
                        words = sorted({w for w in normalize_words(entries).to_pylist() if w})
                        if words:
                            self.subwords.append((index, "|".join(words)))
                        continue
                    values = entries
                    if kind == "domains":
                        values = pc.replace_substring_regex(pc.utf8_lower(values), r"^(?:\*?\.)|^www\.|\.$", "")
                    elif kind == "urls":
                        values = normalize_url(values)
                    else:
                        values = normalize_words(values)
                    hashes.append(string_hashes(values))
                    owners.append(np.full(len(values), index, np.int32))
            all_hashes = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
            order = np.argsort(all_hashes, kind="stable")
            self.hashes[kind] = all_hashes[order]
            self.list_of[kind] = (np.concatenate(owners) if owners else np.empty(0, np.int32))[order]

    def find(self, kind: str, values: pa.Array) -> np.ndarray:
        """The list index of each value found in ``kind``'s lists, -1 where none holds it."""
        hashes, owners = self.hashes[kind], self.list_of[kind]
        if len(hashes) == 0 or len(values) == 0:
            return np.full(len(values), -1, np.int32)
        h = string_hashes(values)
        pos = np.minimum(np.searchsorted(hashes, h), len(hashes) - 1)
        found = (hashes[pos] == h) & pc.is_valid(values).to_numpy(zero_copy_only=False)
        return np.where(found, owners[pos], -1)


class UrlFilter(Stage):
    type_name = "url_filter"
    Params = UrlFilterParams
    params: UrlFilterParams
    default_gate = {"required_columns": ["id", "source", "text", "url"]}

    def _folders(self) -> list[Path]:
        return ([DEFAULT_LISTS] if self.params.default_lists else []) + (
            [Path(self.params.lists)] if self.params.lists else []
        )

    def check_ready(self) -> None:
        if self.params.lists and not Path(self.params.lists).is_dir():
            raise FileNotFoundError(f"url_filter: lists folder {self.params.lists} does not exist")
        files = [p for f in self._folders() for kind in KINDS for p in (f / kind).glob("*.txt")]
        if not files:
            raise ValueError(
                f"url_filter: no list (<kind>/<name>.txt with kind one of {', '.join(KINDS)}) "
                f"in {', '.join(map(str, self._folders())) or 'any folder: default_lists is off and lists is null'}"
            )

    def dependencies(self, output_url: str) -> dict[str, str]:
        return {
            f"url_list.{f.name}.{kind}.{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
            for f in self._folders()
            for kind in KINDS
            for p in sorted((f / kind).glob("*.txt"))
        }

    def setup(self) -> None:
        self._lists()

    def _lists(self) -> _Lists:
        lists = self.__dict__.get("_url_lists")
        if lists is None:
            lists = self.__dict__["_url_lists"] = _Lists(self._folders())
        return lists

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_url_lists"}

    def process_batch(self, table: pa.Table) -> BatchResult:
        lists = self._lists()
        n = table.num_rows
        if "url" in table.column_names:
            url = pc.utf8_trim_whitespace(table.column("url").combine_chunks()) if n else pa.array([], pa.string())
            url = pc.if_else(pc.equal(url, ""), pa.scalar(None, pa.string()), url)
        else:
            url = pa.nulls(n, pa.string())
        reasons = np.full(n, None, dtype=object)
        details = np.full(n, None, dtype=object)
        metrics: Counter = Counter({"url_filter.no_url": url.null_count} if url.null_count else {})

        def mark(kind: str, hit_list: np.ndarray, detail) -> None:
            new = (hit_list >= 0) & np.equal(reasons, None)  # type: ignore[call-overload]  # numpy's stubs take no None operand
            for i in np.flatnonzero(hit_list >= 0):
                metrics[f"url_filter.hits.{REASON_KIND[kind]}.{lists.names[hit_list[i]]}"] += 1
            for i in np.flatnonzero(new):
                reasons[i] = f"url_filter.{REASON_KIND[kind]}.{lists.names[hit_list[i]]}"
                details[i] = detail(i)

        lower = pc.utf8_lower(url)
        host = pc.extract_regex(lower, _HOST).field(0) if n else pa.array([], pa.string())
        host = pc.replace_substring_regex(pc.replace_substring_regex(host, r"\.$", ""), r"^www\.", "")
        # The host, then each parent domain: a listed domain blocks its subdomains.
        suffix = host
        for _ in range(MAX_LEVELS):
            hit = lists.find("domains", suffix)
            matched = suffix
            mark("domains", hit, lambda i, m=matched: f"host {host[i].as_py()} under {m[i].as_py()}")
            has_parent = pc.fill_null(pc.match_substring(suffix, "."), False)
            if not pc.any(has_parent).as_py():
                break
            suffix = pc.if_else(
                has_parent, pc.replace_substring_regex(suffix, r"^[^.]*\.", ""), pa.scalar(None, pa.string())
            )

        normalized = normalize_url(url)
        mark("urls", lists.find("urls", normalized), lambda i: f"url {normalized[i].as_py()}")

        words = pc.split_pattern_regex(pc.fill_null(lower, ""), r"[^a-z0-9]+")
        flat, doc = pc.list_flatten(words), pc.list_parent_indices(words).to_numpy(zero_copy_only=False)
        flat_hit = lists.find("words", flat)
        per_doc = np.full(n, -1, np.int32)
        hits = np.flatnonzero(flat_hit >= 0)
        per_doc[doc[hits[::-1]]] = flat_hit[hits[::-1]]  # the first banned word of each document wins
        first_word = {int(doc[k]): flat[int(k)].as_py() for k in hits[::-1]}
        mark("words", per_doc, lambda i: f"word {first_word[i]!r}")

        soft = lists.find("soft_words", flat)
        soft_docs = np.full(n, -1, np.int32)
        for index in np.unique(soft[soft >= 0]):
            at = np.flatnonzero(soft == index)
            # Distinct soft words per document: (document, word hash) pairs.
            pairs = np.unique(np.stack([doc[at].astype(np.uint64), string_hashes(flat.take(pa.array(at)))]), axis=1)
            distinct = np.bincount(pairs[0].astype(np.int64), minlength=n)
            soft_docs[(distinct >= self.params.soft_word_threshold) & (soft_docs < 0)] = index
        mark("soft_words", soft_docs, lambda i: f">= {self.params.soft_word_threshold} soft-banned words")

        squeezed = normalize_words(pc.fill_null(url, ""))
        for index, pattern in lists.subwords:
            hit = np.where(pc.match_substring_regex(squeezed, pattern).to_numpy(zero_copy_only=False), index, -1)
            mark(
                "subwords",
                hit,
                lambda i, p=pattern: (
                    f"subword {pc.extract_regex(squeezed[i : i + 1], f'(?P<w>{p})')[0]['w'].as_py()!r}"
                ),
            )

        kept, dropped = split_by_reason(table, reasons.tolist(), details.tolist())
        return BatchResult(kept=kept, dropped=dropped, metrics=metrics)
