"""Presidio recognizers for the PII stage, built to run offline and fast.

Each recognizer carries a ``SCREEN``: a cheap regular expression that every text it
could match must contain. The stage ORs the screens of the enabled recognizers and runs
them over a whole Arrow column at once (RE2), so most documents never reach Presidio;
each recognizer checks its own screen again before its costlier patterns. Screens use
``[0-9]`` rather than ``\\d`` so that Python's ``re`` and RE2 agree on what they match.

Changes to Presidio's own recognizers, and why:
- e-mail: Presidio validates the domain with tldextract, which fetches the public
  suffix list over the network on first use; here it reads the list bundled with
  tldextract and never goes online.
- phone: Presidio runs python-phonenumbers' matcher over the whole text once per
  region (tens of milliseconds on a 2 KB page); here it runs only on runs of digits and
  separators holding at least ``MIN_PHONE_DIGITS`` digits, with a few characters around.
- CN resident identity number: a pattern recognizer that keeps only 18-character numbers
  with a valid date of birth and a valid GB 11643-1999 check character.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import date
from functools import lru_cache
from typing import ClassVar

import phonenumbers
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UsSsnRecognizer,
)

CN_RESIDENT_ID = "CN_RESIDENT_ID"
MIN_PHONE_DIGITS = 7
# Digits with at most three separators between them: every phone candidate below holds
# such a run of MIN_PHONE_DIGITS digits.
_PHONE_SCREEN = r"[0-9](?:[ \t().\-/]{0,3}[0-9]){%d}" % (MIN_PHONE_DIGITS - 1)
_PHONE_RUN = re.compile(r"[0-9](?:[ \t]?[().\-/]?[ \t]?[0-9])+")
_PHONE_WINDOW_PAD = 3  # characters around a run: "+", "(" and the matcher's boundary checks


class _Screened:
    """Skips a recognizer's patterns on texts that do not contain its screen."""

    SCREEN: ClassVar[str]
    _screen: ClassVar[re.Pattern]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "SCREEN" in cls.__dict__:
            cls._screen = re.compile(cls.SCREEN)

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
        if not self._screen.search(text):
            return []
        return super().analyze(text, entities, nlp_artifacts, regex_flags)


class OfflineEmailRecognizer(_Screened, EmailRecognizer):
    SCREEN = r"@"
    _extract = None

    def validate_result(self, pattern_text: str) -> bool:
        if OfflineEmailRecognizer._extract is None:
            import tldextract

            # No URLs: never fetch the suffix list; no cache dir: never write one.
            OfflineEmailRecognizer._extract = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=())
        return OfflineEmailRecognizer._extract(pattern_text).fqdn != ""


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


class ScreenedIbanRecognizer(_Screened, IbanRecognizer):
    SCREEN = r"[A-Za-z]{2}[0-9]{2}"


class ScreenedUsSsnRecognizer(_Screened, UsSsnRecognizer):
    SCREEN = r"[0-9]{3}[- .]?[0-9]{2}[- .]?[0-9]{4}"


class CandidatePhoneRecognizer(PhoneRecognizer):
    """Presidio's phone recognizer, run on digit runs instead of the whole text.

    Regions are tried in order and the search stops at the first region whose matches
    span the whole run: the later regions would only find the same number again."""

    SCREEN = _PHONE_SCREEN
    _screen = re.compile(_PHONE_SCREEN)

    def analyze(self, text, entities, nlp_artifacts=None):
        results = []
        for run in _PHONE_RUN.finditer(text):
            digits = sum(ch.isdigit() for ch in run.group())
            if digits < MIN_PHONE_DIGITS:
                continue
            lo = max(0, run.start() - _PHONE_WINDOW_PAD)
            hi = min(len(text), run.end() + _PHONE_WINDOW_PAD)
            for start, end, region in _phone_matches(text[lo:hi], run.start() - lo, run.end() - lo, self.supported_regions, self.leniency):
                if not_a_phone(text, start + lo, end + lo):
                    continue
                result = self._get_recognizer_result(_Span(start + lo, end + lo), text, region, nlp_artifacts)
                results.append(result)
        return EntityRecognizer.remove_duplicates(results)


class _Span:
    __slots__ = ("start", "end")

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end


_DIGIT_GROUPS = re.compile(r"[0-9]+")
_ISBN_CONTEXT = re.compile(r"(?i)isbn")
_DATE_START = re.compile(r"(?:1[89]|20)[0-9]{2}[-/.](?:0[1-9]|1[0-2])[-/.](?:0[1-9]|[12][0-9]|3[01])(?![0-9])")


def not_a_phone(text: str, start: int, end: int) -> bool:
    """Numbers that python-phonenumbers accepts but the page shows are something else.

    Measured on web pages, most such matches are decimals and table columns
    ("0.235  -0.685", "12.0292272567749"), digit-by-digit sequences ("0 3 4 5 1 6 2 7"),
    the fraction part of a decimal, dates ("2021-06-17 18") and ISBNs ("0-393-02895-5")."""
    value = text[start:end]
    groups = _DIGIT_GROUPS.findall(value)
    if sum(len(g) == 1 for g in groups) > 2 or "  " in value or _DATE_START.match(value):
        return True
    if "." in value and (value.lstrip("+(-").startswith("0.") or max(map(len, groups)) >= 6):
        return True
    before, after = text[max(0, start - 2) : start], text[end : end + 2]
    if (len(before) == 2 and before[1] in ".," and before[0].isdigit()) or (
        len(after) == 2 and after[0] in ".," and after[1].isdigit()
    ):
        return True  # the digits continue a decimal number
    return bool(_ISBN_CONTEXT.search(text, max(0, start - 24), start))


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


class NoContextEnhancer(ContextAwareEnhancer):
    """For the model-free NLP engine: there are no tokens to read context words from, and
    Presidio's default enhancer would still deep-copy every result of every text."""

    def __init__(self):
        super().__init__(
            context_similarity_factor=0.0,
            min_score_with_context_similarity=0.0,
            context_prefix_count=0,
            context_suffix_count=0,
        )

    def enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):
        return raw_results


PATTERN_ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IP_ADDRESS",
    "IBAN_CODE",
    "US_SSN",
    CN_RESIDENT_ID,
)


def pattern_recognizers(
    entities: list[str], language: str, phone_regions: list[str], phone_leniency: int = 1, ip_public_only: bool = True
) -> list:
    """The recognizers for the pattern entities among ``entities``."""
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


def screen_for(recognizers: list) -> str | None:
    """One regular expression that every text any of ``recognizers`` could match contains;
    None when one of them has no screen (NER), so every text must be analysed."""
    screens = []
    for recognizer in recognizers:
        screen = getattr(recognizer, "SCREEN", None)
        if screen is None:
            return None
        screens.append(f"(?:{screen})")
    return "|".join(screens) if screens else None


__all__ = [
    "CN_RESIDENT_ID",
    "PATTERN_ENTITIES",
    "CnResidentIdRecognizer",
    "NoContextEnhancer",
    "RecognizerResult",
    "cn_resident_id_is_valid",
    "pattern_recognizers",
    "screen_for",
]
