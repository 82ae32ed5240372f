"""Per-document text statistics computed over whole Arrow columns.

A column of documents is split into a flat column of pieces (words, lines, paragraphs)
plus the index of the document each piece came from; per-document figures are then
numpy reductions over that index (``bincount``, ``unique``). No Python loop runs per
document or per piece.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Sentence-final punctuation across scripts (Latin, CJK, Arabic, Devanagari, Ethiopic, Burmese).
TERMINAL_PUNCTUATION = ".!?\"'”’»)。！？．…؟।۔።။"


@dataclass
class Pieces:
    """Flattened pieces of a batch of documents."""

    values: pa.Array  # the pieces, flat
    doc: np.ndarray  # int64: the document each piece belongs to
    n_docs: int

    def per_doc_sum(self, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(self.doc, weights=weights, minlength=self.n_docs)

    def per_doc_count(self, mask: np.ndarray) -> np.ndarray:
        return np.bincount(self.doc[mask], minlength=self.n_docs)

    def per_doc_max(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n_docs, dtype=values.dtype)
        np.maximum.at(out, self.doc, values)
        return out

    def filter(self, mask: np.ndarray) -> "Pieces":
        return Pieces(self.values.filter(pa.array(mask)), self.doc[mask], self.n_docs)


def split(lists: pa.Array, n_docs: int) -> Pieces:
    """Flatten a list<string> column (one list per document) into :class:`Pieces`."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    values = pc.list_flatten(lists)
    doc = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    return Pieces(values, doc, n_docs)


def lengths(values: pa.Array) -> np.ndarray:
    return pc.utf8_length(values).to_numpy(zero_copy_only=False).astype(np.int64)


def mask(values: pa.Array) -> np.ndarray:
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False)


def counts(values: pa.Array) -> np.ndarray:
    return pc.fill_null(values, 0).to_numpy(zero_copy_only=False).astype(np.int64)


def codes(values: pa.Array) -> np.ndarray:
    """Integer ids such that equal strings get equal ids (within this call)."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    encoded = pc.dictionary_encode(values)
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def repeated(pieces: Pieces, ids: np.ndarray | None = None) -> np.ndarray:
    """True for each piece equal to an earlier piece of the same document."""
    ids = codes(pieces.values) if ids is None else ids
    out = np.ones(len(ids), dtype=bool)
    if len(ids) == 0:
        return out
    key = pieces.doc * (int(ids.max()) + 1) + ids
    _, first = np.unique(key, return_index=True)
    out[first] = False
    return out


def ngram_fractions(
    words: Pieces, word_ids: np.ndarray, word_chars: np.ndarray, top_ns: list[int], dup_ns: list[int]
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Gopher repetition signals, as fractions of each document's word characters.

    top[n]: characters covered by the most frequent n-gram (its length times its count).
    dup[n]: characters of words inside a repeated occurrence of any n-gram.
    """
    n_words = len(word_ids)
    total = np.maximum(words.per_doc_sum(word_chars), 1)
    cumulative = np.concatenate([[0], np.cumsum(word_chars)])
    top: dict[int, np.ndarray] = {}
    dup: dict[int, np.ndarray] = {}
    for n in sorted(set(top_ns) | set(dup_ns)):
        m = n_words - n + 1
        if m <= 0:
            top[n] = np.zeros(words.n_docs)
            dup[n] = np.zeros(words.n_docs)
            continue
        starts = np.flatnonzero(words.doc[:m] == words.doc[n - 1 :])
        # A polynomial hash of the n word ids, salted with the document (uint64 wraps).
        key = words.doc[starts].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        for k in range(n):
            key = key * np.uint64(1_000_003) + word_ids[starts + k].astype(np.uint64)
        _, first, count = np.unique(key, return_index=True, return_counts=True)
        if n in top_ns:
            ngram_chars = cumulative[starts[first] + n] - cumulative[starts[first]]
            top[n] = np.zeros(words.n_docs)
            np.maximum.at(top[n], words.doc[starts[first]], (count * ngram_chars).astype(np.float64))
            top[n] = top[n] / total
        if n in dup_ns:
            again = np.ones(len(starts), dtype=bool)
            again[first] = False
            cover = np.zeros(n_words + 1, dtype=np.int64)
            np.add.at(cover, starts[again], 1)
            np.add.at(cover, starts[again] + n, -1)
            covered = np.cumsum(cover[:-1]) > 0
            dup[n] = words.per_doc_sum(word_chars * covered) / total
    return top, dup
