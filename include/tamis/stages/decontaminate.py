"""Decontamination: documents that share a word n-gram with an evaluation set.

Training data that contains a benchmark's questions or answers inflates the benchmark
(GPT-3, Brown et al. 2020, section 4; datatrove's n-gram decontamination). The evaluation
sets are files in ``eval_sets`` (a folder, one file per set, the set named by its file
name; or one file): JSON Lines or Parquet records whose ``fields`` (question, answer...)
make one item each, or plain text with one item per line. Every item's word n-grams
(``ngram`` words, 13 by default, lower-cased; an item shorter than that is one n-gram of
all its words) are hashed once per worker into a sorted array; a batch's documents are
hashed the same way (:func:`tamis.minhash.shingle_hashes`, vectorised over the whole batch)
and looked up with one binary search, so the cost does not grow with the number of sets.

A contaminated document is dropped (``decontaminate.ngram_overlap``) or, with
``action: flag``, kept with the sets it overlaps in the ``contaminated_by`` column; either
way the detail names each set with the first item matched and how many n-grams are shared.
``decontaminate.docs.<set>`` counts the documents per set.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from tamis.minhash import MinHashConfig, shingle_hashes
from tamis.stage import BatchResult, LocalPath, Stage, StageParams, split_by_reason

REASON = "decontaminate.ngram_overlap"
SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".txt")


class DecontaminateParams(StageParams):
    # A folder of evaluation sets (one file each) or a single file.
    eval_sets: LocalPath
    # Record fields whose text makes an item (those present are joined); plain text: one item per line.
    fields: list[str] = Field(default_factory=lambda: ["question", "answer", "text"])
    ngram: int = Field(default=13, ge=1, le=256)
    action: Literal["drop", "flag"] = "drop"


class Decontaminate(Stage):
    type_name = "decontaminate"
    Params = DecontaminateParams
    params: DecontaminateParams
    # Contamination is rare in a crawl: a drop rate near 1 means a set is too generic.
    default_gate = {"max_drop_rate": 0.2}

    def check_ready(self) -> None:
        files = eval_files(self.params.eval_sets)
        if not files:
            raise FileNotFoundError(
                f"decontaminate: no evaluation set ({', '.join(SUFFIXES)}) at {self.params.eval_sets}"
            )

    def dependencies(self, output_url: str) -> dict[str, str]:
        return {
            f"eval_set.{path.name}": hashlib.sha256(path.read_bytes()).hexdigest()
            for path in eval_files(self.params.eval_sets)
        }

    def setup(self) -> None:
        self._index()

    def _index(self) -> NgramIndex:
        index = self.__dict__.get("_ngram_index")
        if index is None:
            index = NgramIndex.build(self.params)
            self.__dict__["_ngram_index"] = index  # per worker; rebuilt rather than pickled
        return index

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_ngram_index"}

    def process_batch(self, table: pa.Table) -> BatchResult:
        index = self._index()
        text = pc.fill_null(table.column("text").combine_chunks(), "") if table.num_rows else pa.array([], pa.string())
        matches = index.lookup(text)
        n = table.num_rows
        details = np.full(n, None, dtype=object)
        sets_of = np.full(n, None, dtype=object)
        metrics: Counter = Counter()
        for doc, found in matches.items():
            details[doc] = "; ".join(
                f"{index.set_names[s]} item {item} ({count} shared {self.params.ngram}-grams)"
                for s, (item, count) in sorted(found.items())
            )
            sets_of[doc] = ",".join(index.set_names[s] for s in sorted(found))
            for s in found:
                metrics[f"decontaminate.docs.{index.set_names[s]}"] += 1
        if self.params.action == "flag":
            kept = table.append_column("contaminated_by", pa.array(sets_of, pa.string()))
            metrics["decontaminate.flagged"] += len(matches)
            return BatchResult(kept=kept, metrics=metrics)
        reasons = np.where(np.equal(details, None), None, REASON)  # type: ignore[call-overload]  # numpy's stubs take no None operand
        kept, dropped = split_by_reason(table, reasons.tolist(), details.tolist())
        return BatchResult(kept=kept, dropped=dropped, metrics=metrics)


def eval_files(path: str) -> list[Path]:
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_file() and p.name.endswith(SUFFIXES) and not p.name.startswith((".", "_"))
    )


def set_name(path: Path) -> str:
    name = path.name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_items(path: Path, fields: list[str]) -> list[str]:
    """The items of one evaluation set file, as text."""
    name = path.name
    if name.endswith(".txt"):
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if name.endswith(".parquet"):
        rows = pq.read_table(path).to_pylist()
    else:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    items = []
    for row in rows:
        parts = [_as_text(row.get(f)) for f in fields if row.get(f) is not None]
        if parts:
            items.append("\n".join(parts))
    if rows and not items:
        raise ValueError(f"decontaminate: {path}: no record has any of the fields {fields}")
    return items


def _as_text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):  # multiple-choice options
        return "\n".join(_as_text(v) for v in value)
    return str(value)


class NgramIndex:
    """Sorted n-gram hashes of every item of every set, with the set and item of each."""

    def __init__(self, hashes: np.ndarray, set_of: np.ndarray, item_of: np.ndarray, set_names: list[str], ngram: int):
        self.hashes, self.set_of, self.item_of = hashes, set_of, item_of
        self.set_names = set_names
        # A presence table on the low bits: most document n-grams are ruled out by one
        # lookup, and only the few that pass are binary-searched.
        self.mask = np.uint64(max(1 << 20, 1 << int(16 * max(len(hashes), 1)).bit_length()) - 1)
        self.present = np.zeros(int(self.mask) + 1, bool)
        self.present[(hashes & self.mask).astype(np.int64)] = True
        self.config = MinHashConfig(shingle="word", ngram=ngram, lowercase=True)

    @classmethod
    def build(cls, params: DecontaminateParams) -> NgramIndex:
        config = MinHashConfig(shingle="word", ngram=params.ngram, lowercase=True)
        hashes, set_of, item_of, names = [], [], [], []
        for k, path in enumerate(eval_files(params.eval_sets)):
            items = read_items(path, params.fields)
            names.append(set_name(path))
            if not items:
                continue
            flat, per_item = shingle_hashes(pa.array(items, pa.string()), config)
            hashes.append(flat)
            set_of.append(np.full(len(flat), k, np.int32))
            item_of.append(np.repeat(np.arange(len(items), dtype=np.int64), per_item))
        if not hashes:
            return cls(np.empty(0, np.uint64), np.empty(0, np.int32), np.empty(0, np.int64), names, params.ngram)
        hashes_all = np.concatenate(hashes)
        order = np.argsort(hashes_all, kind="stable")
        return cls(
            hashes_all[order], np.concatenate(set_of)[order], np.concatenate(item_of)[order], names, params.ngram
        )

    def lookup(self, text: pa.Array) -> dict[int, dict[int, tuple[int, int]]]:
        """document -> {set: (first item matched, shared n-grams)} for the documents that overlap."""
        if len(text) == 0 or len(self.hashes) == 0:
            return {}
        flat, per_doc = shingle_hashes(text, self.config)
        doc = np.repeat(np.arange(len(text)), per_doc)
        candidates = np.flatnonzero(self.present[(flat & self.mask).astype(np.int64)])
        pos = np.minimum(np.searchsorted(self.hashes, flat[candidates]), len(self.hashes) - 1)
        found = self.hashes[pos] == flat[candidates]
        if not found.any():
            return {}
        hit, pos = candidates[found], pos[found]
        doc, flat = doc[hit], flat[hit]
        out: dict[int, dict[int, tuple[int, int]]] = {}
        for d, s, item in zip(doc.tolist(), self.set_of[pos].tolist(), self.item_of[pos].tolist()):
            found = out.setdefault(d, {})
            first, count = found.get(s, (item, 0))
            found[s] = (min(first, item), count + 1)
        return out
