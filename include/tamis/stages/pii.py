"""PII: find personal data, then mask it, drop the document, or flag it.

Detection runs offline, with nothing downloaded (see :mod:`tamis.pii_recognizers`):
- pattern types, with Presidio's recognizers and validators (checksums, python-phonenumbers,
  the public suffix list bundled with tldextract) and context rules against look-alikes:
  e-mail addresses, phone numbers (including Chinese mobile numbers), credit cards, IP
  addresses, IBANs, US social security numbers and PRC resident identity numbers;
- PERSON and STREET_ADDRESS, from given-name and surname lists, a name-likeness model and
  context rules, and from the shape of addresses;
- with ``ner_model`` (an installed spaCy package or a saved pipeline directory), spaCy's
  PERSON and LOCATION entities as well.

Detection sees each text NFKC-folded (full-width digits and ``＠`` read as ASCII); spans
are mapped back to the original characters, so masking replaces exactly the characters of
each value and keeps everything around it as it was. Each value gets its own mask; where
findings overlap, the higher score wins, then the longer span.

Speed: a batch is read at once. Cheap screens run over the whole text column in one
Arrow (RE2) pass and pattern recognizers run only on the texts their screen matched;
names are found over the batch's texts joined into one string, with numpy doing the
per-word work (see :class:`tamis.pii_recognizers.Detector`). The spaCy model, when set,
reads long texts in chunks of ``chunk_chars`` that overlap by ``chunk_overlap``
characters. Documents over ``max_chars`` are dropped unscanned (reason ``pii_too_long``),
since nothing can be said about what they hold.

Outcomes per ``action``: ``mask`` replaces each finding with ``mask`` (``{entity}`` is the
entity type, e.g. ``<EMAIL_ADDRESS>``); ``remove`` drops documents with any finding
(reason ``pii_found``, the detail counts entity types); ``flag`` keeps the text and adds
``pii_spans`` (character offsets and types). Every kept document gets ``pii_count`` and
``pii_types``. Batch metrics count findings by type as ``pii.entity.<TYPE>``; the
bookkeeping counters are ``pii.docs_screened_out``, ``pii.docs_analysed``,
``pii.docs_with_pii``, ``pii.findings`` and ``pii.docs_masked``. No PII value is ever
logged or written outside the kept text under ``flag``: metrics, reasons and details
hold types and counts only.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from tamis.stage import BatchResult, Stage, StageParams, split_by_reason

NER_ENTITIES = ("LOCATION",)  # only with ner_model
DEFAULT_ENTITIES = [
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IP_ADDRESS",
    "IBAN_CODE",
    "US_SSN",
    "CN_RESIDENT_ID",
    "PERSON",
    "STREET_ADDRESS",
]
DEFAULT_PHONE_REGIONS = ["US", "GB", "DE", "FR", "IN", "CA", "BR", "CN"]
_PRESIDIO_LANGUAGE = "en"
_SPACY_LABELS = {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION"}
_SPAN_TYPE = pa.list_(pa.struct([("start", pa.int32()), ("end", pa.int32()), ("entity", pa.string())]))

log = logging.getLogger("tamis.stages.pii")


class PiiParams(StageParams):
    # Entity types to find: any of DEFAULT_ENTITIES, plus LOCATION with ner_model.
    entities: list[str] = Field(default_factory=lambda: list(DEFAULT_ENTITIES))
    action: Literal["mask", "remove", "flag"] = "mask"
    mask: str = "<{entity}>"  # replacement text under action "mask"; {entity} is the type
    min_score: float = Field(0.4, ge=0.0, le=1.0)  # confidence below which a match is ignored
    phone_regions: list[str] = Field(default_factory=lambda: list(DEFAULT_PHONE_REGIONS))
    # python-phonenumbers leniency: 0 possible, 1 valid, 2 valid with strict grouping, 3 exact grouping.
    phone_leniency: int = Field(1, ge=0, le=3)
    ip_public_only: bool = True  # loopback / private / link-local / documentation addresses are not personal data
    # An installed spaCy package (e.g. "en_core_web_sm") or a saved spaCy pipeline directory,
    # adding its PERSON / LOCATION entities; null = the rule-based PERSON only.
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
            raise ValueError(
                f"mask {self.mask!r} is not a valid template (only {{entity}} may be used): {exc}"
            ) from None
        return self


class PiiMask(Stage):
    type_name = "pii"
    Params = PiiParams
    params: PiiParams

    def setup(self) -> None:
        self._build()  # recognizers, word lists and the spaCy pipeline, once per worker, never pickled
        # What is loaded now lives as long as the worker: moved out of the collector's
        # reach, the next full collections skip its half a million objects (one full
        # pass over them costs about as much as masking a megabyte of text).
        gc.collect()
        gc.freeze()

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
        """(the detector, the spaCy pipeline or None), once per process."""
        engines = self.__dict__.get("_engines")
        if engines is not None:
            return engines
        _quiet_presidio_logs()
        from tamis.pii_recognizers import Detector

        p = self.params
        detector = Detector(
            [e for e in p.entities if e not in NER_ENTITIES],
            p.phone_regions,
            p.phone_leniency,
            p.ip_public_only,
            p.min_score,
            _PRESIDIO_LANGUAGE,
        )
        nlp = None
        if p.ner_model is not None:
            self.check_ready()
            import spacy

            nlp = spacy.load(p.ner_model)
        engines = (detector, nlp)
        self.__dict__["_engines"] = engines
        return engines

    def find(self, text: str) -> list:
        """Non-overlapping findings in ``text`` (``start``, ``end``, ``entity_type``,
        ``score``), in text order, with offsets into ``text``: the batch path for one text."""
        return self._detect(pa.array([text], pa.string()))[0][0]

    def _detect(self, texts: pa.Array) -> tuple[list[list], np.ndarray]:
        detector, nlp = self._build()
        extra = None
        if nlp is not None:
            wanted = set(self.params.entities)
            extra = lambda view: _spacy_findings(nlp, view, self.params.chunk_chars, self.params.chunk_overlap, wanted)  # noqa: E731
        return detector.detect(texts, extra)

    # -- the batch ---------------------------------------------------------------------

    def process_batch(self, table: pa.Table) -> BatchResult:
        p = self.params
        n = table.num_rows
        text = table.column("text").combine_chunks() if n else pa.array([], pa.string())
        is_null = pc.is_null(text).to_numpy(zero_copy_only=False)
        lengths = pc.fill_null(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False)
        too_long = lengths > p.max_chars
        todo = np.flatnonzero(~is_null & (lengths > 0) & ~too_long)
        found_by_doc, analysed = self._detect(text.take(pa.array(todo, pa.int64())))

        counts = np.zeros(n, np.int32)
        types: list[str | None] = [None] * n
        spans: list[list | None] = [[] for _ in range(n)] if p.action == "flag" else []
        masked: dict[int, str] = {}
        metrics: Counter = Counter()
        by_type_docs: dict[int, Counter] = {}
        with_findings = [j for j, found in enumerate(found_by_doc) if found]
        originals = text.take(pa.array(todo[with_findings], pa.int64())).to_pylist() if p.action == "mask" else []
        for k, j in enumerate(with_findings):
            i = int(todo[j])
            found = found_by_doc[j]
            per_type = Counter(r.entity_type for r in found)
            by_type_docs[i] = per_type
            counts[i] = len(found)
            types[i] = ",".join(sorted(per_type))
            metrics.update({f"pii.entity.{t}": c for t, c in per_type.items()})
            if p.action == "mask":
                masked[i] = self._mask(originals[k], found)
            elif p.action == "flag":
                spans[i] = [{"start": r.start, "end": r.end, "entity": r.entity_type} for r in found]

        metrics["pii.docs_screened_out"] += int(n - int(analysed.sum()) - too_long.sum())
        metrics["pii.docs_analysed"] += int(analysed.sum())
        metrics["pii.docs_with_pii"] += len(by_type_docs)
        metrics["pii.findings"] += int(counts.sum())

        reasons = np.full(n, None, dtype=object)
        details = np.full(n, None, dtype=object)
        if too_long.any():
            reasons[too_long] = "pii_too_long"
            for long_doc in np.flatnonzero(too_long):
                details[long_doc] = f"{int(lengths[long_doc])} characters > max_chars {p.max_chars}; not scanned"
        if p.action == "remove":
            for i, per_type in by_type_docs.items():
                reasons[i] = "pii_found"
                details[i] = ",".join(f"{t}={c}" for t, c in sorted(per_type.items()))

        if masked:
            rows = np.fromiter(masked, np.int64, len(masked))
            mask_array = np.zeros(n, bool)
            mask_array[rows] = True
            # replace_with_mask takes the replacements in row order.
            new_text = pc.replace_with_mask(
                text, pa.array(mask_array), pa.array([masked[i] for i in sorted(masked)], pa.string())
            )
            table = table.set_column(table.schema.get_field_index("text"), "text", new_text)
            metrics["pii.docs_masked"] += len(masked)
        table = table.append_column("pii_count", pa.array(counts, pa.int32()))
        table = table.append_column("pii_types", pa.array(types, pa.string()))
        if p.action == "flag":
            table = table.append_column("pii_spans", pa.array(spans, _SPAN_TYPE))
        kept, dropped = split_by_reason(table, reasons.tolist(), details.tolist())
        return BatchResult(kept=kept, dropped=dropped, metrics=metrics)

    def _mask(self, doc: str, found: list) -> str:
        """Each finding replaced by its own mask; every character between findings kept."""
        template = self.params.mask
        pieces = []
        at = 0
        for r in found:
            pieces.append(doc[at : r.start])
            pieces.append(template.format(entity=r.entity_type))
            at = r.end
        pieces.append(doc[at:])
        return "".join(pieces)


def _spacy_findings(nlp, view: str, chunk_chars: int, overlap: int, wanted: set[str]) -> list:
    """spaCy's PERSON / LOCATION entities in ``view``, read in overlapping chunks (spaCy
    limits the length of one text)."""
    from tamis.pii_recognizers import Finding

    out = []
    step = chunk_chars - overlap
    for start in range(0, max(len(view) - overlap, 1), step):
        for ent in nlp(view[start : start + chunk_chars]).ents:
            entity = _SPACY_LABELS.get(ent.label_)
            if entity in wanted:
                out.append(Finding(ent.start_char + start, ent.end_char + start, entity, 0.85))
    return out


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
