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

import gzip
import ipaddress
import json
import re
import unicodedata
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import phonenumbers
from presidio_analyzer import (
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerResult,
)
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UsSsnRecognizer,
)
from spacy.lang.en.stop_words import STOP_WORDS

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

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
        found = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [r for r in found if not _VERSION_BEFORE.search(text, max(0, r.start - 40), r.start)]


_VERSION_BEFORE = re.compile(
    r"(?i)(?:\bv|\bver\.?|\bversion|\brelease|\bbuild|\brev\.?|\bfirmware|\bpatch|"
    r"\b(?:upgrade|update|downgrade|bump|pin)(?:d|ed)?\b[^\n]{0,24}?\bto)[ \t:]*$"
)


class ScreenedIbanRecognizer(_Screened, IbanRecognizer):
    SCREEN = r"[A-Za-z]{2}[0-9]{2}"


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


_SSN_CONTEXT = re.compile(r"(?i)(?:\bssn|\bss#|\bss no|social[ \t-]security(?:[ \t]+(?:number|no\.?|#))?)\b[^\n]{0,24}$")


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
                if not_a_phone(text, start + lo, end + lo) or not phone_like(text, start + lo, end + lo):
                    continue
                result = self._get_recognizer_result(_Span(start + lo, end + lo), text, region, nlp_artifacts)
                results.append(result)
        return EntityRecognizer.remove_duplicates(results)


class _Span:
    __slots__ = ("end", "start")

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


_PHONE_WORDS = (
    r"phone|telephone|tel|ph|mobile|mob|cell|cellphone|fax|call|calls|called|calling|dial|text|sms|whatsapp|"
    r"contact|hotline|helpline|reach|ring|answering|messages|office|desk|home|work|landline|"
    r"telefon|téléphone|teléfono|telefone|handy|portable|móvil|celular"
)
_PHONE_WORDS_CJK = r"電話|电话|手机|手機|座机|联系|拨打|致电|呼叫|携帯"
# A phone word shortly before the number, on its line or as the label line above it.
_PHONE_BEFORE = re.compile(
    rf"(?i)(?:(?<![^\W\d_])(?:{_PHONE_WORDS})(?![^\W\d_])|{_PHONE_WORDS_CJK}|[☎📞✆])[^\n]{{0,24}}(?:\n[ \t]*)?$"
)
_PHONE_AFTER = re.compile(r"(?i)^[ \t]*[-(,]?[ \t]*(?:office|fax|mobile|cell|home|work|desk|tel|phone|ext\.?|x[0-9])\b")
_NOT_PHONE_BEFORE = re.compile(
    r"(?i)(?:\b(?:order|invoice|ref|reference|ticket|case|tracking|isbn|issn|sku|serial|part|model|version|ver|"
    r"v|build|patent|doi|pmid|id|account|acct|transaction|receipt|confirmation|booking|item|product|no|nr)\b\.?"
    r"[ \t]*(?:number|no\.?|nr\.?|#|:)?[ \t:#]*|#[ \t]*|[$€£¥₹][ \t]*)$"
)
_IPV4_LIKE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_THOUSANDS = re.compile(r"[0-9]{1,3}(?:[.,'][0-9]{3})+")
_DAY_FIRST_DATE = re.compile(r"(?:0?[1-9]|[12][0-9]|3[01])[./-](?:0?[1-9]|1[0-2])[./-](?:1[89]|20)?[0-9]{2}|(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12][0-9]|3[01])/(?:1[89]|20)?[0-9]{2}")
_ARITHMETIC = re.compile(r"[0-9][ \t]*[-+*/×÷x=^][ \t]*[0-9][^\n]*=|=[ \t]*[0-9(]|[0-9][ \t]+[-+*/×÷][ \t]+[0-9]")
_SEPARATORS = re.compile(r"[ \t.\-/]+")


def phone_like(text: str, start: int, end: int) -> bool:
    """A number python-phonenumbers accepts is taken for a phone number only with phone
    context or a phone-like format, and never when it reads as something else."""
    value = text[start:end]
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    line = text[line_start : line_end if line_end >= 0 else len(text)]
    context = bool(
        _PHONE_BEFORE.search(text, max(0, start - 40), start) or _PHONE_AFTER.match(text[end : end + 16])
    )
    digits = value.lstrip("+(")
    if _IPV4_LIKE.fullmatch(digits) or _THOUSANDS.fullmatch(digits) or _DAY_FIRST_DATE.fullmatch(digits):
        return False
    if text[max(0, start - 1) : start] in ("$", "€", "£", "¥", "₹") or _ARITHMETIC.search(line):
        return False
    if _NOT_PHONE_BEFORE.search(text, max(line_start, start - 32), start):
        return False  # a label right before it names it as something else
    if context:
        return True
    if value.startswith("+") or "(" in value:
        return True
    groups = [g for g in _SEPARATORS.split(value) if g]
    # Grouped like a phone number: 2 to 5 groups, none longer than 5 digits (or led by a
    # trunk prefix "0", as in "0961-7596216"), the last of 2 or more.
    short = max(map(len, groups)) <= 5 or groups[0].startswith("0")
    return 2 <= len(groups) <= 5 and short and len(groups[-1]) >= 2


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


# -- PERSON and STREET_ADDRESS ---------------------------------------------------------

LEXICON_PATH = Path(__file__).resolve().parent / "data" / "pii_lexicon.json.gz"
PERSON = "PERSON"
STREET_ADDRESS = "STREET_ADDRESS"


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
        self.model = raw["name_model"]

    def name_score(self, folded: str) -> float:
        marked = "^" + folded + "$"
        model = self.model
        grams = {marked[i : i + n] for n in (2, 3, 4) for i in range(len(marked) - n + 1)}
        return sum(model.get(g, 0.0) for g in grams)


@lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    return Lexicon()


def _letters(predicate) -> str:
    # Latin, Greek and Cyrillic letters (the scripts whose names are capitalised).
    chars = (chr(c) for r in ((0x41, 0x250), (0x370, 0x530), (0x1E00, 0x1F00)) for c in range(*r))
    return re.escape("".join(c for c in chars if predicate(c)))


_UP = f"[{_letters(str.isupper)}]"
_LO = f"[{_letters(str.islower)}]"
_NAME_TOKEN = rf"{_UP}{_LO}+(?:['’\-]{_UP}?{_LO}+)*"
# Capitalised words in a row, with initials ("J", "J.") between them.
_CAPITALISED_RUN = re.compile(
    rf"(?<![\w@/.]){_NAME_TOKEN}(?:[ \t]+(?:{_NAME_TOKEN}|{_UP}\.?(?=[ \t]+{_UP}{_LO})))*(?![\w@])"
)
_TOKEN = re.compile(r"\S+")
_TITLES = (
    r"mr|mrs|ms|miss|mx|dr|prof|professor|sir|dame|lady|lord|madam|madame|mme|mlle|herr|frau|sr|sra|srta|"
    r"rev|reverend|fr|father|sister|brother|capt|captain|col|gen|lt|sgt|judge|officer|uncle|aunt|president|senator"
)
_TITLE_BEFORE = re.compile(rf"(?i)\b(?:{_TITLES})\.?[ \t]*$")
_TITLE_WORD = re.compile(_TITLES)
# Function words are never names, whatever the name lists hold ("You" and "Will" are
# surnames in the census list).
_STOP_WORDS = frozenset(STOP_WORDS) | {"apt", "suite", "unit", "flat", "floor", "room", "box"}
# Phrases after which the next words are a name whatever they look like.
_INTRODUCED = re.compile(
    r"(?i)(?:\bmy name is|\bname is|\bnamed|\bcalled|\bcall me|\bi'm|\bi am|\bthis is|\bname[ \t]*[:?]|\bdear|"
    r"\bsigned|\bsincerely,?|\bregards,?|\bborn|\bknown as|\bnée|\bnee|\baka)[ \t]*$"
)
# Words right before or after a capitalised word that point at a person.
_PERSON_BEFORE = re.compile(
    r"(?i)\b(?:said|says|told|asked|wrote|hi|hello|hey|thanks|thank you|meet|met|contact|ask|son|daughter|wife|"
    r"husband|brother|sister|mother|father|kid|child|partner|friend|colleague|boss|author|director|producer|singer|"
    r"player|writer|songwriter|commenter|guardian|beneficiary|manager|assistant|founder|ceo|starring|featuring|"
    r"directed by|written by|feat\.?)[ \t,:]*$"
)
_PERSON_AFTER = re.compile(
    r"(?i)^(?:[ \t]*,?[ \t]*(?:said|says|told|asked|wrote|replied|explained|lives|lived|was born|who)\b|['’]s\b|[ \t]*:)"
)
# Verbs after a surname or a name-like word that make it a person's name.
_VERB_AFTER = re.compile(r"^[ \t]+(?:is|was|has|had|will|would|lives|lived|began|spent|shouted|spoke|sang|played)\b")
# Words that join names in a list or a sentence: evidence only for words that look like names.
_JOINING_BEFORE = re.compile(r"(?i)(?:\b(?:by|with|for|and|to|from|under)|[,>:])[ \t]*$")
_SURNAME_SUFFIX = re.compile(
    r"(?:ov|ova|ev|eva|sky|ski|ska|skaya|ic|vich|vna|enko|chuk|yan|dze|shvili|escu|poulos|akis|sson|dottir|"
    r"nen|inen|ova|oglu|ini|elli|etti|ucci|berg|mann|stein)$"
)
_LOWER_NAME = re.compile(rf"{_LO}{{2,}}(?:[ \t]+{_LO}\.?)?(?:[ \t]+{_LO}{{2,}})?")
_ORG_WORDS = frozenset(
    ["inc", "ltd", "llc", "plc", "gmbh", "corp", "co", "company", "group", "partners", "associates", "bank", "university", "college", "school", "institute", "foundation", "hospital", "church", "hotel", "club", "society", "council", "agency", "committee", "records", "orchestra", "band"]
)


class PersonRecognizer:
    """Names of people, from given-name and surname lists, a name-likeness model and context.

    A run of capitalised words is cut at common words; what is left is a name when
    - it holds two or more words led by a given name, or two surname-like words;
    - it is one given name that is not also a common word or a place ("James", not "Will");
    - it is a surname, an ambiguous name or a name-like word next to a word that points at
      a person ("said", "Mr.", "my name is", "'s", a line of its own...);
    - anything capitalised, or lower case words from the name lists, right after a phrase
      that introduces a name ("my name is", "Dear", "Name:").
    Scores: 0.85 for a given name with more evidence, 0.7 for context alone."""

    supported_entities = (PERSON,)
    # An upper-case letter, or a phrase that introduces a lower-case name (RE2 and the
    # regex module both read \p{Lu}).
    SCREEN = r"\p{Lu}|(?i:name|call me)"

    def __init__(self, supported_language: str = "en"):
        self.supported_language = supported_language
        self.lex = lexicon()
        self._kinds: dict[str, str] = {}

    def _kind(self, token: str) -> str:
        """G given name, S surname, N name-like, g/s given name or surname that is also a
        common word or place, C common word or place, I initial, O organisation word."""
        kind = self._kinds.get(token)
        if kind is not None:
            return kind
        word = token.rstrip(".")
        folded = fold_word(word)
        lex = self.lex
        if len(word) == 1:
            kind = "I"
        elif folded in _ORG_WORDS:
            kind = "O"
        elif folded in _STOP_WORDS or _TITLE_WORD.fullmatch(folded):
            kind = "C"
        else:
            common = folded in lex.common or folded in lex.places
            if folded in lex.given:
                kind = "g" if common else "G"
            elif folded in lex.surnames:
                kind = "s" if common else "S"
            elif common:
                kind = "C"
            elif _SURNAME_SUFFIX.search(folded) or lex.name_score(folded) > 0:
                kind = "N"
            else:
                kind = "X"
        if len(self._kinds) < 200_000:
            self._kinds[token] = kind
        return kind

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
        found = []
        maybe = []  # (start, end) of name-like words with too little evidence of their own
        for run in _CAPITALISED_RUN.finditer(text):
            tokens = [(t.start() + run.start(), t.end() + run.start(), t.group()) for t in _TOKEN.finditer(run.group())]
            kinds = [self._kind(t[2]) for t in tokens]
            if "O" in kinds:
                continue  # an organisation's name, though it may hold a person's
            i, n = 0, len(tokens)
            while i < n:
                if kinds[i] in "CI":
                    i += 1
                    continue
                j = i
                while j + 1 < n and kinds[j + 1] != "C":
                    j += 1
                while kinds[j] == "I":
                    j -= 1
                score = self._judge(text, tokens[i][0], tokens[j][1], kinds[i : j + 1])
                if score:
                    found.append(_result(PERSON, tokens[i][0], tokens[j][1], score))
                elif any(k in "GSNgs" for k in kinds[i : j + 1]):
                    maybe.append((tokens[i][0], tokens[j][1]))
                i = j + 1
        seeds = [r for r in found if r.score >= 0.85]  # names that stand on their own
        if maybe and seeds:
            found.extend(_listed_with(text, seeds, maybe))
        lex = self.lex
        for match in _INTRODUCED_LOWER.finditer(text):
            words = [fold_word(w.rstrip(".")) for w in match.group(1).split()]
            if all(len(w) == 1 or (w in lex.given or w in lex.surnames) and w not in _STOP_WORDS for w in words):
                found.append(_result(PERSON, *match.span(1), 0.7))
        return found

    def _judge(self, text: str, start: int, end: int, kinds: list[str]) -> float:
        line_start = text.rfind("\n", 0, start) + 1
        before = text[max(line_start, start - 40) : start]
        if _TITLE_BEFORE.search(before) or _INTRODUCED.search(before):
            return 0.85
        strong = sum(k in "GS" for k in kinds) + 0.5 * sum(k in "Ngs" for k in kinds)
        if len(kinds) >= 2:
            if (kinds[0] in "Gg" and strong >= 1.5) or strong >= 2:
                return 0.85
        elif kinds[0] == "G":
            return 0.85
        if strong < 0.5:
            return 0.0
        if _PERSON_BEFORE.search(before) or _PERSON_AFTER.match(text[end : end + 12]):
            return 0.7
        if len(kinds) == 1:
            return 0.7 if kinds[0] in "SN" and _VERB_AFTER.match(text[end : end + 12]) else 0.0
        clear = sum(k in "GSN" for k in kinds)  # words that are names and nothing else
        if clear and "I" in kinds[1:-1]:
            return 0.85  # "Ravil G Yefimov": an initial between names
        if clear and strong + 0.25 * kinds.count("X") >= 0.75:
            line_end = text.find("\n", end)
            alone = not text[line_start:start].strip(" \t>*-•") and (line_end < 0 or not text[end:line_end].strip())
            if alone or _JOINING_BEFORE.search(before):
                return 0.7
        return 0.0


_LIST_JOIN = re.compile(r",[ \t]*(?:and[ \t]+|or[ \t]+|&[ \t]*)?|[ \t]+(?:and|or|&)[ \t]+")


def _listed_with(text: str, found: list, maybe: list[tuple[int, int]]) -> list:
    """Name-like words listed next to a name ("Kónya, Becker and Vasquez") are names too."""
    edges = {(r.start, r.end) for r in found}
    added = []
    for _ in range(3):  # a list grows one neighbour a round, from either side
        starts = {s for s, _ in edges}
        ends = {e for _, e in edges}
        new = []
        for start, end in maybe:
            if (start, end) in edges:
                continue
            after = _LIST_JOIN.match(text, end)
            before = [e for e in ends if e < start and _LIST_JOIN.fullmatch(text, e, start)]
            if before or (after and after.end() in starts):
                new.append((start, end))
        if not new:
            break
        edges.update(new)
        added.extend(_result(PERSON, s, e, 0.7) for s, e in new)
    return added


_INTRODUCED_LOWER = re.compile(
    rf"(?i:\bmy name is|\bname is|\bcall me|\bname[ \t]*:)[ \t]+({_LOWER_NAME.pattern})(?![\w@])"
)


def _result(entity: str, start: int, end: int, score: float) -> RecognizerResult:
    return RecognizerResult(entity_type=entity, start=start, end=end, score=score)


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
_UNIT = r"(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm)\.?[ \t]*#?[0-9]{1,5}[A-Za-z]?\b"
_HOUSE_NUMBER = r"[0-9]{1,6}[A-Za-z]?(?:[-/][0-9]{1,4})?"
_CITY_STATE_ZIP = rf"(?:,[ \t]*(?:{_CAP_WORD}[ \t]+){{0,2}}{_CAP_WORD},?[ \t]+[A-Z]{{2}}[ \t]+[0-9]{{4,5}}(?:-[0-9]{{4}})?)"
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
_FULL_STREET_TYPE = re.compile(r"(?:Street|Avenue|Road|Boulevard|Lane|Drive|Terrace|Highway|Parkway|Crescent|Alley)s?\b")
_CAPITALISED_BEFORE = re.compile(rf"(?:{_CAP_WORD}[ \t]+){{1,3}}$")


def _word_start(text: str, at: int) -> bool:
    return at == 0 or not (text[at - 1].isalnum() or text[at - 1] in "_.,")


class StreetAddressRecognizer:
    """Street addresses by their shape: a house number and words ending in a street type
    ("12 Oak Street"), a street-type prefix ("Via Roma 5"), a street-type suffix
    ("Mannerheimintie 12", "Hauptstraße 3"), PO and military boxes, and flat or suite
    numbers; a following "City, ST 12345" joins the span."""

    supported_entities = (STREET_ADDRESS,)
    SCREEN = r"[0-9]|Street|Avenue|Road|Boulevard|Lane|Drive|Terrace|Highway|Parkway|Crescent|Alley"
    SCORE = 0.9  # above PERSON's: a name inside an address is part of the address

    def __init__(self, supported_language: str = "en"):
        self.supported_language = supported_language

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
        spans = [m.span() for m in _NUMBERED_STREET.finditer(text) if _word_start(text, m.start())]
        spans += [m.span() for m in _WORD_LED_ADDRESS.finditer(text) if _word_start(text, m.start())]
        for m in _NUMBER_AFTER_WORD.finditer(text):
            start = m.start()
            words = text[max(0, start - 60) : start].rsplit(None, 2)
            if not words or not words[-1].lower().endswith(_STREET_SUFFIX_WORDS):
                continue
            start -= len(words[-1])
            if len(words) > 1 and words[-2][:1].isupper() and text[start - 1 : start] in (" ", "\t"):
                start -= len(words[-2]) + 1
            spans.append((start, m.end()))
        for m in _FULL_STREET_TYPE.finditer(text):
            if m.start() == 0 or text[m.start() - 1] not in " \t":
                continue
            words = _CAPITALISED_BEFORE.search(text, max(0, m.start() - 40), m.start())
            if words and _word_start(text, words.start()):
                spans.append((words.start(), m.end()))
        return [_result(STREET_ADDRESS, s, e, self.SCORE) for s, e in spans]


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
    """The recognizers for the pattern and rule entities among ``entities``."""
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
        PERSON: lambda: PersonRecognizer(supported_language=language),
        STREET_ADDRESS: lambda: StreetAddressRecognizer(supported_language=language),
    }
    return [build[e]() for e in entities if e in build]


__all__ = [
    "CN_RESIDENT_ID",
    "PATTERN_ENTITIES",
    "PERSON",
    "RULE_ENTITIES",
    "STREET_ADDRESS",
    "CnResidentIdRecognizer",
    "RecognizerResult",
    "cn_resident_id_is_valid",
    "pattern_recognizers",
]
