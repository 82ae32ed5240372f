"""Content safety: a score per category (hate, violence, sexual, self-harm) for every document.

Two scorers, both offline; a category's score is the larger of the two:

* term lists, C4's "bad words" rule made per category and graded: the package's short
  lists (``tamis/data/safety/<category>.txt``, unless ``default_lists`` is off) and a
  pipeline's own (``lists``: a folder of ``<category>.txt``), matched as whole words,
  case-insensitively. A list's score grows with the density of matches,
  ``1 - exp(-matches * 100 / max(words, 100))``: one match in a short message scores 0.63,
  two in a 5,000-word article 0.04, so a history page that names a massacre is not a
  violent text;
* a fastText model (``model``) trained with ``tamis train-quality --loss ova`` on
  documents labelled with their categories (``__label__<category>``): the probability of
  each category's label.

Each category's score is kept as a column ``safety_<category>``. A document whose score
reaches the category's threshold (``threshold``, or ``thresholds[category]``) is dropped
with the reason ``safety.<category>`` (the first such category in ``categories`` order,
every score in the detail), or only counted with ``action: flag``. ``safety.hits.<category>``
counts every category a document reaches.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tamis.stage import BatchResult, LocalPath, Stage, StageParams, split_by_reason

Category = Literal["hate", "violence", "sexual", "self_harm"]
CATEGORIES: tuple[Category, ...] = ("hate", "violence", "sexual", "self_harm")
DEFAULT_LISTS = Path(__file__).resolve().parent.parent / "data" / "safety"


class SafetyParams(StageParams):
    categories: list[Category] = Field(default_factory=lambda: list(CATEGORIES))
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    thresholds: dict[Category, float] = Field(default_factory=dict)  # per category, over threshold
    action: Literal["drop", "flag"] = "drop"
    default_lists: bool = True  # the package's term lists (tamis/data/safety)
    lists: LocalPath | None = None  # a folder of <category>.txt term lists of the pipeline's own
    model: LocalPath | None = None  # a fastText one-vs-all model with __label__<category> labels
    max_chars: int = Field(default=10_000, ge=100)  # the document's head the model reads


class ContentSafety(Stage):
    type_name = "safety"
    Params = SafetyParams
    params: SafetyParams
    default_gate = {"max_drop_rate": 0.3}

    def _list_files(self) -> dict[str, list[Path]]:
        folders = ([DEFAULT_LISTS] if self.params.default_lists else []) + (
            [Path(self.params.lists)] if self.params.lists else []
        )
        return {c: [f / f"{c}.txt" for f in folders if (f / f"{c}.txt").is_file()] for c in self.params.categories}

    def check_ready(self) -> None:
        if self.params.lists and not Path(self.params.lists).is_dir():
            raise FileNotFoundError(f"safety: lists folder {self.params.lists} does not exist")
        if self.params.model:
            if not Path(self.params.model).is_file():
                raise FileNotFoundError(f"safety: no model file at {self.params.model}")
            labels = set(_load_model(self.params.model).get_labels())
            missing = [c for c in self.params.categories if f"__label__{c}" not in labels]
            if missing:
                raise ValueError(
                    f"safety: the model at {self.params.model} has no label for {missing} (labels: {sorted(labels)})"
                )
        uncovered = [c for c, files in self._list_files().items() if not files] if not self.params.model else []
        if uncovered:
            raise ValueError(f"safety: nothing scores {uncovered}: no term list and no model")

    def dependencies(self, output_url: str) -> dict[str, str]:
        deps = {
            f"safety_list.{p.parent.name}.{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
            for files in self._list_files().values()
            for p in files
        }
        if self.params.model and Path(self.params.model).is_file():
            deps["safety_model"] = hashlib.sha256(Path(self.params.model).read_bytes()).hexdigest()
        return deps

    def setup(self) -> None:
        if self.params.model:
            _load_model(self.params.model)

    def _patterns(self) -> dict[str, str | None]:
        patterns = self.__dict__.get("_term_patterns")
        if patterns is None:
            patterns = {}
            for category, files in self._list_files().items():
                terms = sorted({t.lower() for p in files for t in _read_terms(p)}, key=lambda t: (-len(t), t))
                patterns[category] = r"(?i)\b(?:" + "|".join(re.escape(t) for t in terms) + r")\b" if terms else None
            self.__dict__["_term_patterns"] = patterns
        return patterns

    def scores(self, text: pa.Array) -> dict[str, np.ndarray]:
        """Each category's score of each document."""
        n = len(text)
        words = pc.list_value_length(pc.utf8_split_whitespace(text)).to_numpy(zero_copy_only=False).astype(np.float64)
        out = {}
        for category, pattern in self._patterns().items():
            score = np.zeros(n)
            if pattern is not None and n:
                matches = pc.count_substring_regex(text, pattern).to_numpy(zero_copy_only=False).astype(np.float64)
                score = 1.0 - np.exp(-matches * 100.0 / np.maximum(words, 100.0))
            out[category] = score
        if self.params.model and n:
            from tamis.quality_model import prepare

            model = _load_model(self.params.model)
            labels, probs = model.predict(prepare(text, self.params.max_chars), k=-1, threshold=0.0)
            for category in self.params.categories:
                label = f"__label__{category}"
                learned = np.array([dict(zip(ls, ps)).get(label, 0.0) for ls, ps in zip(labels, probs)])
                out[category] = np.maximum(out[category], learned)
        return out

    def process_batch(self, table: pa.Table) -> BatchResult:
        n = table.num_rows
        text = pc.fill_null(table.column("text").combine_chunks(), "") if n else pa.array([], pa.string())
        scores = self.scores(text)
        reasons = np.full(n, None, dtype=object)
        metrics: Counter = Counter()
        for category in self.params.categories:
            hit = scores[category] >= self.params.thresholds.get(category, self.params.threshold)
            metrics[f"safety.hits.{category}"] += int(hit.sum())
            reasons[hit & np.equal(reasons, None)] = f"safety.{category}"  # type: ignore[call-overload]  # numpy's stubs take no None operand
            table = table.append_column(f"safety_{category}", pa.array(np.round(scores[category], 4), pa.float32()))
        if self.params.action == "flag":
            metrics["safety.flagged"] += int(np.not_equal(reasons, None).sum())  # type: ignore[call-overload]  # numpy's stubs take no None operand
            return BatchResult(kept=table, metrics=metrics)
        details = np.full(n, None, dtype=object)
        for i in np.flatnonzero(np.not_equal(reasons, None)):  # type: ignore[call-overload]  # numpy's stubs take no None operand
            details[i] = ", ".join(f"{c} {scores[c][i]:.3f}" for c in self.params.categories)
        kept, dropped = split_by_reason(table, reasons.tolist(), details.tolist())
        return BatchResult(kept=kept, dropped=dropped, metrics=metrics)


def _read_terms(path: Path) -> list[str]:
    return [
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


@lru_cache(maxsize=2)
def _load_model(path: str):
    """The model, once per process (a module-level cache: never pickled with the stage)."""
    import fasttext

    fasttext.FastText.eprint = lambda *args, **kwargs: None  # its load_model warning is noise
    return fasttext.load_model(path)
