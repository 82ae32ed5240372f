"""PII: find personal data with Microsoft Presidio, then mask it, drop the document, or flag it.

Detection uses Presidio pattern recognizers (see :mod:`tamis.pii_recognizers`) for
e-mail addresses, phone numbers (including Chinese mobile numbers), credit cards, IP
addresses, IBANs, US social security numbers and PRC resident identity numbers. Names
and places (PERSON, LOCATION) need a spaCy NER model; they are found only when
``ner_model`` names an installed spaCy package or a saved pipeline directory. Without it, Presidio runs on an NLP
engine that loads no model, so the stage works with nothing downloaded. The pattern
recognizers are language-neutral and run on every document under Presidio's ``en`` key.

Speed: the recognizers' screens are ORed into one regular expression that runs over the
whole text column at once (Arrow, RE2); only the documents it matches go to Presidio.
Long documents are analysed in chunks of ``chunk_chars`` that overlap by
``chunk_overlap`` characters, so one call's work is bounded; where chunk matches overlap,
the higher score wins, then the longer span. Documents over ``max_chars`` are dropped
unscanned (reason ``pii_too_long``), since nothing can be said about what they hold.

Outcomes per ``action``: ``mask`` replaces each finding with ``mask`` (``{entity}`` is
the entity type, e.g. ``<EMAIL_ADDRESS>``) through presidio-anonymizer; ``remove`` drops
documents with any finding (reason ``pii_found``, the detail counts entity types);
``flag`` keeps the text and adds ``pii_spans`` (character offsets and types). Every kept document
gets ``pii_count`` and ``pii_types``. Batch metrics count findings by type
(``pii.EMAIL_ADDRESS``...). No PII value is ever logged or written outside the kept
text under ``flag``: metrics, reasons and details hold types and counts only.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from tamis.stage import BatchResult, Stage, StageParams, split_by_reason

NER_ENTITIES = ("PERSON", "LOCATION")
DEFAULT_ENTITIES = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IP_ADDRESS", "IBAN_CODE", "US_SSN", "CN_RESIDENT_ID"]
DEFAULT_PHONE_REGIONS = ["US", "GB", "DE", "FR", "IN", "CA", "BR", "CN"]
_PRESIDIO_LANGUAGE = "en"
_SPAN_TYPE = pa.list_(pa.struct([("start", pa.int32()), ("end", pa.int32()), ("entity", pa.string())]))

log = logging.getLogger("tamis.stages.pii")


class PiiParams(StageParams):
    # Entity types to find: any of DEFAULT_ENTITIES, plus PERSON / LOCATION with ner_model.
    entities: list[str] = Field(default_factory=lambda: list(DEFAULT_ENTITIES))
    action: Literal["mask", "remove", "flag"] = "mask"
    mask: str = "<{entity}>"  # replacement text under action "mask"; {entity} is the type
    min_score: float = Field(0.4, ge=0.0, le=1.0)  # Presidio confidence below which a match is ignored
    phone_regions: list[str] = Field(default_factory=lambda: list(DEFAULT_PHONE_REGIONS))
    # python-phonenumbers leniency: 0 possible, 1 valid, 2 valid with strict grouping, 3 exact grouping.
    phone_leniency: int = Field(1, ge=0, le=3)
    ip_public_only: bool = True  # loopback / private / link-local addresses are not personal data
    # An installed spaCy package (e.g. "en_core_web_sm") or a saved spaCy pipeline directory,
    # for PERSON / LOCATION; null = no NER.
    ner_model: str | None = None
    chunk_chars: int = Field(100_000, ge=1_000)
    chunk_overlap: int = Field(256, ge=0)  # longer than any pattern entity, so none is cut in both chunks
    max_chars: int = Field(10_000_000, ge=1)

    @field_validator("entities")
    @classmethod
    def _known_entities(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(DEFAULT_ENTITIES) - set(NER_ENTITIES))
        if unknown:
            raise ValueError(f"unknown PII entity types {unknown}; known: {DEFAULT_ENTITIES + list(NER_ENTITIES)}")
        if not value:
            raise ValueError("entities is empty: list at least one PII entity type")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        needs_ner = sorted(set(self.entities) & set(NER_ENTITIES))
        if needs_ner and self.ner_model is None:
            raise ValueError(f"entities {needs_ner} need a spaCy NER model: set ner_model, or leave them out")
        if self.chunk_overlap >= self.chunk_chars // 2:
            raise ValueError("chunk_overlap must be under half of chunk_chars")
        try:
            self.mask.format(entity="X")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"mask {self.mask!r} is not a valid template (only {{entity}} may be used): {exc}") from None
        return self


class PiiMask(Stage):
    type_name = "pii"
    Params = PiiParams

    def __getstate__(self):
        # Presidio engines are rebuilt in each worker process, not pickled.
        state = dict(self.__dict__)
        state.pop("_engines", None)
        return state

    def check_ready(self) -> None:
        model = self.params.ner_model
        if model is not None:
            import spacy.util

            if not (spacy.util.is_package(model) or Path(model).is_dir()):
                raise ValueError(
                    f"pii: ner_model {model!r} is neither an installed spaCy package nor a spaCy pipeline "
                    "directory; install it (models are never downloaded at run time) or set ner_model to null"
                )

    # -- detection -------------------------------------------------------------------

    def _build(self):
        engines = self.__dict__.get("_engines")
        if engines is not None:
            return engines
        _quiet_presidio_logs()
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_anonymizer import AnonymizerEngine

        from tamis.pii_recognizers import NoContextEnhancer, pattern_recognizers, screen_for

        p = self.params
        recognizers = pattern_recognizers(
            p.entities, _PRESIDIO_LANGUAGE, p.phone_regions, p.phone_leniency, p.ip_public_only
        )
        registry = RecognizerRegistry(supported_languages=[_PRESIDIO_LANGUAGE])
        for recognizer in recognizers:
            registry.add_recognizer(recognizer)
        ner_entities = [e for e in p.entities if e in NER_ENTITIES]
        if ner_entities:
            self.check_ready()  # SpacyNlpEngine would otherwise try to download a missing model
            from presidio_analyzer.nlp_engine import SpacyNlpEngine
            from presidio_analyzer.predefined_recognizers import SpacyRecognizer

            nlp_engine = SpacyNlpEngine(models=[{"lang_code": _PRESIDIO_LANGUAGE, "model_name": p.ner_model}])
            registry.add_recognizer(SpacyRecognizer(supported_language=_PRESIDIO_LANGUAGE, supported_entities=ner_entities))
            screen = None  # names can be anywhere: every document is analysed
            enhancer = None  # Presidio's default: context words near a match raise its score
        else:
            from presidio_analyzer.nlp_engine import NoOpNlpEngine

            nlp_engine = NoOpNlpEngine(models=[{"lang_code": _PRESIDIO_LANGUAGE, "model_name": "none"}])
            screen = screen_for(recognizers)
            enhancer = NoContextEnhancer()
        analyzer = AnalyzerEngine(
            nlp_engine=nlp_engine,
            registry=registry,
            supported_languages=[_PRESIDIO_LANGUAGE],
            default_score_threshold=p.min_score,
            context_aware_enhancer=enhancer,
        )
        engines = (analyzer, AnonymizerEngine(), screen)
        self.__dict__["_engines"] = engines
        return engines

    def find(self, text: str) -> list:
        """Non-overlapping Presidio findings in ``text``, in text order."""
        analyzer = self._build()[0]
        p = self.params
        step = p.chunk_chars - p.chunk_overlap
        found = []
        for start in range(0, max(len(text) - p.chunk_overlap, 1), step):
            chunk = text[start : start + p.chunk_chars]
            for r in analyzer.analyze(chunk, language=_PRESIDIO_LANGUAGE, entities=p.entities):
                r.start += start
                r.end += start
                found.append(r)
        return _non_overlapping(found)

    # -- the batch ---------------------------------------------------------------------

    def process_batch(self, table: pa.Table) -> BatchResult:
        p = self.params
        n = table.num_rows
        _, anonymizer, screen = self._build()
        text = table.column("text").combine_chunks() if n else pa.array([], pa.string())
        is_null = pc.is_null(text).to_numpy(zero_copy_only=False)
        lengths = pc.fill_null(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False)
        too_long = lengths > p.max_chars
        if screen is None:
            candidate = ~is_null & (lengths > 0)
        else:
            candidate = pc.fill_null(pc.match_substring_regex(text, screen), False).to_numpy(zero_copy_only=False)
        candidate = candidate & ~too_long
        todo = np.flatnonzero(candidate)

        counts = np.zeros(n, np.int32)
        types: list[str | None] = [None] * n
        spans: list[list | None] = [[] for _ in range(n)] if p.action == "flag" else []
        masked: dict[int, str] = {}
        metrics: Counter = Counter()
        by_type_docs: dict[int, Counter] = {}
        for i, doc in zip(todo, text.take(pa.array(todo, pa.int64())).to_pylist()):
            found = self.find(doc)
            if not found:
                continue
            per_type = Counter(r.entity_type for r in found)
            by_type_docs[i] = per_type
            counts[i] = len(found)
            types[i] = ",".join(sorted(per_type))
            metrics.update({f"pii.{t}": c for t, c in per_type.items()})
            if p.action == "mask":
                masked[i] = self._mask(anonymizer, doc, found)
            elif p.action == "flag":
                spans[i] = [{"start": r.start, "end": r.end, "entity": r.entity_type} for r in found]

        metrics["pii.docs_screened_out"] += int(n - len(todo) - too_long.sum())
        metrics["pii.docs_analysed"] += len(todo)
        metrics["pii.docs_with_pii"] += len(by_type_docs)
        metrics["pii.findings"] += int(counts.sum())

        reasons = np.full(n, None, dtype=object)
        details = np.full(n, None, dtype=object)
        if too_long.any():
            reasons[too_long] = "pii_too_long"
            for i in np.flatnonzero(too_long):
                details[i] = f"{int(lengths[i])} characters > max_chars {p.max_chars}; not scanned"
        if p.action == "remove":
            for i, per_type in by_type_docs.items():
                reasons[i] = "pii_found"
                details[i] = ",".join(f"{t}={c}" for t, c in sorted(per_type.items()))

        if masked:
            rows = np.fromiter(masked, np.int64, len(masked))
            mask_array = np.zeros(n, bool)
            mask_array[rows] = True
            # replace_with_mask takes the replacements in row order.
            new_text = pc.replace_with_mask(text, pa.array(mask_array), pa.array([masked[i] for i in sorted(masked)], pa.string()))
            table = table.set_column(table.schema.get_field_index("text"), "text", new_text)
            metrics["pii.docs_masked"] += len(masked)
        table = table.append_column("pii_count", pa.array(counts, pa.int32()))
        table = table.append_column("pii_types", pa.array(types, pa.string()))
        if p.action == "flag":
            table = table.append_column("pii_spans", pa.array(spans, _SPAN_TYPE))
        kept, dropped = split_by_reason(table, reasons.tolist(), details.tolist())
        return BatchResult(kept=kept, dropped=dropped, metrics=metrics)

    def _mask(self, anonymizer, doc: str, found: list) -> str:
        from presidio_anonymizer.entities import OperatorConfig

        operators = {
            t: OperatorConfig("replace", {"new_value": self.params.mask.format(entity=t)})
            for t in {r.entity_type for r in found}
        }
        return anonymizer.anonymize(text=doc, analyzer_results=found, operators=operators).text


class _WithholdText(logging.Filter):
    """Presidio's messages can quote the text they were given (``Failed to validate text
    %s``, context words around a match): they are logged without their arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = "%s %s at %s:%d (message withheld: it may quote document text)"
        record.args = (record.name, record.levelname, record.module, record.lineno)
        return True


def _quiet_presidio_logs() -> None:
    for name in ("presidio-analyzer", "presidio-anonymizer"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        if not any(isinstance(f, _WithholdText) for f in logger.filters):
            logger.addFilter(_WithholdText())


def _non_overlapping(results: list) -> list:
    """Keep the best of overlapping findings: higher score, then longer span, then earlier."""
    if len(results) < 2:
        return results
    ordered = sorted(results, key=lambda r: (-r.score, r.start - r.end, r.start, r.entity_type))
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
