"""Language identification: record ``lang`` (ISO 639-1) and ``lang_score``, drop what
the pipeline does not want.

The detector is lingua (Rust, offline, 75 languages) in its low-accuracy mode, which
uses trigram models only: on the 30-language lingua test sentences it scores within two
points of the high-accuracy mode at twice the speed, and on documents longer than a
sentence the two agree (see benchmarks/cleaning_accuracy.py). Only a bounded prefix of
each document is looked at, so a 1 MB single-line record costs as much as a page.

What can be done on whole columns is done with Arrow kernels first (cleaning the prefix,
counting letters and scripts); only documents that have letters in a script the detector
knows reach it.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from tamis.stage import BatchResult, Stage, StageParams, split_by_reason

# Every script used by a language lingua knows; letters outside these cannot be identified.
_KNOWN_SCRIPTS = (
    r"[\p{Latin}\p{Cyrillic}\p{Greek}\p{Arabic}\p{Hebrew}\p{Han}\p{Hiragana}\p{Katakana}"
    r"\p{Hangul}\p{Devanagari}\p{Bengali}\p{Gujarati}\p{Gurmukhi}\p{Tamil}\p{Telugu}"
    r"\p{Thai}\p{Armenian}\p{Georgian}]"
)
# URLs, e-mail addresses and markup carry no language signal and skew trigram counts.
_NOISE = r"https?://\S+|www\.\S+|\S+@\S+\.\S+|<[^>\n]{0,200}>"


class LanguageParams(StageParams):
    # ISO 639-1 codes to keep; empty keeps every language (the columns are still written).
    allowed_languages: list[str] = Field(default_factory=list)
    # Below this top-language confidence (0..1) a document is dropped as undecided.
    min_confidence: float = Field(default=0.5, ge=0.0, le=1.0)
    # Only this many characters from the start of each document are examined.
    max_chars: int = Field(default=400, ge=50)
    # Languages the detector chooses between; empty = all 75 it knows. Narrowing it to the
    # languages a corpus can contain removes confusions such as Indonesian/Malay.
    candidate_languages: list[str] = Field(default_factory=list)
    # Letters in scripts the detector knows must be at least this share of all letters.
    min_known_script_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    # Code is mostly identifiers and keywords: record its language but do not filter it.
    filter_code: bool = False
    # The slower, more accurate detector mode (loads quadgram..fivegram models too).
    high_accuracy: bool = False

    @field_validator("allowed_languages", "candidate_languages")
    @classmethod
    def _known_codes(cls, codes: list[str]) -> list[str]:
        known = _lingua_codes()
        normalised = [c.strip().lower() for c in codes]
        unknown = sorted(set(normalised) - known)
        if unknown:
            raise ValueError(f"unknown ISO 639-1 codes {unknown}; the detector knows: {', '.join(sorted(known))}")
        return normalised

    @field_validator("candidate_languages")
    @classmethod
    def _at_least_two(cls, codes: list[str]) -> list[str]:
        if len(codes) == 1:
            raise ValueError("candidate_languages needs at least two languages (or none for all)")
        return codes


def _examined(text: pa.Array, row: int, max_chars: int) -> str:
    """The span the detector read (the text's first ``max_chars`` after leading blanks), in the
    ``span=START:END`` form of a drop's detail, so a report can point at it."""
    value = text[row].as_py() or ""
    start = len(value) - len(value.lstrip())
    return f" span={start}:{start + min(len(value) - start, max_chars)}"


class LanguageFilter(Stage):
    type_name = "language"
    Params = LanguageParams

    def process_batch(self, table: pa.Table) -> BatchResult:
        p: LanguageParams = self.params
        n = table.num_rows
        text = pc.fill_null(table.column("text"), "").combine_chunks() if n else pa.array([], pa.string())
        sample = pc.utf8_slice_codeunits(pc.utf8_ltrim_whitespace(text), 0, p.max_chars)
        sample = pc.replace_substring_regex(sample, _NOISE, " ")
        letters = pc.count_substring_regex(sample, r"\p{L}").to_numpy(zero_copy_only=False)
        known = pc.count_substring_regex(sample, _KNOWN_SCRIPTS).to_numpy(zero_copy_only=False)

        no_text = letters == 0
        unknown_script = ~no_text & (known < p.min_known_script_ratio * letters)
        to_detect = np.flatnonzero(~no_text & ~unknown_script)

        langs = np.full(n, "und", dtype=object)
        scores = np.zeros(n, dtype=np.float64)
        if len(to_detect):
            detector = _detector(tuple(p.candidate_languages), p.high_accuracy)
            samples = sample.take(pa.array(to_detect)).to_pylist()
            # One native call per document: lingua's batch API spreads work over every core
            # and was slower here inside a process pool that already uses them all.
            for i, s in zip(to_detect, samples):
                values = detector.compute_language_confidence_values(s)
                if values and values[0].value > 0:  # all zeros: the detector could not decide
                    top = values[0]
                    langs[i] = _iso(top.language)
                    scores[i] = top.value

        lang = pa.array(langs, pa.string())
        score = pa.array(np.round(scores, 4), pa.float64())
        reasons = np.full(n, None, dtype=object)
        details = np.full(n, None, dtype=object)
        filtered = np.ones(n, dtype=bool) if p.filter_code else ~self._is_code(table)
        reasons[no_text] = "no_text"
        details[no_text] = "no letters in the text"
        mask = unknown_script & filtered
        reasons[mask] = "lang_unknown_script"
        for i in np.flatnonzero(mask):
            details[i] = f"{int(known[i])} of {int(letters[i])} letters in a script the detector knows{_examined(text, i, p.max_chars)}"
        decided = filtered & ~no_text & ~unknown_script
        low = decided & (scores < p.min_confidence)
        reasons[low] = "lang_low_confidence"
        if p.allowed_languages:
            allowed = np.isin(langs, np.array(p.allowed_languages, dtype=object))
            reasons[decided & ~low & ~allowed] = "lang_not_allowed"
        for i in np.flatnonzero(decided & (reasons != None)):  # noqa: E711 (elementwise)
            details[i] = f"lang={langs[i]} score={scores[i]:.3f}{_examined(text, i, p.max_chars)}"

        table = table.append_column("lang", lang).append_column("lang_score", score)
        kept, dropped = split_by_reason(table, reasons.tolist(), details.tolist())
        metrics = Counter()
        for code, count in zip(*np.unique(langs[~no_text], return_counts=True)):
            metrics[f"language.detected.{code}"] += int(count)
        return BatchResult(kept=kept, dropped=dropped, metrics=metrics)

    def _is_code(self, table: pa.Table) -> np.ndarray:
        sources = self.context.get("sources", {})
        code_sources = [name for name, source in sources.items() if getattr(source, "type", "prose") == "code"]
        if not code_sources or "source" not in table.column_names:
            return np.zeros(table.num_rows, dtype=bool)
        mask = pc.is_in(table.column("source"), value_set=pa.array(code_sources, pa.string()))
        return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


@lru_cache(maxsize=1)
def _lingua_codes() -> frozenset[str]:
    from lingua import Language

    return frozenset(_iso(language) for language in Language.all())


def _iso(language) -> str:
    return language.iso_code_639_1.name.lower()


@lru_cache(maxsize=4)
def _detector(candidates: tuple[str, ...], high_accuracy: bool):
    """Built once per process (the stage object is pickled to workers without it)."""
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    if candidates:
        builder = LanguageDetectorBuilder.from_iso_codes_639_1(*[getattr(IsoCode639_1, c.upper()) for c in candidates])
    else:
        builder = LanguageDetectorBuilder.from_all_languages()
    if not high_accuracy:
        builder = builder.with_low_accuracy_mode()
    return builder.build()
