"""MinHash + LSH near-duplicate detection, shared by the near_dedup stage and its Spark job.

The pipeline of one batch of documents is fully vectorised:

1. shingles: the UTF-8 bytes of a whole Arrow string array are hashed at once. A
   polynomial prefix sum over the bytes (mod 2^64) gives the hash of any byte span in
   O(1), so word tokens and character n-grams (spans between code-point starts) cost a
   few numpy passes per byte; word n-grams combine token hashes.
2. signatures: rensa (Rust) turns the flat shingle hashes into an (n, num_perm) uint32
   MinHash matrix.
3. LSH: each band of ``rows`` signature values is hashed to one uint64 key.
4. candidates: documents sharing a band key are linked to the first member of the
   bucket and to their predecessor (members ordered by id), optionally verified by the
   signature-estimated Jaccard, and joined into clusters with connected components.
5. survivors: a deterministic rule (``first``, ``longest``, ``highest_quality``) picks
   one document per cluster; the others are near duplicates of it.

The same functions run locally and inside Spark executors, so both paths give the same
clusters for the same input and parameters.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import rensa

# Bumped whenever signatures or band keys would change for the same text and settings:
# a persisted index built by another version is refused rather than silently mismatched.
SIGNATURE_VERSION = f"tamis-minhash-1/rensa-{rensa.RMinHash.ALGORITHM_VERSION}"

Shingle = Literal["word", "char"]
KeepRule = Literal["first", "longest", "highest_quality"]

_U64 = np.uint64
_Q = _U64(0x9E3779B97F4A7C15)  # odd, so it is invertible mod 2^64
_Q_INV = _U64(pow(0x9E3779B97F4A7C15, -1, 1 << 64))
_LEN_MIX = _U64(0xD6E8FEB86659FD93)
_BAND_MIX = _U64(0xA0761D6478BD642F)
# Multipliers that combine the hashes of n consecutive tokens (or r signature values).
_COMBINE = np.random.default_rng(20261123).integers(1, 1 << 63, size=256, dtype=np.uint64) | _U64(1)
# Bytes that belong to a word: ASCII letters, digits and '_', and every non-ASCII byte
# (UTF-8 letters of other scripts); everything else separates words.
_WORD_BYTE = np.zeros(256, dtype=bool)
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
    _WORD_BYTE[_c] = True
_WORD_BYTE[0x80:] = True
# Words are case-folded by an ASCII table lookup on their bytes: a full Unicode lowering
# pass would cost more than the rest of the hashing (the char path does fold all of Unicode).
_LOWER = np.arange(256, dtype=np.uint8)
_LOWER[ord("A"): ord("Z") + 1] += 32
EMPTY_SLOT = np.uint32(0xFFFFFFFF)
# Text is hashed in chunks of about this many bytes (whole documents), bounding memory.
CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class MinHashConfig:
    """Everything that determines a signature and its band keys."""

    shingle: Shingle = "word"
    ngram: int = 5
    num_perm: int = 128
    bands: int = 9
    rows: int = 13
    seed: int = 42
    lowercase: bool = True

    def __post_init__(self):
        if self.ngram < 1 or self.ngram > len(_COMBINE):
            raise ValueError(f"ngram must be in 1..{len(_COMBINE)}, got {self.ngram}")
        if self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows must be <= num_perm: {self.bands}*{self.rows} > {self.num_perm}")

    def fingerprint(self) -> dict:
        """What an index must match to be reused."""
        return {"version": SIGNATURE_VERSION, "shingle": self.shingle, "ngram": self.ngram, "num_perm": self.num_perm,
                "bands": self.bands, "rows": self.rows, "seed": self.seed, "lowercase": self.lowercase}


# --------------------------------------------------------------------------- LSH parameters

def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false-positive + false-negative probability,
    the same search as datasketch's MinHashLSH."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    return _optimal_bands(round(threshold, 6), num_perm, fp_weight, fn_weight)


@lru_cache(maxsize=64)
def _optimal_bands(threshold: float, num_perm: int, fp_weight: float, fn_weight: float) -> tuple[int, int]:
    from scipy.integrate import quad

    best, best_error = (1, 1), math.inf
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = quad(lambda s: 1 - (1 - s ** r) ** b, 0.0, threshold)[0]
            fn = quad(lambda s: 1 - (1 - (1 - s ** r) ** b), threshold, 1.0)[0]
            error = fp * fp_weight + fn * fn_weight
            if error < best_error:
                best, best_error = (b, r), error
    return best


# --------------------------------------------------------------------------- hashing

def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the weak low bits of a polynomial hash (wraps mod 2^64)."""
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


class _Powers:
    """Q^k and Q^-k mod 2^64, grown on demand and kept per process."""

    pos = np.ones(1, dtype=np.uint64)
    neg = np.ones(1, dtype=np.uint64)

    @classmethod
    def get(cls, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(cls.pos) < n:
            size = max(n, 2 * len(cls.pos))
            cls.pos = np.cumprod(np.r_[_U64(1), np.full(size - 1, _Q, dtype=np.uint64)], dtype=np.uint64)
            cls.neg = np.cumprod(np.r_[_U64(1), np.full(size - 1, _Q_INV, dtype=np.uint64)], dtype=np.uint64)
        return cls.pos[:n], cls.neg[:n]


def _span_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Hash of each byte span data[starts[i]:ends[i]], from one prefix sum over the bytes."""
    pos, neg = _Powers.get(len(data))
    prefix = np.empty(len(data) + 1, dtype=np.uint64)
    prefix[0] = 0
    np.cumsum(data.astype(np.uint64) * pos, out=prefix[1:], dtype=np.uint64)
    h = (prefix[ends] - prefix[starts]) * neg[starts]
    return _mix(h ^ ((ends - starts).astype(np.uint64) * _LEN_MIX))


def _string_buffers(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets) of a string array, offsets rebased to the first byte."""
    if not pa.types.is_large_binary(texts.type):
        texts = texts.cast(pa.large_binary())
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[texts.offset: texts.offset + len(texts) + 1]
    data_buffer = texts.buffers()[2]
    base = int(offsets[0])
    if data_buffer is None or offsets[-1] == base:
        return np.empty(0, dtype=np.uint8), np.zeros(len(texts) + 1, dtype=np.int64)
    data = np.frombuffer(data_buffer, dtype=np.uint8)[base: int(offsets[-1])]
    return data, offsets - base


def _normalise(texts: pa.Array, config: MinHashConfig) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    texts = pc.fill_null(texts, "")
    if config.shingle == "word":
        return texts  # words are case-folded byte-wise while they are cut out
    if config.lowercase:
        texts = pc.utf8_lower(texts)
    if config.shingle == "char":
        # Character shingles ignore how text is wrapped or indented.
        texts = pc.utf8_trim_whitespace(pc.replace_substring_regex(texts, r"\s+", " "))
    return texts


def shingle_hashes(texts: pa.Array, config: MinHashConfig) -> tuple[np.ndarray, np.ndarray]:
    """Flat uint64 shingle hashes of every document, in document order, and the number of
    shingles per document. A non-empty document shorter than ``ngram`` yields one shingle
    (all of it); a document without any token yields none."""
    data, offsets = _string_buffers(_normalise(texts, config))
    n_docs = len(offsets) - 1
    if config.shingle == "word":
        return _word_shingles(data, offsets, n_docs, config.ngram, config.lowercase)
    return _char_shingles(data, offsets, n_docs, config.ngram)


def _doc_of(positions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return np.searchsorted(offsets, positions, side="right") - 1


def _word_shingles(data, offsets, n_docs, n, lowercase: bool) -> tuple[np.ndarray, np.ndarray]:
    word = _WORD_BYTE[data]
    edges = np.diff(word.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    # A word never spans two documents: cut where one document ends and the next begins
    # inside a run of word bytes.
    inner = np.unique(offsets[1:-1])  # empty documents repeat an offset
    inner = inner[(inner > 0) & (inner < len(data))]
    cuts = inner[word[inner] & word[inner - 1]]
    if len(cuts):
        starts = np.insert(starts, np.searchsorted(starts, cuts), cuts)  # both sorted: a merge, not a sort
        ends = np.insert(ends, np.searchsorted(ends, cuts), cuts)
    # Hash each distinct word once: Arrow's hash table finds them, numpy hashes the few.
    word_offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(ends - starts, out=word_offsets[1:])
    word_bytes = _LOWER[data[word]] if lowercase else data[word]
    words = pa.Array.from_buffers(pa.large_binary(), len(starts), [None, pa.py_buffer(word_offsets), pa.py_buffer(word_bytes)])
    encoded = pc.dictionary_encode(words)
    vocab_data, vocab_offsets = _string_buffers(encoded.dictionary)
    vocab_hashes = _span_hashes(vocab_data, vocab_offsets[:-1], vocab_offsets[1:])
    tokens = vocab_hashes[encoded.indices.to_numpy(zero_copy_only=False)]
    token_doc = _doc_of(starts, offsets)
    return _ngrams_of_units(tokens, token_doc, n_docs, n)


def _ngrams_of_units(units: np.ndarray, unit_doc: np.ndarray, n_docs: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingles of n consecutive unit hashes within each document."""
    units_per_doc = np.bincount(unit_doc, minlength=n_docs)
    if n == 1:
        return units, units_per_doc
    m = len(units)
    full = max(m - n + 1, 0)
    acc = np.zeros(full, dtype=np.uint64)
    for j in range(n):
        acc += units[j: j + full] * _COMBINE[j]
    valid = unit_doc[:full] == unit_doc[n - 1: n - 1 + full] if full else np.zeros(0, dtype=bool)
    shingles = _mix(acc[valid])
    shingle_doc = unit_doc[:full][valid]
    short_docs = np.flatnonzero((units_per_doc > 0) & (units_per_doc < n))
    if len(short_docs):
        first_unit = np.concatenate([[0], np.cumsum(units_per_doc)[:-1]])
        is_short = np.zeros(n_docs, dtype=bool)
        is_short[short_docs] = True
        idx = np.flatnonzero(is_short[unit_doc])
        position = idx - first_unit[unit_doc[idx]]
        weighted = units[idx] * _COMBINE[position]
        run_starts = first_unit[short_docs]
        run_starts_in_idx = np.searchsorted(idx, run_starts)
        whole = _mix(np.add.reduceat(weighted, run_starts_in_idx).astype(np.uint64))
        shingles = np.concatenate([shingles, whole])
        shingle_doc = np.concatenate([shingle_doc, short_docs])
        order = np.argsort(shingle_doc, kind="stable")
        shingles, shingle_doc = shingles[order], shingle_doc[order]
    return shingles, np.bincount(shingle_doc, minlength=n_docs)


def _char_shingles(data, offsets, n_docs, n) -> tuple[np.ndarray, np.ndarray]:
    # Code points start at every byte that is not a UTF-8 continuation byte (10xxxxxx).
    cp = np.flatnonzero((data & 0xC0) != 0x80)
    cp_doc = _doc_of(cp, offsets)
    chars_per_doc = np.bincount(cp_doc, minlength=n_docs)
    full = max(len(cp) - n + 1, 0)
    bounds = np.append(cp, len(data))
    valid = cp_doc[:full] == cp_doc[n - 1: n - 1 + full] if full else np.zeros(0, dtype=bool)
    starts = cp[:full][valid]
    ends = bounds[n: n + full][valid]
    shingle_doc = cp_doc[:full][valid]
    short_docs = np.flatnonzero((chars_per_doc > 0) & (chars_per_doc < n))
    if len(short_docs):
        starts = np.concatenate([starts, offsets[short_docs]])
        ends = np.concatenate([ends, offsets[short_docs + 1]])
        shingle_doc = np.concatenate([shingle_doc, short_docs])
        order = np.argsort(shingle_doc, kind="stable")
        starts, ends, shingle_doc = starts[order], ends[order], shingle_doc[order]
    return _span_hashes(data, starts, ends), np.bincount(shingle_doc, minlength=n_docs)


# --------------------------------------------------------------------------- signatures

def _chunks(texts: pa.Array, chunk_bytes: int):
    """Slices of whole documents holding about ``chunk_bytes`` of text each."""
    if len(texts) == 0:
        return
    lengths = pc.fill_null(pc.binary_length(texts), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    ends = np.cumsum(lengths)
    start = 0
    while start < len(texts):
        limit = (ends[start - 1] if start else 0) + chunk_bytes
        stop = max(int(np.searchsorted(ends, limit, side="right")), start + 1)
        yield start, texts.slice(start, stop - start)
        start = stop


def signatures(texts: pa.Array | pa.ChunkedArray, config: MinHashConfig) -> tuple[np.ndarray, np.ndarray]:
    """(n, num_perm) uint32 MinHash signatures and the shingle count of each document.
    A document without shingles gets an all-empty signature and must not be banded."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks else pa.array([], type=pa.string())
    sig = np.empty((len(texts), config.num_perm), dtype=np.uint32)
    counts = np.zeros(len(texts), dtype=np.int64)
    for start, chunk in _chunks(texts, CHUNK_BYTES):
        hashes, per_doc = shingle_hashes(chunk, config)
        row_offsets = np.concatenate([[0], np.cumsum(per_doc)]).astype(np.uint64)
        matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(hashes, row_offsets, config.num_perm, config.seed)
        rows = matrix.to_rows()
        sig[start: start + len(chunk)] = np.fromiter(
            itertools.chain.from_iterable(rows), dtype=np.uint32, count=len(chunk) * config.num_perm
        ).reshape(len(chunk), config.num_perm)
        counts[start: start + len(chunk)] = per_doc
    return sig, counts


def band_keys(sig: np.ndarray, config: MinHashConfig) -> np.ndarray:
    """(n, bands) uint64: one key per band of ``rows`` signature values."""
    b, r = config.bands, config.rows
    blocks = sig[:, : b * r].reshape(len(sig), b, r)
    acc = np.zeros((len(sig), b), dtype=np.uint64)
    for j in range(r):
        acc += blocks[:, :, j].astype(np.uint64) * _COMBINE[j]
    acc += np.arange(b, dtype=np.uint64) * _BAND_MIX
    return _mix(acc)


def similarity(sig_a: np.ndarray, sig_b: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Signature-estimated Jaccard of row pairs (sig_a[i], sig_b[i])."""
    out = np.empty(len(sig_a), dtype=np.float32)
    for s in range(0, len(sig_a), chunk):
        out[s: s + chunk] = (sig_a[s: s + chunk] == sig_b[s: s + chunk]).mean(axis=1)
    return out


# --------------------------------------------------------------------------- clusters

def candidate_edges(keys: np.ndarray, order: np.ndarray, active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unique candidate pairs (a, b), a < b as document indices.

    Within every LSH bucket, members sorted by ``order`` (the rank of their id) are linked
    to the bucket's first member and to their predecessor: enough for connected components
    and identical to what the Spark job builds with window functions.
    """
    n = len(keys)
    idx = np.arange(n) if active is None else np.flatnonzero(active)
    a_parts, b_parts = [], []
    for band in range(keys.shape[1]):
        k = keys[idx, band]
        sorted_ = idx[np.lexsort((order[idx], k))]
        ks = keys[sorted_, band]
        if len(ks) < 2:
            continue
        new_group = np.empty(len(ks), dtype=bool)
        new_group[0] = True
        new_group[1:] = ks[1:] != ks[:-1]
        if new_group.all():
            continue
        group_first = sorted_[np.maximum.accumulate(np.where(new_group, np.arange(len(ks)), 0))]
        member = ~new_group
        a_parts += [group_first[member], sorted_[:-1][member[1:]]]
        b_parts += [sorted_[member], sorted_[1:][member[1:]]]
    if not a_parts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    a = np.concatenate(a_parts).astype(np.int64)
    b = np.concatenate(b_parts).astype(np.int64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    codes = np.unique(lo * n + hi)
    return codes // n, codes % n


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component label of each of n nodes given undirected edges (a, b)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(a) == 0:
        return np.arange(n)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def survivors(labels: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """For every document, the index of the best-priority (lowest) member of its cluster."""
    order = np.lexsort((priority, labels))
    first = np.empty(len(order), dtype=bool)
    if len(order):
        first[0] = True
        first[1:] = labels[order][1:] != labels[order][:-1]
    best = np.empty(labels.max() + 1 if len(labels) else 0, dtype=np.int64)
    best[labels[order][first]] = order[first]
    return best[labels]


def priority_rank(meta: pa.Table, keep: KeepRule, quality_column: str | None = None) -> np.ndarray:
    """Rank of every document under the survivor rule (0 = the best survivor).

    ``meta`` has columns ``tier`` (0 for already-indexed documents, which always win),
    ``id``, ``date``, ``length`` and, for ``highest_quality``, ``quality``.
    Ties always fall back to the smallest (date, id), so the rule is deterministic.
    """
    keys = [("tier", "ascending", "at_end")]
    if keep == "longest":
        keys.append(("length", "descending", "at_end"))
    elif keep == "highest_quality":
        keys.append(("quality", "descending", "at_end"))
    keys += [("date", "ascending", "at_end"), ("id", "ascending", "at_end")]
    order = pc.sort_indices(meta, sort_keys=keys).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def id_rank(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    order = pc.sort_indices(ids).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


@dataclass
class Clusters:
    """The outcome of clustering n documents."""

    survivor: np.ndarray  # index of each document's survivor (itself when kept)
    labels: np.ndarray  # component label of each document
    candidate_pairs: int
    verified_pairs: int

    @property
    def duplicate(self) -> np.ndarray:
        return self.survivor != np.arange(len(self.survivor))


def cluster(sig: np.ndarray, keys: np.ndarray, active: np.ndarray, id_order: np.ndarray, priority: np.ndarray,
            threshold: float | None) -> Clusters:
    """Candidate pairs -> optional verification (estimated Jaccard >= threshold) ->
    connected components -> one survivor per component."""
    a, b = candidate_edges(keys, id_order, active)
    candidates = len(a)
    if threshold is not None and len(a):
        keep = similarity(sig[a], sig[b]) >= np.float32(threshold) - np.float32(1e-6)
        a, b = a[keep], b[keep]
    labels = components(len(sig), a, b)
    return Clusters(survivors(labels, priority), labels, candidates, len(a))


def cluster_table(ids: pa.Array, sig: np.ndarray, clusters: Clusters, sample_pairs: int) -> pa.Table:
    """One row per duplicate cluster: survivor id, size, member ids, and a sample of
    (survivor, member) pairs with their estimated similarity."""
    dup = np.flatnonzero(clusters.duplicate)
    schema = pa.schema([
        ("survivor_id", pa.string()), ("size", pa.int64()), ("duplicate_ids", pa.list_(pa.string())),
        ("sample_pairs", pa.list_(pa.struct([("id_a", pa.string()), ("id_b", pa.string()), ("similarity", pa.float32())]))),
    ])
    if len(dup) == 0:
        return schema.empty_table()
    surv = clusters.survivor[dup]
    order = np.lexsort((dup, surv))
    dup, surv = dup[order], surv[order]
    sims = similarity(sig[surv], sig[dup])
    heads = np.flatnonzero(np.r_[True, surv[1:] != surv[:-1]])
    sizes = np.diff(np.r_[heads, len(dup)])
    position = np.arange(len(dup)) - np.repeat(heads, sizes)
    ids = pa.array(ids) if not isinstance(ids, (pa.Array, pa.ChunkedArray)) else ids
    member_ids = pc.take(ids, pa.array(dup))
    survivor_ids = pc.take(ids, pa.array(surv[heads]))
    pair_mask = position < sample_pairs
    pairs = pa.StructArray.from_arrays(
        [pc.take(ids, pa.array(surv[pair_mask])), pc.filter(member_ids, pa.array(pair_mask)), pa.array(sims[pair_mask])],
        names=["id_a", "id_b", "similarity"],
    )
    pair_heads = np.r_[0, np.cumsum(np.minimum(sizes, sample_pairs))]
    member_heads = np.r_[heads, len(dup)]
    if isinstance(member_ids, pa.ChunkedArray):
        member_ids = member_ids.combine_chunks()
    return pa.table({
        "survivor_id": survivor_ids,
        "size": pa.array(sizes + 1, pa.int64()),
        "duplicate_ids": pa.ListArray.from_arrays(pa.array(member_heads, pa.int32()), member_ids),
        "sample_pairs": pa.ListArray.from_arrays(pa.array(pair_heads, pa.int32()), pairs),
    }, schema=schema)
