"""Recognizers and the batch detector of the PII stage, built to run offline and fast.

The detector (:class:`Detector`) reads a whole batch at once. Each document is seen
NFKC-folded (full-width digits and ``＠`` read as ASCII), and findings are mapped back to
the original characters. Cheap screens (RE2 regular expressions that every text a
recognizer could match must contain) run over the whole text column in one Arrow pass,
so most documents never reach the costlier recognizers:

- pattern types run per document, on the documents their screen matched, with Presidio's
  recognizers and validators (checksums, python-phonenumbers, the public suffix list
  bundled with tldextract) and context rules against look-alikes;
- PERSON runs once over the batch's documents joined into one string: its capitalised
  words are found by one regular-expression split, looked up in the name lists through a
  per-worker cache, grouped into candidate names with numpy, and the context rules read
  short snippets around the candidates in one RE2 pass each;
- STREET_ADDRESS runs on the documents that hold one of its anchors (a street-type word
  after a number, a street prefix, a flat or box number...), found from the same
  capitalised words.

Screens use ``[0-9]`` rather than ``\\d`` so that Python's ``re`` and RE2 agree on what
they match.

Changes to Presidio's own recognizers, and why:
- e-mail: Presidio validates the domain with tldextract, which fetches the public
  suffix list over the network on first use; here it reads the list bundled with
  tldextract and never goes online. Its pattern runs only on the whitespace-free
  stretches that hold an ``@``, where every match lies.
- phone: Presidio runs python-phonenumbers' matcher over the whole text once per
  region (tens of milliseconds on a 2 KB page); here it runs only on runs of digits and
  separators holding at least ``MIN_PHONE_DIGITS`` digits, with a few characters around,
  and only when some part of the run could be kept by the rules below; the regions tried
  are those where some part of the run could be a valid number at all (checked against
  python-phonenumbers' own number patterns, a far cheaper test than its matcher).
- phone: a number python-phonenumbers accepts is kept only with phone-like context
  ("tel", "call", "mobile"... before it, "office", "fax"... after it) or a phone-like
  format (a leading "+", an area code in parentheses, or separators that group the digits
  as phone numbers are grouped); never when it reads as an IPv4 address, a date, a
  price, thousands grouping, arithmetic, or follows an order/invoice/ISBN-like label.
- US SSN: a bare 9-digit number only with SSN context ("SSN", "social security"...).
- IP address: not after a version label ("v", "version", "release").
- credit card: not when the digits continue a longer token (UUIDs, hashes, serials).
- CN resident identity number: a pattern recognizer that keeps only 18-character numbers
  with a valid date of birth and a valid GB 11643-1999 check character.

PERSON and STREET_ADDRESS are found without a language model (see
:class:`PersonRecognizer` and :class:`StreetAddressRecognizer`), from the word lists in
``tamis/data/pii_lexicon.json.gz`` (built by ``scripts/build_pii_lexicon.py`` from US SSA
given names, US Census 1990 surnames, SCOWL common words and CLDR/tz place names) and
context rules.
"""

from __future__ import annotations

import bisect
import ctypes
import gzip
import ipaddress
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from datetime import date
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
from phonenumbers import PhoneMetadata

from tamis.presidio import (
    ENGLISH_STOP_WORDS,
    CreditCardRecognizer,
    EmailRecognizer,
    EntityRecognizer,
    IbanRecognizer,
    IpRecognizer,
    Pattern,
    PatternRecognizer,
    PhoneRecognizer,
    UsSsnRecognizer,
)

CN_RESIDENT_ID = "CN_RESIDENT_ID"
PERSON = "PERSON"
STREET_ADDRESS = "STREET_ADDRESS"
MIN_PHONE_DIGITS = 7


class Finding(NamedTuple):
    """One value found in a document: character offsets, entity type, confidence."""

    start: int
    end: int
    entity_type: str
    score: float


class _Screened:
    """Runs a recognizer's patterns only on the windows of the text that can hold a match:
    by default the lines holding its screen.

    A subclass's patterns never match across a line break, every match holds a screen hit,
    and what a match's lookarounds and validation see at a line's edge (a newline) reads
    as the string's edge does: the matches of the lines are the matches of the whole text,
    without a scan of its other lines (most of a long document). A subclass whose matches
    hold no whitespace reads narrower windows (:meth:`_windows`)."""

    SCREEN: ClassVar[str]
    _screen: ClassVar[re.Pattern]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "SCREEN" in cls.__dict__:
            cls._screen = re.compile(cls.SCREEN)

    def _windows(self, text: str) -> Iterator[tuple[int, int]]:
        return lines_holding(text, self._screen)

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
        found = []
        for start, end in self._windows(text):
            for r in super().analyze(text[start:end], entities, nlp_artifacts, regex_flags):
                r.start += start
                r.end += start
                found.append(r)
        return found


def line_bounds(text: str, at: int) -> tuple[int, int]:
    """(start, end) of the line of ``text`` holding position ``at``, without its newline."""
    end = text.find("\n", at)
    return text.rfind("\n", 0, at) + 1, (end if end >= 0 else len(text))


def lines_holding(text: str, screen: re.Pattern) -> Iterator[tuple[int, int]]:
    """(start, end) of each line of ``text`` (without its newline) where ``screen`` matches."""
    at = 0
    while (hit := screen.search(text, at)) is not None:
        start, end = line_bounds(text, hit.start())
        yield start, end
        at = end + 1


def lines_around(text: str, positions: Iterable[int]) -> Iterator[tuple[int, int]]:
    """(start, end) of each line of ``text`` holding one of the ascending ``positions``."""
    end = -1
    for at in positions:
        if at > end:
            start, end = line_bounds(text, at)
            yield start, end


_NON_SPACE_RUN = re.compile(r"\S*")


def whitespace_free_runs(text: str, hits: Iterable[int]) -> Iterator[tuple[int, int]]:
    """(start, end) of each maximal whitespace-free run of ``text`` that holds one of
    ``hits`` (ascending positions of non-space characters). A recognizer whose matches
    hold no whitespace and contain a hit finds the same matches in these runs as in the
    whole text, without trying every position of a long one."""
    end = 0
    for at in hits:
        if at < end:
            continue
        start = at
        while start > end and not text[start - 1].isspace():
            start -= 1
        end = _NON_SPACE_RUN.match(text, at).end()  # type: ignore[union-attr]  # \S* matches everywhere
        yield start, end


def _positions(text: str, char: str) -> Iterator[int]:
    at = text.find(char)
    while at >= 0:
        yield at
        at = text.find(char, at + 1)


def at_stretches(text: str) -> Iterator[tuple[int, int]]:
    """The whitespace-free runs holding an "@": each match of Presidio's e-mail pattern
    lies inside one."""
    return whitespace_free_runs(text, _positions(text, "@"))


class OfflineEmailRecognizer(_Screened, EmailRecognizer):
    SCREEN = r"@"
    _extract: Any = None  # tldextract.TLDExtract, made at first use

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        _email_domain_is_valid("example.com")  # loads the bundled public suffix list once per worker

    def _windows(self, text: str) -> Iterator[tuple[int, int]]:
        return at_stretches(text)

    def validate_result(self, pattern_text: str) -> bool:
        return _email_domain_is_valid(pattern_text.rpartition("@")[2])


@lru_cache(maxsize=4096)
def _email_domain_is_valid(domain: str) -> bool:
    if OfflineEmailRecognizer._extract is None:
        import tldextract

        # No URLs: never fetch the suffix list; no cache dir: never write one.
        OfflineEmailRecognizer._extract = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=())
    return OfflineEmailRecognizer._extract(domain).fqdn != ""


class CardRecognizer(_Screened, CreditCardRecognizer):
    """Presidio's credit-card recognizer (Luhn-validated) with its prefixes brought up to
    date: Mastercard 2221-2720, 19-digit Visa, 12-19 digit Maestro, 15-digit JCB 2131/1800.
    Grouped numbers no longer start with 1 (UATP): lists of years such as
    "1991 1992 1993 1994" pass Luhn one time in ten and are not cards."""

    SCREEN = r"[0-9]{4}[- ]?[0-9]{3}"
    PATTERNS = [
        Pattern(
            "Credit card, grouped (weak)",
            r"\b(4[0-9]{3}|5[0-5][0-9]{2}|6[0-9]{3}|3[0-9]{3}|2(?:22[1-9]|2[3-9][0-9]|[3-6][0-9]{2}|7[01][0-9]|720))"
            r"[- ]?([0-9]{3,4})[- ]?([0-9]{3,4})[- ]?([0-9]{3,5})\b",
            0.3,
        ),
        Pattern(
            "Credit card, long or short (weak)",
            r"\b(?:4[0-9]{18}|(?:5[06-9]|6[0-9])[0-9]{10,17}|(?:2131|1800)[0-9]{11}|1[0-9]{14})\b",
            0.3,
        ),
    ]

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
        found = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [r for r in found if not _continues_token(text, r.start, r.end)]


def _continues_token(text: str, start: int, end: int) -> bool:
    """The digits are one part of a longer token joined by "-", "_", ":" or "/" (a UUID,
    a hash, a serial or path), not a value of their own."""
    before = text[max(0, start - 2) : start]
    after = text[end : end + 2]
    return (len(before) == 2 and before[1] in "-_:/" and before[0].isalnum()) or (
        len(after) == 2 and after[0] in "-_:/" and after[1].isalnum()
    )


class ScreenedIpRecognizer(_Screened, IpRecognizer):
    """Presidio's IP recognizer; with ``public_only``, loopback, private, link-local and
    other non-global addresses (127.0.0.1, 192.168.0.1, 0.0.0.0) are not personal data."""

    # IPv4: a dotted quad; IPv6: every form holds "::" or two "hex:" groups in a row.
    SCREEN = r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:|::"

    def __init__(self, public_only: bool = True, **kwargs):
        self.public_only = public_only
        super().__init__(**kwargs)

    def invalidate_result(self, pattern_text: str) -> bool:
        try:
            address = ipaddress.ip_interface(pattern_text).ip
        except ValueError:
            return True
        return self.public_only and not address.is_global

    def _windows(self, text: str) -> Iterator[tuple[int, int]]:
        # Presidio's IPv6 pattern is slow on long texts, and code is full of "::": it reads
        # only the whitespace-free runs around a screen hit (its lookarounds see whitespace
        # or nothing at a run's edge alike).
        return whitespace_free_runs(text, (m.start() for m in self._screen.finditer(text)))

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
        found = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [r for r in found if not _VERSION_BEFORE.search(text, max(0, r.start - 40), r.start)]


_VERSION_BEFORE = re.compile(
    r"(?i)(?:\bv|\bver\.?|\bversion|\brelease|\bbuild|\brev\.?|\bfirmware|\bpatch|"
    r"\b(?:upgrade|update|downgrade|bump|pin)(?:d|ed)?\b[^\n]{0,24}?\bto)[ \t:]*$"
)


class ScreenedIbanRecognizer(_Screened, IbanRecognizer):
    SCREEN = r"[A-Z]{2}[0-9]{2}"  # Presidio's pattern is case-sensitive: "gb82 ..." is no IBAN to it


class ScreenedUsSsnRecognizer(_Screened, UsSsnRecognizer):
    """Presidio's SSN recognizer: numbers written 3-2-4 count on their own; a bare 9-digit
    number only where an SSN label comes shortly before it."""

    SCREEN = r"[0-9]{3}[- .]?[0-9]{2}[- .]?[0-9]{4}"
    CONTEXT_SCORE = 0.6

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
        found = super().analyze(text, entities, nlp_artifacts, regex_flags)
        for r in found:
            if r.end - r.start == 9 and _SSN_CONTEXT.search(text, max(0, r.start - 40), r.start):
                r.score = max(r.score, self.CONTEXT_SCORE)
        return found


_SSN_CONTEXT = re.compile(
    r"(?i)(?:\bssn|\bss#|\bss no|social[ \t-]security(?:[ \t]+(?:number|no\.?|#))?)\b[^\n]{0,24}$"
)


# -- phone numbers -----------------------------------------------------------------------

# Digits with at most three separators between them: every phone candidate below holds
# such a run of MIN_PHONE_DIGITS digits.
_PHONE_SCREEN = r"[0-9](?:[ \t().\-/]{0,3}[0-9]){%d}" % (MIN_PHONE_DIGITS - 1)


@lru_cache(maxsize=1)
def _phone_run_finder():
    from tamis.text_stats import native_function

    p, i64 = ctypes.c_void_p, ctypes.c_int64
    return native_function("tn_phone_runs", [p, i64, i64, p, p, i64])


def phone_runs(text: str) -> list[tuple[int, int]]:
    r"""The maximal runs of digits and separators that hold MIN_PHONE_DIGITS digits or more:
    the matches of ``[0-9](?:[ \t]?[().\-/]?[ \t]?[0-9]){MIN_PHONE_DIGITS - 1,}``, found in
    one pass (native/digitruns.c); Python's re tried every digit of every number as a start."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    cap = len(codes) // MIN_PHONE_DIGITS + 1
    start, end = np.empty(cap, np.int64), np.empty(cap, np.int64)
    n = _phone_run_finder()(codes.ctypes.data, len(codes), MIN_PHONE_DIGITS, start.ctypes.data, end.ctypes.data, cap)
    return list(zip(start[:n].tolist(), end[:n].tolist()))


_PHONE_WINDOW_PAD = 3  # characters around a run: "+", "(" and the matcher's boundary checks
_MAX_GROUPS_PER_NUMBER = 6  # digit groups in one number: "+44 (0) 20 7393 1500" has five


class CandidatePhoneRecognizer(PhoneRecognizer):
    """Presidio's phone recognizer, run on digit runs instead of the whole text.

    python-phonenumbers' matcher costs about a millisecond per run and region, so a run
    reaches it only when some part of it (a span of whole digit groups, as the matcher
    finds them) would pass :func:`accept_phone`, and only for the regions where that
    part could be a valid number. Regions are tried in order and the search stops at the
    first region whose matches span the whole run: later regions would only find the
    same number again."""

    SCREEN = _PHONE_SCREEN
    _screen = re.compile(_PHONE_SCREEN)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for region in self.supported_regions:
            _number_patterns(region)  # compiled once per worker, not on the first number

    def analyze(self, text, entities, nlp_artifacts=None):
        results = []
        lines = _Lines(text)
        for start, end in phone_runs(text):
            groups = [m.span() for m in _DIGIT_GROUPS.finditer(text, start, end)]
            regions = self._regions_worth_trying(text, start, end, groups, lines)
            if not regions:
                continue
            lo = max(0, start - _PHONE_WINDOW_PAD)
            hi = min(len(text), end + _PHONE_WINDOW_PAD)
            for s, e, region in _phone_matches(text[lo:hi], start - lo, end - lo, regions, self.leniency):
                if accept_phone(text, s + lo, e + lo, lines):
                    results.append(self._get_recognizer_result(_Span(s + lo, e + lo), text, region, nlp_artifacts))
        return EntityRecognizer.remove_duplicates(results)

    def _regions_worth_trying(self, text: str, start: int, end: int, groups: list, lines: _Lines) -> tuple:
        """The regions, in order, where some part of the run could be a phone number the
        rules keep; empty when there is none. The parts tried are spans of whole digit
        groups (as the matcher finds numbers), led by the "+" or "(" before them if any."""
        if lines.arithmetic(start):
            return ()  # every number on an arithmetic line is rejected
        context = _phone_word_near(text, start, end)
        lo = max(0, start - _PHONE_WINDOW_PAD)
        international = "+" in text[lo:start] or self.leniency == 0  # "possible" numbers: no pattern test
        regions = self.supported_regions
        valid_in: set = set()
        n = len(groups)
        values = [text[s:e] for s, e in groups]
        sizes = [e - s for s, e in groups]
        years = [size == 4 and _YEAR_GROUP.fullmatch(v) is not None for v, size in zip(values, sizes)]
        paren_before = [False] + ["(" in text[groups[k - 1][1] : groups[k][0]] for k in range(1, n)]
        for i in range(n):
            starts = [groups[i][0]]  # where a number could start: the group, or a "+" or "(" before it
            at = groups[i][0]
            while at > lo and text[at - 1] in "+( \t":
                at -= 1
                if text[at] in "+(":
                    starts.append(at)
            plus = international or any(text[s] == "+" for s in starts[1:])
            led_by_zero = values[i][0] == "0"
            digits, longest, ones, parenthesised, all_years = "", 0, 0, False, True
            for j in range(i, min(n, i + _MAX_GROUPS_PER_NUMBER)):
                digits += values[j]
                longest = max(longest, sizes[j])
                ones += sizes[j] == 1
                all_years = all_years and years[j]
                parenthesised = parenthesised or (j > i and paren_before[j])
                if ones > 2:
                    break  # accept_phone: digit-by-digit sequences
                count = j - i + 1
                if not (context or parenthesised or len(starts) > 1) and not (
                    2 <= count <= 5 and (longest <= 5 or led_by_zero) and sizes[j] >= 2
                ):
                    continue  # accept_phone: neither context, format nor phone grouping
                if count > 1 and all_years:
                    continue  # accept_phone: years
                new = regions if plus else _regions_where_valid(digits, regions)
                if not valid_in.issuperset(new) and any(accept_phone(text, s, groups[j][1], lines) for s in starts):
                    valid_in.update(new)
                    if len(valid_in) == len(regions):
                        return regions
        return tuple(r for r in regions if r in valid_in)


class _Span:
    __slots__ = ("end", "start")

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end


class _Lines:
    """Line bounds and per-line facts of one text, computed once per line."""

    def __init__(self, text: str):
        self.text = text
        self._arithmetic: dict[int, bool] = {}

    def arithmetic(self, at: int) -> bool:
        line_start, line_end = line_bounds(self.text, at)
        known = self._arithmetic.get(line_start)
        if known is None:
            known = self._arithmetic[line_start] = _ARITHMETIC.search(self.text, line_start, line_end) is not None
        return known


@cache
def _number_patterns(region: str) -> tuple:
    """(national prefix for parsing, its transform rule, country code, international
    prefix, the lengths and one pattern of every number type of every region sharing the
    country code): python-phonenumbers' own patterns. A valid number's national
    significant number has one of these lengths and matches one of these types (and its
    region's general pattern, not tested: leaving it out only lets more through)."""
    metadata = PhoneMetadata.metadata_for_region(region)
    assert metadata is not None and metadata.country_code is not None, f"phonenumbers has no metadata for {region}"
    code = metadata.country_code
    types: list[str] = []
    lengths: set[int] = set()
    for other in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, (region,)):
        md = PhoneMetadata.metadata_for_region(other)
        if md is None:
            continue
        if md.general_desc is not None and md.general_desc.possible_length:
            lengths.update(md.general_desc.possible_length)
        for desc in (
            md.premium_rate,
            md.toll_free,
            md.shared_cost,
            md.voip,
            md.personal_number,
            md.pager,
            md.uan,
            md.voicemail,
            md.fixed_line,
            md.mobile,
        ):
            if desc is not None and desc.national_number_pattern and desc.national_number_pattern not in types:
                types.append(desc.national_number_pattern)
                lengths.update(desc.possible_length or ())
    prefix = re.compile(metadata.national_prefix_for_parsing) if metadata.national_prefix_for_parsing else None
    idd = re.compile(metadata.international_prefix) if metadata.international_prefix else None
    number_types = re.compile("|".join(f"(?:{t})" for t in types)) if types else None
    # possible_length lists may be empty ("same as the general description"): no length test then
    lengths_known = all(
        (d is None or not d.national_number_pattern or d.possible_length)
        for other in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, (region,))
        for md in [PhoneMetadata.metadata_for_region(other)]
        if md is not None
        for d in (md.general_desc,)
    )
    return (
        prefix,
        metadata.national_prefix_transform_rule,
        str(code),
        idd,
        number_types,
        (frozenset(lengths) if lengths_known else None),
    )


_COUNTRY_CODES = frozenset(str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


@lru_cache(maxsize=65536)
def _regions_where_valid(digits: str, regions: tuple) -> frozenset:
    """The regions among ``regions`` where python-phonenumbers could find ``digits``
    (written without "+") a valid number; see :func:`_could_be_valid`."""
    out: list[str] = []
    for region, same in _regions_by_rules(regions):
        if _could_be_valid(digits, region):
            out.extend(same)
    return frozenset(out)


@lru_cache(maxsize=64)
def _regions_by_rules(regions: tuple) -> list[tuple[str, list[str]]]:
    """``regions`` grouped by the parsing rules and patterns they share (US and CA: +1)."""
    groups: dict[tuple, list[str]] = {}
    for region in regions:
        prefix, transform, code, idd, _, _ = _number_patterns(region)
        key = (code, prefix.pattern if prefix else None, transform, idd.pattern if idd else None)
        groups.setdefault(key, []).append(region)
    return [(same[0], same) for same in groups.values()]


def _could_be_valid(digits: str, region: str) -> bool:
    """False only when python-phonenumbers would find ``digits``, parsed for ``region``
    without a "+", invalid: no national significant number it could strip them to (the
    country code, the national prefix or a carrier code off the front) has the length and
    matches a number type of the region's country code. Numbers led by an international
    prefix may belong to any country and are left to the library."""
    prefix, transform, code, idd, number_types, lengths = _number_patterns(region)
    if idd is not None:
        match = idd.match(digits)
        if match and any(digits[match.end() : match.end() + k] in _COUNTRY_CODES for k in (1, 2, 3)):
            return True  # a country code after an international prefix: any country's number
    if number_types is None:
        return False
    candidates = {digits}
    for number in (digits, digits[len(code) :] if digits.startswith(code) else None):
        if not number:
            continue
        candidates.add(number)
        match = prefix.match(number) if prefix is not None else None
        if match:
            candidates.add(number[match.end() :])
            if transform:
                candidates.add(prefix.sub(transform, number, count=1))
    return any(n and (lengths is None or len(n) in lengths) and number_types.fullmatch(n) for n in candidates)


_DIGIT_GROUPS = re.compile(r"[0-9]+")
_YEAR = r"(?:1[5-9]|20)[0-9]{2}"
_YEARS = re.compile(rf"{_YEAR}(?:[ \t]?[-/.–][ \t]?{_YEAR}|[ \t]{_YEAR})+")
_YEAR_IN_PARENTHESES = re.compile(rf"\({_YEAR}\)")
_YEAR_GROUP = re.compile(_YEAR)
_ISBN_CONTEXT = re.compile(r"(?i)isbn")
_DATE_START = re.compile(r"(?:1[89]|20)[0-9]{2}[-/.](?:0[1-9]|1[0-2])[-/.](?:0[1-9]|[12][0-9]|3[01])(?![0-9])")
_PHONE_WORDS = (
    r"phone|telephone|tel|ph|mobile|mob|cell|cellphone|fax|call|calls|called|calling|dial|text|sms|whatsapp|"
    r"contact|hotline|helpline|reach|ring|answering|messages|office|desk|home|work|landline|"
    r"telefon|téléphone|teléfono|telefone|handy|portable|móvil|celular"
)
_PHONE_WORDS_CJK = r"電話|电话|手机|手機|座机|联系|拨打|致电|呼叫|携帯"
_PHONE_AFTER = re.compile(r"(?i)^[ \t]*[-(,]?[ \t]*(?:office|fax|mobile|cell|home|work|desk|tel|phone|ext\.?|x[0-9])\b")
# The words of _PHONE_BEFORE and _PHONE_AFTER, which both read whole words (letters with
# no letter on either side): without one of them near a run, no number in the run has
# phone context.
_PHONE_WORD_SET = frozenset(_PHONE_WORDS.split("|")) | {"ext", "x"}
_LETTER_RUN = re.compile(r"[^\W\d_]+")
_PHONE_SIGN = re.compile(rf"{_PHONE_WORDS_CJK}|[☎📞✆]")
_PHONE_WORDS_ONLY = frozenset(_PHONE_WORDS.split("|"))


_PHONE_BEFORE_CHARS = 40
_PHONE_BEFORE_GAP = 24


def _phone_word_before(text: str, start: int) -> bool:
    """A phone word (a whole word: no letter on either side) or sign within the 40
    characters before ``start``, followed by at most 24 characters on its line and
    optionally a line break and blanks: on the number's line, or the label line above."""
    lo = max(0, start - _PHONE_BEFORE_CHARS)
    ends = [m.end() for m in _PHONE_SIGN.finditer(text, lo, start)]
    for m in _LETTER_RUN.finditer(text, lo, start):
        if m.group().lower() in _PHONE_WORDS_ONLY and not (m.start() == lo and lo > 0 and _is_letter(text[lo - 1])):
            ends.append(m.end())
    for at in ends:
        tail = text[at:start]
        if _label_tail(tail) or (tail.endswith("\n") and _label_tail(tail[:-1])):
            return True
    return False


def _label_tail(tail: str) -> bool:
    """At most 24 characters on the label's line, then nothing or a line break and blanks."""
    line_break = tail.find("\n")
    if line_break < 0:
        return len(tail) <= _PHONE_BEFORE_GAP
    return line_break <= _PHONE_BEFORE_GAP and not tail[line_break + 1 :].strip(" \t")


def _is_letter(ch: str) -> bool:
    return ch.isalpha()


def _phone_word_near(text: str, start: int, end: int) -> bool:
    lo, hi = max(0, start - 48), min(len(text), end + 20)
    if _PHONE_SIGN.search(text, lo, hi):
        return True
    return not _PHONE_WORD_SET.isdisjoint(map(str.lower, _LETTER_RUN.findall(text, lo, hi)))


_NOT_PHONE_BEFORE = re.compile(
    r"(?i)(?:\b(?:order|invoice|ref|reference|ticket|case|tracking|isbn|issn|sku|serial|part|model|version|ver|"
    r"v|build|patent|doi|pmid|id|account|acct|transaction|receipt|confirmation|booking|item|product|no|nr)\b\.?"
    r"[ \t]*(?:number|no\.?|nr\.?|#|:)?[ \t:#]*|#[ \t]*|[$€£¥₹][ \t]*)$"
)
_IPV4_LIKE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_THOUSANDS = re.compile(r"[0-9]{1,3}(?:[.,'][0-9]{3})+")
_DAY_FIRST_DATE = re.compile(
    r"(?:0?[1-9]|[12][0-9]|3[01])[./-](?:0?[1-9]|1[0-2])[./-](?:1[89]|20)?[0-9]{2}|(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12][0-9]|3[01])/(?:1[89]|20)?[0-9]{2}"
)
_ARITHMETIC = re.compile(r"[0-9][ \t]*[-+*/×÷x=^][ \t]*[0-9][^\n]*=|=[ \t]*[0-9(]|[0-9][ \t]+[-+*/×÷][ \t]+[0-9]")
_SEPARATORS = re.compile(r"[ \t.\-/]+")


def accept_phone(text: str, start: int, end: int, lines: _Lines | None = None) -> bool:
    """Whether a number python-phonenumbers accepts at ``text[start:end]`` is kept.

    Numbers that read as something else are rejected. Measured on web pages, most such
    matches are decimals and table columns ("0.235  -0.685", "12.0292272567749"),
    digit-by-digit sequences ("0 3 4 5 1 6 2 7"), the fraction part of a decimal, dates
    ("2021-06-17 18"), years ("1804-1813", "1896 1897 1898", "802 (2008)"), ISBNs
    ("0-393-02895-5"), IPv4 addresses, prices, thousands grouping, arithmetic and numbers
    after an order/invoice-like label. The rest is kept only with phone context or a
    phone-like format."""
    value = text[start:end]
    groups = _DIGIT_GROUPS.findall(value)
    if not groups or sum(len(g) == 1 for g in groups) > 2 or "  " in value or _DATE_START.match(value):
        return False
    if _YEARS.fullmatch(value) or _YEAR_IN_PARENTHESES.search(value):
        return False
    if "." in value and (value.lstrip("+(-").startswith("0.") or max(map(len, groups)) >= 6):
        return False
    before, after = text[max(0, start - 2) : start], text[end : end + 2]
    if (len(before) == 2 and before[1] in ".," and before[0].isdigit()) or (
        len(after) == 2 and after[0] in ".," and after[1].isdigit()
    ):
        return False  # the digits continue a decimal number
    if _ISBN_CONTEXT.search(text, max(0, start - 24), start):
        return False
    digits = value.lstrip("+(")
    if _IPV4_LIKE.fullmatch(digits) or _THOUSANDS.fullmatch(digits) or _DAY_FIRST_DATE.fullmatch(digits):
        return False
    if text[max(0, start - 1) : start] in ("$", "€", "£", "¥", "₹"):
        return False
    lines = lines or _Lines(text)
    if lines.arithmetic(start):
        return False
    line_start = line_bounds(text, start)[0]
    if _NOT_PHONE_BEFORE.search(text, max(line_start, start - 32), start):
        return False  # a label right before it names it as something else
    if _phone_word_before(text, start) or _PHONE_AFTER.match(text[end : end + 16]):
        return True
    if value.startswith("+") or "(" in value:
        return True
    parts = [g for g in _SEPARATORS.split(value) if g]
    # Grouped like a phone number: 2 to 5 groups, none longer than 5 digits (or led by a
    # trunk prefix "0", as in "0961-7596216"), the last of 2 or more.
    short = max(map(len, parts)) <= 5 or parts[0].startswith("0")
    return 2 <= len(parts) <= 5 and short and len(parts[-1]) >= 2


@lru_cache(maxsize=4096)
def _phone_matches(window: str, run_start: int, run_end: int, regions: tuple, leniency: int) -> tuple:
    """(start, end, region) of the phone numbers in ``window``; cached, as pages repeat numbers."""
    found = []
    for region in regions:
        spans = [(m.start, m.end, region) for m in phonenumbers.PhoneNumberMatcher(window, region, leniency=leniency)]
        found.extend(spans)
        if any(s <= run_start + 1 and e >= run_end for s, e, _ in spans):
            break
    return tuple(found)


# -- CN resident identity numbers ----------------------------------------------------------

# Region code (first digit 1-8), birth date YYYYMMDD, sequence, check character.
_CN_ID_PATTERN = r"(?<![0-9A-Za-z])[1-8][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx](?![0-9A-Za-z])"
_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_ID_CHECK = "10X98765432"


def cn_resident_id_is_valid(value: str) -> bool:
    """GB 11643-1999: a real date of birth and a matching ISO 7064 MOD 11-2 check character."""
    if len(value) != 18 or not value[:17].isascii() or not value[:17].isdigit():
        return False
    try:
        date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    total = sum(int(d) * w for d, w in zip(value[:17], _CN_ID_WEIGHTS))
    return _CN_ID_CHECK[total % 11] == value[17].upper()


class CnResidentIdRecognizer(_Screened, PatternRecognizer):
    """18-character PRC resident identity card numbers, checksum-validated."""

    SCREEN = r"[1-8][0-9]{16}[0-9Xx]"
    CONTEXT = ["身份证", "身份证号", "identity", "id", "resident"]

    def __init__(self, supported_language: str = "en"):
        super().__init__(
            supported_entity=CN_RESIDENT_ID,
            patterns=[Pattern("CN resident ID (checksum)", _CN_ID_PATTERN, 0.5)],
            context=self.CONTEXT,
            supported_language=supported_language,
            name="CnResidentIdRecognizer",
        )

    def validate_result(self, pattern_text: str) -> bool:
        # True raises the score to 1.0; False discards the match.
        return cn_resident_id_is_valid(pattern_text)


# -- PERSON --------------------------------------------------------------------------------

LEXICON_PATH = Path(__file__).resolve().parent / "data" / "pii_lexicon.json.gz"


def fold_word(word: str) -> str:
    """Lower case without diacritics, as the lexicon stores its words."""
    if word.isascii():
        return word.lower()
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c)).lower()


class Lexicon:
    """The word lists and name-likeness model of ``pii_lexicon.json.gz`` (see
    scripts/build_pii_lexicon.py for the sources), folded for look-up."""

    def __init__(self, path: Path = LEXICON_PATH):
        raw = json.loads(gzip.decompress(path.read_bytes()))
        self.sources = raw["sources"]
        self.given = {fold_word(n) for n in raw["given_names"]}
        self.surnames = {fold_word(n) for n in raw["surnames"]}
        self.common = set(raw["common_words"])
        self.places = {fold_word(w) for p in raw["places"] for w in p.split()}
        # One-word names of large cities: places, unless they are common given names.
        self.cities = {fold_word(c) for c in raw["cities"] if " " not in c}
        self.common_given = {fold_word(n) for n in raw["common_given_names"]}
        # Names of large cities of several words, but not those shaped like a person's
        # name (a given name first, every word a name: "Benito Juárez", "George Town").
        self.multiword_cities = set()
        for city in raw["cities"]:
            words = [fold_word(w) for w in city.split()]
            if len(words) > 1 and not (
                words[0] in self.given and all(w in self.given or w in self.surnames for w in words)
            ):
                self.multiword_cities.add(" ".join(words))
        self.model = raw["name_model"]
        # The model as dense tables over the letters a-z and the marks ^ $: a gram of n
        # such characters is a number in base 29 (0 stands for any other character).
        self._tables = {n: np.zeros(_GRAM_BASE**n) for n in _GRAM_LENGTHS}
        for gram, weight in self.model.items():
            if all(c in _GRAM_ALPHABET for c in gram):
                self._tables[len(gram)][_gram_index(gram)] = weight

    def name_scores(self, folded: list[str]) -> np.ndarray:
        """Naive Bayes name-likeness of each word: the sum of the model's weights of its
        distinct character 2- to 4-grams, the word marked "^word$"; > 0 leans to a name.

        Words of a-z (with ' or -, which no gram of the model holds) are scored all at
        once, each distinct gram of a word an index into a dense table; words of other
        letters one at a time."""
        total = np.zeros(len(folded))
        if not folded:
            return total
        plain = [i for i, w in enumerate(folded) if _GRAM_PLAIN.fullmatch(w)]
        if plain:
            words_plain = [folded[i] for i in plain]
            marked = "".join(f"^{w}$" for w in words_plain).encode("ascii", "replace")  # ’ becomes ?, code 0
            codes = _GRAM_CODES[np.frombuffer(marked, np.uint8)].astype(np.int64)
            lengths = np.fromiter(map(len, words_plain), np.int64, len(plain)) + 2
            word_end = np.cumsum(lengths)
            word_of = np.repeat(np.arange(len(plain), dtype=np.int64), lengths)
            scores = np.zeros(len(plain))
            for n, table in self._tables.items():
                starts = np.arange(codes.size - n + 1)
                starts = starts[starts + n <= word_end[word_of[starts]]]
                index = np.zeros(starts.size, np.int64)
                for k in range(n):
                    index = index * _GRAM_BASE + codes[starts + k]
                size = _GRAM_BASE**n
                keyed = np.sort(word_of[starts] * size + index)
                distinct = keyed[np.append(True, keyed[1:] != keyed[:-1])]  # each gram counts once per word
                scores += np.bincount(distinct // size, weights=table[distinct % size], minlength=len(plain))
            total[plain] = scores
        get = self.model.get
        for i in sorted(set(range(len(folded))).difference(plain)):
            m = f"^{folded[i]}$"
            total[i] = sum(get(g, 0.0) for g in {m[j : j + n] for n in _GRAM_LENGTHS for j in range(len(m) - n + 1)})
        return np.round(total, 9)


_GRAM_LENGTHS = (2, 3, 4)
_GRAM_ALPHABET = {c: i + 1 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz^$")}
_GRAM_BASE = len(_GRAM_ALPHABET) + 1
_GRAM_PLAIN = re.compile(r"[a-z'’\-]*")
_GRAM_CODES = np.zeros(256, np.uint8)
for _char, _code in _GRAM_ALPHABET.items():
    _GRAM_CODES[ord(_char)] = _code


def _gram_index(gram: str) -> int:
    index = 0
    for ch in gram:
        index = index * _GRAM_BASE + _GRAM_ALPHABET[ch]
    return index


@lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    return Lexicon()


def _letters(predicate) -> str:
    # Latin, Greek and Cyrillic letters (the scripts whose names are capitalised).
    chars = (chr(c) for r in ((0x41, 0x250), (0x370, 0x530), (0x1E00, 0x1F00)) for c in range(*r))
    return re.escape("".join(c for c in chars if predicate(c)))


_UP = f"[{_letters(str.isupper)}]"
_LO = f"[{_letters(str.islower)}]"
# The gap between two capitalised words of one run: blanks, or an initial between blanks.
_JOIN_GAP = re.compile(rf"[ \t]+(?:({_UP})\.?[ \t]+)?")
_TITLES = (
    r"mr|mrs|ms|miss|mx|dr|prof|professor|sir|dame|lady|lord|madam|madame|mme|mlle|herr|frau|sr|sra|srta|"
    r"rev|reverend|fr|father|sister|brother|capt|captain|col|gen|lt|sgt|judge|officer|uncle|aunt|president|senator"
)
# Function words are never names, whatever the name lists hold ("You" and "Will" are
# surnames in the census list).
_STOP_WORDS = frozenset(ENGLISH_STOP_WORDS) | {"apt", "suite", "unit", "flat", "floor", "room", "box"}
_ORG_WORDS = frozenset(
    [
        "inc",
        "ltd",
        "llc",
        "plc",
        "gmbh",
        "corp",
        "co",
        "company",
        "group",
        "partners",
        "associates",
        "bank",
        "university",
        "college",
        "school",
        "institute",
        "foundation",
        "hospital",
        "church",
        "hotel",
        "club",
        "society",
        "council",
        "agency",
        "committee",
        "records",
        "orchestra",
        "band",
    ]
    # designators that close a company's name ("Russell Investments", "Rand Corporation")
    + [
        "corporation",
        "incorporated",
        "limited",
        "holdings",
        "investments",
        "consulting",
        "consultants",
        "technologies",
        "solutions",
        "industries",
        "enterprises",
        "laboratories",
        "labs",
        "ventures",
        "airlines",
        "airways",
        "pharmaceuticals",
        "studios",
        "productions",
        "bros",
    ]
)
# Words that close the name of a place, a building, an institution, a prize or a law: a
# name followed by one in its run of capitalised words is that thing's name ("Jefferson
# County", "Robin Park Leisure Centre", "Nobel Prize"). Words that are also given names or
# surnames ("Hall", "Temple", "Lake") are left out.
_PLACE_WORDS = frozenset(
    [
        "county",
        "township",
        "borough",
        "district",
        "islands",
        "mountains",
        "centre",
        "memorial",
        "museum",
        "library",
        "stadium",
        "airport",
        "cathedral",
        "academy",
        "theatre",
        "theater",
        "prison",
        "palace",
        "building",
        "empire",
        "republic",
        "ministry",
        "department",
        "award",
        "awards",
        "prize",
        "lecture",
        "lectures",
        "scholarship",
        "fund",
        "doctrine",
        "act",
    ]
)


class _ClosesName(dict):
    """Whether a capitalised word is one of _PLACE_WORDS, computed once per word."""

    MAX_WORDS = 300_000

    def __missing__(self, word: str) -> bool:
        closes = word.lower() in _PLACE_WORDS
        if len(self) >= self.MAX_WORDS:
            self.clear()
        self[word] = closes
        return closes


_CLOSES_NAME = _ClosesName()
# Weekdays are in the place list (with the months) and some are given names or surnames:
# they are never a name.
_WEEKDAYS = frozenset(["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"])
_SURNAME_SUFFIX = re.compile(
    r"(?:ov|ova|ev|eva|sky|ski|ska|skaya|ic|vich|vna|enko|chuk|yan|dze|shvili|escu|poulos|akis|sson|dottir|"
    r"nen|inen|ova|oglu|ini|elli|etti|ucci|berg|mann|stein)$"
)
# The context rules read short snippets before and after a candidate, in one RE2 pass
# over all snippets (RE2's \b knows ASCII letters only, where Python's knows all).
# A title or a phrase after which the next words are a name whatever they look like.
_TITLE_OR_INTRODUCED_BEFORE = (
    rf"(?i)(?:\b(?:{_TITLES})\.?|\bmy name is|\bname is|\bname's|\bnamed(?: him| her| them)?|\bcalled(?: me| him| her)?|"
    r"\bcalls? (?:me|him|her)|\bi'm|\bi am|\bthis is|\bname[ \t]*[:?]|\bdear|\bsigned|\bsincerely,?|\bregards,?|\bborn|"
    r"\bknown as|\bnée|\bnee|\baka)[ \t]*$"
)
# Words right before or after a capitalised word that point at a person.
_PERSON_BEFORE = (
    r"(?i)\b(?:said|says|told|asked|wrote|hi|hello|hey|thanks|thank you|meet|met|contact|ask|wife|husband|"
    r"(?:son|daughter|brother|sister|mother|father|kid|partner|friend|colleague|boss|author|director|producer|singer|"
    r"player|writer|songwriter|commenter|guardian|beneficiary|manager|assistant|founder|ceo)s?|child|children|"
    r"starring|featuring|directed by|written by|feat\.?)[ \t,:]*$"
)
_PERSON_AFTER = r"(?i)^(?:[ \t]*,?[ \t]*(?:said|says|told|asked|wrote|replied|explained|lives|lived|was born|who)\b|['’]s\b|[ \t]*:)"
_ARTICLE_BEFORE = r"(?i)\b(?:the|a|an)[ \t]+$"
_AND_GAP = re.compile(r"[ \t]+(?:and|&)[ \t]+")
_PLURAL_VERB_AFTER = re.compile(r"[ \t]+(?:were|are|have|had|both|each)\b")
_POSSESSIVE = r"^['’]s\b"
_PERSON_AFTER_WORD = (
    r"(?i)^(?:[ \t]*,?[ \t]*(?:said|says|told|asked|wrote|replied|explained|lives|lived|was born|who)\b|[ \t]*:)"
)
# Verbs after a surname or a name-like word that make it a person's name.
_VERB_AFTER = r"^[ \t]+(?:is|was|has|had|will|would|lives|lived|began|spent|shouted|spoke|sang|played)\b"
_BEFORE_CHARS = 40
_AFTER_CHARS = 12
# Words that join names in a list or a sentence: evidence only for words that look like names.
_JOINING_BEFORE = re.compile(r"(?i)(?:\b(?:by|with|for|and|to|from|under)|[,>:])[ \t]*$")
_LIST_JOIN = re.compile(r",[ \t]*(?:and[ \t]+|or[ \t]+|&[ \t]*)?|[ \t]+(?:and|or|&)[ \t]+")
_LOWER_NAME = re.compile(rf"{_LO}{{2,}}(?:[ \t]+{_LO}\.?)?(?:[ \t]+{_LO}{{2,}})?")
_INTRODUCED_LOWER = re.compile(
    rf"(?i:\bmy name is|\bname is|\bname's|\bcalls? me|\bcalled me|\bname[ \t]*:)[ \t]+({_LOWER_NAME.pattern})(?![\w@])"
)
_WEAK_INTRODUCERS = ("i'm ", "i am ", "this is ", "dear ")
_LOWER_NAME_AFTER = re.compile(rf"[ \t]*({_LOWER_NAME.pattern})(?![\w@])")

# Kinds of capitalised words.
KIND_C, KIND_G, KIND_S, KIND_N, KIND_g, KIND_s, KIND_X, KIND_O = range(8)
_KIND_LETTERS = "CGSNgsXO"  # C common word or place, G given name, S surname, N name-like,
# g/s given name or surname that is also a common word or place, X unknown, O organisation word


def _lexicon_kinds(lex: Lexicon) -> dict[str, int]:
    """The kind of every folded word the lists know; other words are name-like or unknown."""
    kinds: dict[str, int] = {}
    titles = set(_TITLES.split("|"))
    for word in (
        lex.given
        | lex.surnames
        | lex.common
        | lex.places
        | lex.cities
        | _STOP_WORDS
        | _ORG_WORDS
        | _PLACE_WORDS
        | titles
    ):
        if word in _ORG_WORDS:
            kind = KIND_O
        elif word in _STOP_WORDS or word in titles or word in _WEEKDAYS or word in _PLACE_WORDS:
            kind = KIND_C
        else:
            common = word in lex.common or word in lex.places or (word in lex.cities and word not in lex.common_given)
            if word in lex.given:
                kind = KIND_g if common else KIND_G
            elif word in lex.surnames:
                kind = KIND_s if common else KIND_S
            else:
                kind = KIND_C
        kinds[word] = kind
    return kinds


_CHAR_WORD, _CHAR_AT, _CHAR_SLASH_DOT, _CHAR_BLANK, _CHAR_NONE = 1, 2, 4, 8, 16
# For the native word finder (native/nametokens.c): _UP, _LO, and a letter as [^\W\d_] reads one.
_CHAR_UP, _CHAR_LO, _CHAR_LETTER = 32, 64, 128


@lru_cache(maxsize=1)
def _char_classes() -> np.ndarray:
    """The _CHAR_* bits of every code point, from the regular expressions that define them."""
    every = "".join(map(chr, range(0x110000)))
    classes = np.zeros(0x110000, np.uint8)
    for pattern, bit in (
        (r"\w+", _CHAR_WORD),
        (r"@", _CHAR_AT),
        (r"[/.]+", _CHAR_SLASH_DOT),
        (r"[ \t]+", _CHAR_BLANK),
        (f"{_UP}+", _CHAR_UP),
        (f"{_LO}+", _CHAR_LO),
        (r"[^\W\d_]+", _CHAR_LETTER),
    ):
        for m in re.finditer(pattern, every):
            classes[m.start() : m.end()] |= bit
    return classes


@lru_cache(maxsize=1)
def _name_token_finder():
    from tamis.text_stats import native_function

    p, i64 = ctypes.c_void_p, ctypes.c_int64
    return native_function("tn_name_tokens", [p, i64, p, p, p, i64])


def name_token_spans(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of the capitalised words in a text given as UTF-32 code points:
    "Smith", "O'Brien", "Jones-Smith", "McDowell", "DeSantis"; a possessive "'s" is left out
    ("Smith" of "Smith's"), as the context rules read it. See native/nametokens.c."""
    find, classes = _name_token_finder(), _char_classes()
    cap = len(codes) // 2 + 1  # a word takes two characters at least
    start, end = np.empty(cap, np.int64), np.empty(cap, np.int64)
    n = find(codes.ctypes.data, len(codes), classes.ctypes.data, start.ctypes.data, end.ctypes.data, cap)
    return start[:n], end[:n]


class CapitalisedWords:
    """The capitalised words of a text (Upper-lower, with ' or - inside), with what sits
    around each of them."""

    def __init__(self, text: str):
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
        self.text = text
        self.start, self.end = name_token_spans(codes)
        n = self.n = len(self.start)
        self.words: list[str] = list(map(text.__getitem__, map(slice, self.start.tolist(), self.end.tolist())))
        # gap i comes before word i; gap n after the last
        gap_start = np.concatenate([[0], self.end])
        gap_end = np.concatenate([self.start, [len(text)]])
        gap_length = gap_end - gap_start
        classes = _char_classes()
        first = np.full(n + 1, _CHAR_NONE, np.uint8)
        last = np.full(n + 1, _CHAR_NONE, np.uint8)
        gap = gap_length > 0
        first[gap] = classes[codes[gap_start[gap]]]
        last[gap] = classes[codes[gap_end[gap] - 1]]
        # A word starts a run only after a character that is not a letter, digit, "@", "/"
        # or "." (an empty gap means the previous word touches it); a word ends one only
        # before a character that is not a letter, digit or "@".
        inner = np.arange(n + 1) > 0
        inner_end = np.arange(n + 1) < n
        bad_before = ((last & (_CHAR_WORD | _CHAR_AT | _CHAR_SLASH_DOT)) != 0) | ((last & _CHAR_NONE) != 0) & inner
        bad_after = ((first & (_CHAR_WORD | _CHAR_AT)) != 0) | ((first & _CHAR_NONE) != 0) & inner_end
        self.usable = ~bad_before[:n] & ~bad_after[1:]
        # Words joined into one run: a gap of blanks, or of an initial between blanks.
        joined = np.zeros(n, bool)
        initial = np.zeros(n, bool)
        blank = (first[:n] & _CHAR_BLANK) != 0
        joined[(gap_length[:n] == 1) & blank] = True
        maybe = np.flatnonzero((gap_length[:n] > 1) & (gap_length[:n] <= 16) & blank)
        if maybe.size:
            matches = [_JOIN_GAP.fullmatch(text, gap_start[i], gap_end[i]) for i in maybe.tolist()]
            hit = np.fromiter((m is not None for m in matches), bool, maybe.size)
            joined[maybe[hit]] = True
            initial[maybe[hit]] = [m.group(1) is not None for m in matches if m is not None]
        joined[:1] = False
        self.joined = joined & self.usable & np.roll(self.usable, 1)  # word i continues the run of word i-1
        self.initial_before = initial & self.joined


class PersonRecognizer:
    """Names of people, from given-name and surname lists, a name-likeness model and context.

    A run of capitalised words is cut at common words; what is left is a name when
    - it holds two or more words led by a given name, or two surname-like words;
    - it is one given name that is not also a common word or a place ("James", not "Will");
    - it is a surname, an ambiguous name or a name-like word next to a word that points at
      a person ("said", "Mr.", "my name is", "'s", a line of its own...);
    - anything capitalised, or lower case words from the name lists, right after a phrase
      that introduces a name ("my name is", "Dear", "Name:").
    Scores: 0.85 for a given name with more evidence, 0.7 for context alone.

    The whole batch is read at once: its capitalised words come from one split, their
    kinds from a per-worker cache, the runs and their evidence are numpy arrays, and the
    context rules read snippets around the candidates in one RE2 pass each."""

    supported_entities = (PERSON,)
    # Lower-case names after a phrase that introduces a name.
    SCREENS: ClassVar[dict[str, str]] = {
        "person_introduced": r"(?i)(?:my name is|name is|name's|calls? me|called me|name[ \t]*:)[ \t]+\p{Ll}",
    }
    LOWER_CASE_SCREENS: ClassVar[dict[str, str]] = {"person_introduced_lower": r"(?:i'm|i am|this is|dear)[ \t]+\p{Ll}"}
    MAX_CACHED_WORDS = 300_000

    def __init__(self, supported_language: str = "en"):
        self.supported_language = supported_language
        self.lex = lexicon()
        self._lexicon_kinds = _lexicon_kinds(self.lex)
        self._kinds: dict[str, int] = {}

    def kinds(self, words: list[str]) -> np.ndarray:
        """The kind of each word, from a per-worker cache filled a batch at a time."""
        cache = self._kinds
        new = list(set(words).difference(cache))
        if len(cache) + len(new) > self.MAX_CACHED_WORDS:
            cache.clear()
            new = list(set(words))
        if new:
            folded = list(map(fold_word, new))
            kinds: list[int | None] = list(map(self._lexicon_kinds.get, folded))
            unknown = [i for i, k in enumerate(kinds) if k is None]
            scores = self.lex.name_scores([folded[i] for i in unknown])
            for i, score in zip(unknown, scores.tolist()):
                kinds[i] = KIND_N if score > 0 or _SURNAME_SUFFIX.search(folded[i]) else KIND_X
            cache.update(zip(new, kinds))  # type: ignore[arg-type]  # every None was replaced above
        return np.fromiter(map(cache.__getitem__, words), np.int8, len(words))

    def scan(self, batch: Batch, screens: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(document, start, end, score) of the names in ``batch``, offsets into each
        document's view."""
        starts, ends, scores = self._capitalised_names(batch.text, batch.words)
        docs = batch.doc_of(starts)
        offsets = batch.starts[docs]
        lower = self._introduced_lower(batch, screens)
        return (
            np.concatenate([docs, lower[0]]),
            np.concatenate([starts - offsets, lower[1]]),
            np.concatenate([ends - offsets, lower[2]]),
            np.concatenate([scores, lower[3]]),
        )

    def _capitalised_names(self, text: str, words: CapitalisedWords):
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
        n = words.n
        if n == 0:
            return empty
        kind = self.kinds(words.words)
        usable = words.usable
        joined = words.joined
        run = np.cumsum(~joined) - 1
        organisation = np.zeros(run[-1] + 1, bool)
        organisation[run[usable & (kind == KIND_O)]] = True  # an organisation's name, though it may hold a person's
        member = usable & (kind != KIND_C) & ~organisation[run]
        first = member & ~(joined & np.roll(member, 1))
        at = np.flatnonzero(member)
        if at.size == 0:
            return empty
        opens = first[at]
        seg_first = at[opens]
        seg_last = at[np.append(opens[1:], True)]
        bounds = np.flatnonzero(opens)

        def count(mask: np.ndarray) -> np.ndarray:
            return np.add.reduceat(mask[at].astype(np.int32), bounds)

        k = {letter: count(kind == code) for code, letter in enumerate(_KIND_LETTERS)}
        size = np.diff(np.append(bounds, at.size))
        inner_initial = count(words.initial_before & ~first) > 0
        k0 = kind[seg_first]
        start = words.start[seg_first]
        end = words.end[seg_last]
        strong = k["G"] + k["S"] + 0.5 * (k["N"] + k["g"] + k["s"])
        clear = k["G"] + k["S"] + k["N"]
        multi = size >= 2

        score = np.zeros(seg_first.size)
        by_kinds = np.where(multi, ((k0 == KIND_G) | (k0 == KIND_g)) & (strong >= 1.5) | (strong >= 2), k0 == KIND_G)
        score[by_kinds] = 0.85
        todo = np.flatnonzero(score == 0)
        if todo.size:
            before = _snippets_before(text, start[todo])
            introduced = _matches(before, _TITLE_OR_INTRODUCED_BEFORE)
            score[todo[introduced]] = 0.85
            weak = ~introduced & (strong[todo] >= 0.5)
            before = before.filter(pa.array(weak))
            todo = todo[weak]
        if todo.size:
            after = _snippets_after(text, end[todo])
            hit = _matches(before, _PERSON_BEFORE) | _matches(after, _PERSON_AFTER)
            # A possessive is evidence for a name, not for a place or a common word that
            # is also a name ("Israel's", "Congress's").
            possessive_only = (
                _matches(after, _POSSESSIVE) & ~_matches(before, _PERSON_BEFORE) & ~_matches(after, _PERSON_AFTER_WORD)
            )
            hit &= ~(possessive_only & (clear[todo] == 0))
            score[todo[hit]] = 0.7
            rest = todo[~hit]
            # Two words that are names and nothing else, one of them from the name lists
            # ("Ubul Csonka" is not: neither word is in the lists).
            pair = rest[(size[rest] == 2) & ((k["g"] + k["s"])[rest] == 0) & ((k["G"] + k["S"])[rest] >= 1)]
            score[pair] = 0.7
            rest = rest[score[rest] == 0]
            single = rest[~multi[rest] & ((k0[rest] == KIND_S) | (k0[rest] == KIND_N))]
            if single.size:
                after = _snippets_after(text, end[single])
                score[single[_matches(after, _VERB_AFTER)]] = 0.7
            listed = rest[multi[rest] & (clear[rest] > 0)]
            score[listed[inner_initial[listed]]] = 0.85  # "Ravil G Yefimov": an initial between names
            listed = listed[~inner_initial[listed] & (strong[listed] + 0.25 * k["X"][listed] >= 0.75)]
            for i in listed.tolist():
                if _alone_or_joined(text, int(start[i]), int(end[i])):
                    score[i] = 0.7
        # One word after an article names a thing, not a person ("the Taliban", "the Louvre").
        found = np.flatnonzero((score > 0) & ~multi)
        if found.size:
            score[found[_matches(_snippets_before(text, start[found]), _ARTICLE_BEFORE)]] = 0
        # A name followed in its run by a street type is a street's name ("Mathias Pass").
        found = np.flatnonzero(score > 0)
        following = seg_last[found] + 1
        following = following[following < n]
        street = following[words.joined[following] & (kind[following] == KIND_C)]
        street = street[[bool(_ANCHOR_KINDS[words.words[j]] & _ANCHOR_STREET_TYPE) for j in street.tolist()]]
        score[np.isin(seg_last, street - 1)] = 0
        # A name followed later in its run by a place word is a place's name ("Jefferson County").
        found = np.flatnonzero(score > 0)
        if found.size:
            closes_upto = np.cumsum(np.fromiter(map(_CLOSES_NAME.__getitem__, words.words), np.int32, n))
            run_last = np.flatnonzero(np.append(run[1:] != run[:-1], True))
            last = seg_last[found]
            score[found[closes_upto[run_last[run[last]]] > closes_upto[last]]] = 0
        # A name of several words that is a large city's name is the city ("Los Angeles").
        found = np.flatnonzero((score > 0) & multi)
        if found.size:
            cities = self.lex.multiword_cities
            spans = zip(start[found].tolist(), end[found].tolist())
            score[found[[" ".join(map(fold_word, text[s:e].split())) in cities for s, e in spans]]] = 0
        # "Torpy and Salinas were ...": two names joined by "and", then a plural verb.
        unscored_names = (score == 0) & (clear > 0)
        cand = np.flatnonzero(unscored_names[:-1] & unscored_names[1:] & (start[1:] - end[:-1] <= 7))
        for i in cand.tolist():
            if _AND_GAP.fullmatch(text, int(end[i]), int(start[i + 1])) and _PLURAL_VERB_AFTER.match(
                text, int(end[i + 1])
            ):
                score[i] = score[i + 1] = 0.7
        maybe = (score == 0) & (strong > 0)
        if maybe.any() and (score >= 0.85).any():
            score[_listed_with(text, start, end, score >= 0.85, maybe)] = 0.7
        keep = score > 0
        return start[keep], end[keep], score[keep]

    def _introduced_lower(self, batch: Batch, screens: dict):
        """Lower-case names after a phrase that introduces one: "my name is", "call me",
        "name:" anywhere; "I'm", "I am", "this is", "dear" in texts without capitals
        (a given name must come first then)."""
        found: list[tuple[int, int, int]] = []
        kinds = self._lexicon_kinds

        def take(doc: int, match: re.Match, weak: bool) -> None:
            words = [fold_word(w.rstrip(".")) for w in match.group(1).split()]
            # each word an initial, a name, or no common word
            fits = all(len(w) == 1 or kinds.get(w, KIND_X) in (KIND_G, KIND_S, KIND_N, KIND_X) for w in words)
            if fits and (not weak or kinds.get(words[0]) == KIND_G):
                found.append((doc, match.start(1), match.end(1)))

        for doc in np.flatnonzero(screens["person_introduced"]).tolist():
            for match in _INTRODUCED_LOWER.finditer(batch.views[doc]):
                take(doc, match, weak=False)
        for doc in np.flatnonzero(screens["person_introduced_lower"]).tolist():
            view = batch.views[doc]
            for phrase in _WEAK_INTRODUCERS:  # literal searches: far faster than a pattern scan
                at = view.find(phrase)
                while at >= 0:
                    if at == 0 or not view[at - 1].isalpha():
                        after = _LOWER_NAME_AFTER.match(view, at + len(phrase))
                        if after:
                            take(doc, after, weak=True)
                    at = view.find(phrase, at + 1)
        docs, starts, ends = (np.array(c, np.int64) for c in zip(*found)) if found else (np.zeros(0, np.int64),) * 3
        return docs, starts, ends, np.full(len(found), 0.7)


def _snippets_before(text: str, starts: np.ndarray) -> pa.Array:
    return pa.array([text[s - _BEFORE_CHARS if s > _BEFORE_CHARS else 0 : s] for s in starts.tolist()], pa.string())


def _snippets_after(text: str, ends: np.ndarray) -> pa.Array:
    return pa.array([text[e : e + _AFTER_CHARS] for e in ends.tolist()], pa.string())


def _matches(snippets: pa.Array, pattern: str) -> np.ndarray:
    return pc.match_substring_regex(snippets, pattern).to_numpy(zero_copy_only=False)


def _alone_or_joined(text: str, start: int, end: int) -> bool:
    """The candidate fills its line (a signature, a list of names), or follows a word that
    joins it to what comes before ("by", "with", ",")."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    alone = not text[line_start:start].strip(" \t>*-•") and (line_end < 0 or not text[end:line_end].strip())
    return alone or _JOINING_BEFORE.search(text, max(line_start, start - _BEFORE_CHARS), start) is not None


def _listed_with(text: str, start: np.ndarray, end: np.ndarray, seed: np.ndarray, maybe: np.ndarray) -> np.ndarray:
    """Name-like words listed next to a name ("Kónya, Becker and Vasquez") are names too:
    the candidates, among ``maybe``, joined by a list separator to a name, or to one
    found this way (a list grows one neighbour a round, from either side, three rounds)."""
    n = start.size
    linked = np.zeros(n, bool)  # candidate i is joined to candidate i + 1
    near = np.flatnonzero((start[1:] - end[:-1] <= 8) & (maybe[1:] | maybe[:-1]))
    for i in near.tolist():
        linked[i] = _LIST_JOIN.fullmatch(text, int(end[i]), int(start[i + 1])) is not None
    edge = seed.copy()
    added = np.zeros(n, bool)
    for _ in range(3):
        prev_edge = np.zeros(n, bool)
        prev_edge[1:] = edge[:-1] & linked[:-1]
        next_edge = np.zeros(n, bool)
        next_edge[:-1] = edge[1:] & linked[:-1]
        new = maybe & ~edge & (prev_edge | next_edge)
        if not new.any():
            break
        edge |= new
        added |= new
    return added


# -- STREET_ADDRESS ------------------------------------------------------------------------

_CAP_WORD = rf"{_UP}[\w'’.\-]*"
_EN_STREET_TYPES = (
    r"Street|St|Avenue|Ave|Av|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Square|Sq|Terrace|Ter|"
    r"Way|Highway|Hwy|Parkway|Pkwy|Circle|Cir|Trail|Trl|Crescent|Cres|Close|Row|Alley|Plaza|Walk|Grove|Gardens|"
    r"Hill|Park|Mews|Green|Parade|Promenade|Quay|Wharf|Route|Rte|Turnpike|Pike|Expressway|Freeway|Loop|Bypass|"
    # more of the USPS street suffixes (Publication 28, appendix C1)
    r"Union|Pass|Point|Fort|Forge|Ford|Crossing|Junction|Landing|Meadow|Mill|Mission|Orchard|Oval|Pine|Plain|Port|"
    r"Prairie|Ranch|Rapid|Ridge|River|Run|Shoal|Shore|Spring|Spur|Station|Stream|Summit|Trace|Track|Tunnel|View|"
    r"Village|Ville|Vista|Well|Estate|Extension|Falls|Ferry|Field|Flat|Garden|Gateway|Glen|Harbor|Haven|Heights|"
    r"Hollow|Inlet|Island|Isle|Key|Knoll|Lake|Light|Lock|Lodge|Manor|Bay|Beach|Bend|Bluff|Branch|Bridge|Brook|"
    r"Burg|Camp|Canyon|Cape|Causeway|Center|Cliff|Common|Corner|Course|Cove|Creek|Crest|Curve|Dale|Dam|Divide|"
    r"Mall|Path|Viaduct|Wall"
)
_STREET_PREFIXES = (
    r"Rue|Via|Viale|Vicolo|Piazza|Piazzale|Corso|Largo|Calle|Carrer|Avenida|Avda\.|Av\.|Rua|Travessa|Praça|"
    r"Paseo|Plaza|Camino|Ronda|Chemin|Allée|Impasse|Quai|Strada|Ulica|ul\.|Odos"
)
_STREET_SUFFIXES = (
    r"straße|strasse|str\.|weg|gasse|platz|allee|damm|ufer|katu|tie|kuja|polku|vej|gade|gatan|vägen|väg|veien|"
    r"vegen|gata|gata|laan|straat|gracht|plein|utca|út|tér|körút|ulica|ulice|cesta|iela|gatve|tänav|sokak|caddesi"
)
_UNIT_WORDS = r"Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm"
_US_STATES = (
    r"AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|"
    r"OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR|GU|VI|AS|MP"
)
_UNIT = rf"(?:{_UNIT_WORDS})\.?[ \t]*#?[0-9]{{1,5}}[A-Za-z]?\b"
_HOUSE_NUMBER = r"[0-9]{1,6}[A-Za-z]?(?:[-/][0-9]{1,4})?"
_CITY_STATE_ZIP = (
    rf"(?:,[ \t]*(?:{_CAP_WORD}[ \t]+){{0,2}}{_CAP_WORD},?[ \t]+[A-Z]{{2}}[ \t]+[0-9]{{4,5}}(?:-[0-9]{{4}})?)"
)
# Each address shape is led by something rare (a digit, a literal word), so a scan skips
# most positions at once; word boundaries before a match are checked afterwards, since a
# leading look-behind would slow the scan down.
_NUMBERED_STREET = re.compile(
    # 777 Brockton Avenue, Abington MA 2351 / 14 Crown Street, Apt. 4
    rf"[0-9]{{1,6}}[A-Za-z]?(?:[-/][0-9]{{1,4}})?[ \t]+(?:(?:{_CAP_WORD}|of|the|de|la)[ \t]+){{0,3}}"
    rf"{_CAP_WORD}[ \t]+(?:{_EN_STREET_TYPES})s?\b\.?(?:,?[ \t]+{_UNIT})?{_CITY_STATE_ZIP}?"
)
_WORD_LED_ADDRESS = re.compile(
    "|".join(
        (
            # Via Franscini 71 / Rua do Arenque 1634
            rf"(?:{_STREET_PREFIXES})[ \t]+(?:[\w'’.\-]+[ \t]+){{0,4}}?{_HOUSE_NUMBER}\b(?:,?[ \t]+{_UNIT})?",
            # PO boxes and military addresses
            (
                r"(?:P\.?[ \t]?O\.?[ \t]?Box|Post Office Box|PSC|CMR|Unit)[ \t]+[0-9]{1,6}(?:,?[ \t]+Box[ \t]+[0-9]{1,6})?"
                r"(?:\n?[ \t]*(?:APO|FPO|DPO)[ \t]+(?:AA|AE|AP)[ \t]+[0-9]{5})?\b"
            ),
            # flat and suite numbers
            _UNIT,
        )
    )
)
# Koskikatu 25 / Brucker Bundesstrasse 31 / Erzsébet tér 19: found from the number back.
_NUMBER_AFTER_WORD = re.compile(rf"\.?[ \t]+{_HOUSE_NUMBER}\b(?:,?[ \t]+{_UNIT})?")
_STREET_SUFFIX_WORDS = tuple(w.replace("\\.", ".") for w in _STREET_SUFFIXES.split("|"))
# Marina Fort Street: no number, a full street-type word, found from the type word back.
_FULL_STREET_TYPES = r"Street|Avenue|Road|Boulevard|Lane|Drive|Terrace|Highway|Parkway|Crescent|Alley"
_FULL_STREET_TYPE = re.compile(rf"(?:{_FULL_STREET_TYPES})s?\b")
_CAPITALISED_BEFORE = re.compile(rf"(?:{_CAP_WORD}[ \t]+){{1,3}}$")

# The address shapes, read in a document only when one of their anchors is in it.
_SHAPE_NUMBERED, _SHAPE_WORD_LED, _SHAPE_SUFFIX, _SHAPE_FULL_TYPE, _SHAPE_CORNER, _SHAPE_TOWN = 1, 2, 4, 8, 16, 32
_SHAPE_ALL = 63
# Capitalised words that anchor an address shape, and what must sit near them.
_ANCHOR_STREET_TYPE, _ANCHOR_FULL_TYPE, _ANCHOR_PREFIX, _ANCHOR_UNIT, _ANCHOR_SUFFIX = 1, 2, 4, 8, 16


def _address_anchors() -> dict[str, int]:
    anchors: dict[str, int] = {}

    def add(words: list[str], kind: int) -> None:
        for word in words:
            anchors[word] = anchors.get(word, 0) | kind

    types = _EN_STREET_TYPES.split("|")
    add(types + [w + "s" for w in types], _ANCHOR_STREET_TYPE)
    full = _FULL_STREET_TYPES.split("|")
    add(full + [w + "s" for w in full], _ANCHOR_FULL_TYPE)
    add([w.replace("\\.", "") for w in _STREET_PREFIXES.split("|") if w[:1].isupper()], _ANCHOR_PREFIX)
    add(_UNIT_WORDS.split("|") + ["Box"], _ANCHOR_UNIT)
    return anchors


_ANCHORS = _address_anchors()
_DIGIT = re.compile(r"[0-9]")
_NUMBER_NEXT = re.compile(r"\.?[ \t]*#?[0-9]")
_HOUSE_NUMBER_NEXT = re.compile(r"\.?[ \t]+[0-9]")
_HOUSE_NUMBER_WINDOW = 200  # a house number before a street type, or after a street prefix


def _word_start(text: str, at: int) -> bool:
    return at == 0 or not (text[at - 1].isalnum() or text[at - 1] in "_.,")


class StreetAddressRecognizer:
    """Street addresses by their shape: a house number and words ending in a street type
    ("12 Oak Street"), a street-type prefix ("Via Roma 5"), a street-type suffix
    ("Mannerheimintie 12", "Hauptstraße 3"), PO and military boxes, and flat or suite
    numbers; a following "City, ST 12345" joins the span.

    The shapes are read only in documents holding one of their anchors: a street-type
    word with a digit before it, a full street-type word after a space ("Fort Street"),
    a street prefix with a digit after it, a flat/suite/box word followed by a number
    (all from the batch's capitalised words), or what they do not cover (lower-case and
    upper-case forms), from the screen."""

    supported_entities = (STREET_ADDRESS,)
    SCREENS: ClassVar[dict[str, str]] = {
        "address_suffix": rf"(?i:{_STREET_SUFFIXES})\.?[ \t]+[0-9]",
        "address_word": r"\bul\.[ \t]|\b(?:PSC|CMR)[ \t]+[0-9]|P\.?[ \t]?O\.?[ \t]?Box",
        "address_corner": r"(?i:corner|intersection) of",
        "address_town": rf"\b(?:{_US_STATES})[ \t]+[0-9]{{4,5}}\b",
    }
    SHAPE_OF_SCREEN: ClassVar[dict[str, int]] = {
        "address_suffix": _SHAPE_SUFFIX,
        "address_word": _SHAPE_WORD_LED,
        "address_corner": _SHAPE_CORNER,
        "address_town": _SHAPE_TOWN,
    }
    SCORE = 0.9  # above PERSON's: a name inside an address is part of the address

    def __init__(self, supported_language: str = "en"):
        self.supported_language = supported_language

    def scan(self, batch: Batch, screens: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(document, start, end, score) of the addresses in ``batch``, offsets into each
        document's view."""
        shapes: dict[int, int] = {}  # document -> the shapes worth reading in it
        for name, shape in self.SHAPE_OF_SCREEN.items():
            for doc in np.flatnonzero(screens[name]).tolist():
                shapes[doc] = shapes.get(doc, 0) | shape
        words = batch.words
        text = batch.text
        anchors = np.fromiter(map(_ANCHOR_KINDS.__getitem__, words.words), np.uint8, words.n)
        doc_of = batch.doc_of
        street_types: dict[int, list[int]] = {}  # document -> where its street-type words are
        for i in np.flatnonzero(anchors).tolist():
            kind, start, end = int(anchors[i]), int(words.start[i]), int(words.end[i])
            doc = int(doc_of(start))
            if kind & _ANCHOR_STREET_TYPE:
                street_types.setdefault(doc, []).append(start - int(batch.starts[doc]))
            shape = 0
            if kind & _ANCHOR_STREET_TYPE and _numbered_street_before(text, start):
                shape |= _SHAPE_NUMBERED
            if kind & _ANCHOR_FULL_TYPE and _capitalised_word_before(text, start):
                shape |= _SHAPE_FULL_TYPE
            if (kind & _ANCHOR_PREFIX and _DIGIT.search(text, end, end + _HOUSE_NUMBER_WINDOW)) or (
                kind & _ANCHOR_UNIT and _NUMBER_NEXT.match(text, end)
            ):
                shape |= _SHAPE_WORD_LED
            if kind & _ANCHOR_SUFFIX and _HOUSE_NUMBER_NEXT.match(text, end):
                shape |= _SHAPE_SUFFIX
            if shape:
                shapes[doc] = shapes.get(doc, 0) | shape
        found = [
            (doc, s, e)
            for doc in sorted(shapes)
            for s, e in self.spans(batch.views[doc], shapes[doc], street_types.get(doc, []))
        ]
        docs_, starts, ends = (np.array(c, np.int64) for c in zip(*found)) if found else (np.zeros(0, np.int64),) * 3
        return docs_, starts, ends, np.full(len(found), self.SCORE)

    @staticmethod
    def spans(text: str, shapes: int = _SHAPE_ALL, street_types: list[int] | None = None) -> list[tuple[int, int]]:
        """Address spans in ``text``, reading only the given shapes. ``street_types``,
        where known, says where the text's capitalised street-type words are: a numbered
        street never crosses a line and holds one, so only their lines are read for it."""
        spans = []
        if shapes & _SHAPE_NUMBERED:
            windows = [(0, len(text))] if street_types is None else lines_around(text, street_types)
            for lo, hi in windows:
                spans += [m.span() for m in _NUMBERED_STREET.finditer(text, lo, hi) if _word_start(text, m.start())]
        if shapes & _SHAPE_WORD_LED:
            spans += [m.span() for m in _WORD_LED_ADDRESS.finditer(text) if _word_start(text, m.start())]
        if shapes & _SHAPE_SUFFIX:
            for m in _NUMBER_AFTER_WORD.finditer(text):
                start = m.start()
                words = text[max(0, start - 60) : start].rsplit(None, 2)
                if not words or not words[-1].lower().endswith(_STREET_SUFFIX_WORDS):
                    continue
                start -= len(words[-1])
                if len(words) > 1 and words[-2][:1].isupper() and text[start - 1 : start] in (" ", "\t"):
                    start -= len(words[-2]) + 1
                spans.append((start, m.end()))
        if shapes & _SHAPE_FULL_TYPE:
            for m in _FULL_STREET_TYPE.finditer(text):
                if m.start() == 0 or text[m.start() - 1] not in " \t":
                    continue
                before = _CAPITALISED_BEFORE.search(text, max(0, m.start() - 40), m.start())
                if before and _word_start(text, before.start()):
                    spans.append((before.start(), m.end()))
        if shapes & _SHAPE_CORNER:
            for m in _CORNER.finditer(text):
                spans += [m.span("first"), m.span("second")]
        if shapes & _SHAPE_TOWN:
            spans += [m.span() for m in _TOWN_STATE_ZIP.finditer(text) if _word_start(text, m.start())]
        return [_postal_block(text, s, e) for s, e in spans]


# What an address takes along: a number right before it on its line ("07576 Kiannonkatu
# 98"), and the lines after it of a postal block: a flat or suite, a town, a postal code
# with a town or country ("Suite 084", "Zalakaros", "Hungary 06554", "1386 Asker").
_NUMBER_BEFORE = re.compile(r"(?<![\w.,])[0-9]{1,6}[ \t]+$")
_BLOCK_LINE_LEAD = re.compile(r"[ \t,]*\n[ \t>?*\-]*")  # the rest of the line, the next line's indent
_BLOCK_LINE = re.compile(
    rf"(?:{_UNIT}|(?:{_CAP_WORD}[ \t]+){{0,3}}{_CAP_WORD}(?:,?[ \t]+[0-9]{{4,6}})?|[0-9]{{4,6}}[ \t]+(?:{_CAP_WORD}[ \t]+){{0,2}}{_CAP_WORD})"
    r"[ \t]*(?=\n|$)"
)
_MAX_BLOCK_LINES = 4


def _postal_block(text: str, start: int, end: int) -> tuple[int, int]:
    """An address span grown over the number before it and the postal-block lines after it."""
    number = _NUMBER_BEFORE.search(text, max(0, start - 8), start)
    if number:
        start = number.start()
    for _ in range(_MAX_BLOCK_LINES):
        lead = _BLOCK_LINE_LEAD.match(text, end)
        if lead is None:
            break
        line = _BLOCK_LINE.match(text, lead.end())
        if line is None or line.end() == line.start():
            break
        end = line.end()
    return start, end


# "Lynn MA 01905", "780 Lynnway, Lynn MA 1905": a town, a US state code and a ZIP code
# (five digits; four, a ZIP code that lost its leading zero, only after a street).
_TOWN_STATE_ZIP = re.compile(
    rf"(?:{_HOUSE_NUMBER}[ \t]+(?:{_CAP_WORD}[ \t]+){{0,3}}{_CAP_WORD},?[ \t]+(?:{_CAP_WORD}[ \t]+){{0,2}}{_CAP_WORD},?"
    rf"[ \t]+(?:{_US_STATES})[ \t]+[0-9]{{4,5}}|(?:{_CAP_WORD}[ \t]+){{0,2}}{_CAP_WORD},?[ \t]+(?:{_US_STATES})[ \t]+[0-9]{{5}})"
    r"(?:-[0-9]{4})?\b"
)
# The two streets of a crossing: "the corner of Queen Street and Spadina Avenue",
# "the intersection of 5th and Main".
_STREET_WORD = rf"(?:{_CAP_WORD}|[0-9]+[A-Za-z]*\.?|de|del|della|la|le|di|da|do|dos|das|du|van|von|ul\.|u\.)"
_CORNER = re.compile(
    rf"(?i:\b(?:corner|intersection) of)[ \t]+(?:the[ \t]+)?(?P<first>{_STREET_WORD}(?:[ \t]+{_STREET_WORD}){{0,6}}?)"
    rf"[ \t]+(?:and|&)[ \t]+(?P<second>{_STREET_WORD}(?:[ \t]+{_STREET_WORD}){{0,6}})"
)
_HOUSE_NUMBER_END = re.compile(rf"{_HOUSE_NUMBER}$")
_CAPITALISED = re.compile(_UP)


_CAP_WORD_END = re.compile(rf"{_CAP_WORD}$")


def _capitalised_word_before(text: str, at: int) -> bool:
    """A word ending in a capitalised word, then blanks, right before ``at`` (as in
    "Fort Street")."""
    before = text[max(0, at - 40) : at]
    if not before.endswith((" ", "\t")):
        return False
    words = before.split()
    return bool(words) and _CAP_WORD_END.search(words[-1]) is not None


def _numbered_street_before(text: str, at: int) -> bool:
    """What _NUMBERED_STREET needs before a street-type word: a capitalised word right
    before it, and a house number among the four words before that."""
    before = text[max(0, at - _HOUSE_NUMBER_WINDOW) : at]
    if not before.endswith((" ", "\t")):
        return False
    words = before.split()
    return (
        len(words) >= 2
        and _CAPITALISED.match(words[-1]) is not None
        and any(_HOUSE_NUMBER_END.search(w) for w in words[-5:-1])
    )


_HEAD = re.compile(r"['’\-]")


class _AnchorKinds(dict):
    """The address anchors a capitalised word holds, computed once per word: its parts
    between apostrophes and hyphens in _ANCHORS ("Street" of "Street-level", "Suite" of
    "Ave-Suite"), or a word ending in a street suffix ("Hauptstraße", "Koskikatu")."""

    MAX_WORDS = 300_000

    def __missing__(self, word: str) -> int:
        parts = _HEAD.split(word) if ("-" in word or "'" in word or "’" in word) else [word]
        kind = _ANCHOR_SUFFIX if word.lower().endswith(_STREET_SUFFIX_WORDS) else 0
        for part in parts:
            kind |= _ANCHORS.get(part, 0)
        if len(self) >= self.MAX_WORDS:
            self.clear()
        self[word] = kind
        return kind


_ANCHOR_KINDS = _AnchorKinds()


# -- the batch detector ------------------------------------------------------------------

SEPARATOR = "\n\n"  # between documents in a batch's joined text: no rule reads across it


class Batch:
    """The documents of one batch as detection sees them (NFKC-folded views), joined into
    one string for the recognizers that read the whole batch at once."""

    def __init__(self, views: list[str], no_upper: np.ndarray | None = None):
        """``no_upper`` marks the views without an upper-case letter: they hold no
        capitalised word and are left out of the joined text (left empty)."""
        self.views = views
        self.no_upper = no_upper if no_upper is not None else np.zeros(len(views), bool)
        joined = views
        if no_upper is not None and no_upper.any():
            joined = [("" if lower else view) for view, lower in zip(views, no_upper.tolist())]
        self.text = SEPARATOR.join(joined)
        lengths = np.fromiter(map(len, joined), np.int64, len(joined))
        self.starts = np.zeros(len(joined), np.int64)
        np.cumsum(lengths[:-1] + len(SEPARATOR), out=self.starts[1:])
        self._words: CapitalisedWords | None = None

    @property
    def words(self) -> CapitalisedWords:
        if self._words is None:
            self._words = CapitalisedWords(self.text)
        return self._words

    def doc_of(self, positions):
        return np.searchsorted(self.starts, positions, "right") - 1


@lru_cache(maxsize=1)
def _nfkc_changes() -> tuple[dict[int, str], re.Pattern, re.Pattern, str]:
    """The characters NFKC changes (planes 0-2; the higher planes hold no compatibility
    characters): what it changes each to, Python patterns for those of the Basic
    Multilingual Plane (a bitmap, fast to scan) and for all of them, and an RE2 class."""
    table: dict[int, str] = {}
    ranges: list[list[int]] = []
    for c in range(0x80, 0x30000):
        if 0xD800 <= c < 0xE000:
            continue
        ch = chr(c)
        folded = unicodedata.normalize("NFKC", ch)
        if folded != ch:
            table[c] = folded
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])

    def python_class(spans) -> str:
        return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in spans)

    bmp = [r for r in ranges if r[1] < 0x10000]
    higher = [r for r in ranges if r[1] >= 0x10000]
    bmp_pattern = re.compile(f"[{python_class(bmp)}]")
    all_pattern = re.compile(f"[{python_class(bmp)}]|[{python_class(higher)}]")
    re2 = "".join(f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in ranges)
    return table, bmp_pattern, all_pattern, f"[{re2}]"


def folded_view(text: str) -> tuple[str, np.ndarray | None]:
    """The NFKC-folded view of ``text`` and, when its length differs, the original offset
    of each view character (plus one past the end). Characters are folded one at a time,
    so each view character comes from exactly one original character."""
    table, bmp_pattern, all_pattern, _ = _nfkc_changes()
    pattern = all_pattern if max(text, default="\0") > "\uffff" else bmp_pattern
    view = pattern.sub(lambda m: table[ord(m.group())], text)
    if len(view) == len(text):
        return view, None
    widths = np.ones(len(text), np.int64)
    for m in pattern.finditer(text):
        widths[m.start()] = len(table[ord(m.group())])
    index = np.repeat(np.arange(len(text), dtype=np.int64), widths)
    return view, np.append(index, len(text))


def _to_original(found: list[Finding], index: np.ndarray | None) -> list[Finding]:
    """Findings on a folded view moved back onto the original text's offsets."""
    if index is None:
        return found
    return [f._replace(start=int(index[f.start]), end=int(index[f.end - 1]) + 1) for f in found]


def non_overlapping(found: list[Finding]) -> list[Finding]:
    """Keep the best of overlapping findings: higher score, then longer span, then
    earlier; in text order."""
    if len(found) < 2:
        return found
    ordered = sorted(found, key=lambda r: (-r.score, r.start - r.end, r.start, r.entity_type))
    starts: list[int] = []  # kept spans, sorted and disjoint
    kept: list = []
    for r in ordered:
        at = bisect.bisect_right(starts, r.start)
        if at > 0 and kept[at - 1].end > r.start:
            continue
        if at < len(kept) and kept[at].start < r.end:
            continue
        starts.insert(at, r.start)
        kept.insert(at, r)
    return kept


PATTERN_ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IP_ADDRESS",
    "IBAN_CODE",
    "US_SSN",
    CN_RESIDENT_ID,
)
RULE_ENTITIES = (PERSON, STREET_ADDRESS)


def pattern_recognizers(
    entities: list[str], language: str, phone_regions: list[str], phone_leniency: int = 1, ip_public_only: bool = True
) -> list:
    """Presidio-based recognizers for the pattern entities among ``entities``: each reads
    one document at a time, on the documents its ``SCREEN`` matched."""
    build = {
        "EMAIL_ADDRESS": lambda: OfflineEmailRecognizer(supported_language=language),
        "PHONE_NUMBER": lambda: CandidatePhoneRecognizer(
            supported_language=language, supported_regions=tuple(phone_regions), leniency=phone_leniency
        ),
        "CREDIT_CARD": lambda: CardRecognizer(supported_language=language),
        "IP_ADDRESS": lambda: ScreenedIpRecognizer(public_only=ip_public_only, supported_language=language),
        "IBAN_CODE": lambda: ScreenedIbanRecognizer(supported_language=language),
        "US_SSN": lambda: ScreenedUsSsnRecognizer(supported_language=language),
        CN_RESIDENT_ID: lambda: CnResidentIdRecognizer(supported_language=language),
    }
    return [build[e]() for e in entities if e in build]


class Detector:
    """Finds the PII of a batch of texts: pattern recognizers per screened document,
    PERSON and STREET_ADDRESS over the whole batch, optional extra findings per document
    (a spaCy model), then the best of overlapping findings, on the original offsets."""

    def __init__(
        self,
        entities: list[str],
        phone_regions: list[str],
        phone_leniency: int = 1,
        ip_public_only: bool = True,
        min_score: float = 0.4,
        language: str = "en",
    ):
        self.min_score = min_score
        self.per_document = pattern_recognizers(entities, language, phone_regions, phone_leniency, ip_public_only)
        self.per_batch: list[tuple[str, PersonRecognizer | StreetAddressRecognizer]] = []
        if PERSON in entities:
            self.per_batch.append((PERSON, PersonRecognizer(language)))
        if STREET_ADDRESS in entities:
            self.per_batch.append((STREET_ADDRESS, StreetAddressRecognizer(language)))
        screens = {f"pattern_{i}": r.SCREEN for i, r in enumerate(self.per_document)}
        lower_case_screens: dict[str, str] = {}
        for _, recognizer in self.per_batch:
            screens.update(recognizer.SCREENS)
            lower_case_screens.update(getattr(recognizer, "LOWER_CASE_SCREENS", {}))
        self.screens = screens
        self.any_screen = "|".join(f"(?:{s})" for s in screens.values())
        self.lower_case_screens = lower_case_screens  # read only in texts without capitals
        _nfkc_changes()  # tables built once per worker, in setup rather than in the first batch
        if self.per_batch:
            _char_classes()

    def detect(self, texts: pa.Array, extra=None) -> tuple[list[list[Finding]], np.ndarray]:
        """Non-overlapping findings of each text of ``texts`` (a string array without
        nulls), in text order, with offsets into the original text, and which texts were
        analysed (matched a screen or hold a capitalised word). ``extra(view)``, when
        given, adds findings of its own on each folded view."""
        n = len(texts)
        if n == 0:
            return [], np.zeros(0, bool)
        views = texts.to_pylist()
        indexes: dict[int, np.ndarray] = {}
        screened_texts = texts
        non_ascii = np.flatnonzero(~pc.string_is_ascii(texts).to_numpy(zero_copy_only=False))
        if non_ascii.size:
            changes = pc.match_substring_regex(texts.take(non_ascii), _nfkc_changes()[3])
            changed = []
            for i in non_ascii[changes.to_numpy(zero_copy_only=False)].tolist():
                views[i], index = folded_view(views[i])
                changed.append(i)
                if index is not None:
                    indexes[i] = index
            if changed:
                mask = np.zeros(n, bool)
                mask[changed] = True
                screened_texts = pc.replace_with_mask(
                    texts, pa.array(mask), pa.array([views[i] for i in changed], pa.string())
                )
        screens = self._screens(screened_texts)
        upper = pc.match_substring_regex(screened_texts, r"\p{Lu}").to_numpy(zero_copy_only=False)
        lower_case = np.flatnonzero(~upper)
        for name, pattern in self.lower_case_screens.items():
            hit = np.zeros(n, bool)
            if lower_case.size:
                subset = screened_texts.take(lower_case)
                hit[lower_case[pc.match_substring_regex(subset, pattern).to_numpy(zero_copy_only=False)]] = True
            screens[name] = hit
        found: list[list[Finding]] = [[] for _ in range(n)]
        min_score = self.min_score
        for i, recognizer in enumerate(self.per_document):
            for doc in np.flatnonzero(screens[f"pattern_{i}"]).tolist():
                for r in recognizer.analyze(views[doc], recognizer.supported_entities, None):
                    if r.score >= min_score:
                        found[doc].append(Finding(r.start, r.end, r.entity_type, r.score))
        analysed = np.logical_or.reduce(list(screens.values())) if screens else np.zeros(n, bool)
        if self.per_batch:
            batch = Batch(views, ~upper)
            analysed |= np.bincount(batch.doc_of(batch.words.start), minlength=n) > 0
            for entity, recognizer in self.per_batch:
                docs, starts, ends, scores = recognizer.scan(batch, screens)
                keep = scores >= min_score
                for doc, s, e, score in zip(
                    docs[keep].tolist(), starts[keep].tolist(), ends[keep].tolist(), scores[keep].tolist()
                ):
                    found[doc].append(Finding(s, e, entity, score))
        if extra is not None:
            analysed[:] = True
            for doc, view in enumerate(views):
                found[doc].extend(f for f in extra(view) if f.score >= min_score)
        out = []
        for doc, findings in enumerate(found):
            if len(findings) > 1:
                findings = non_overlapping(findings)
            out.append(_to_original(findings, indexes.get(doc)) if findings else findings)
        return out, analysed

    def _screens(self, texts: pa.Array) -> dict[str, np.ndarray]:
        """Which texts each screen matches: one pass for all screens, then each screen
        over the texts that pass."""
        n = len(texts)
        any_hit = np.flatnonzero(pc.match_substring_regex(texts, self.any_screen).to_numpy(zero_copy_only=False))
        subset = texts.take(any_hit) if any_hit.size < n else texts
        screens = {}
        for name, pattern in self.screens.items():
            hit = np.zeros(n, bool)
            if any_hit.size:
                hit[any_hit[pc.match_substring_regex(subset, pattern).to_numpy(zero_copy_only=False)]] = True
            screens[name] = hit
        return screens


__all__ = [
    "CN_RESIDENT_ID",
    "PATTERN_ENTITIES",
    "PERSON",
    "RULE_ENTITIES",
    "STREET_ADDRESS",
    "Batch",
    "CnResidentIdRecognizer",
    "Detector",
    "Finding",
    "PersonRecognizer",
    "StreetAddressRecognizer",
    "cn_resident_id_is_valid",
    "folded_view",
    "non_overlapping",
    "pattern_recognizers",
]
