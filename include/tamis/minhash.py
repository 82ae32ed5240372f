"""MinHash + LSH near-duplicate detection, shared by the near_dedup stage and its Spark job.

The pipeline of one batch of documents is fully vectorised:

1. shingles: the UTF-8 bytes of a whole Arrow string array are hashed at once. A
   polynomial prefix sum over the bytes (mod 2^64) gives the hash of any byte span in
   O(1), so word tokens and character n-grams (spans between code-point starts) cost a
   few numpy passes per byte; word n-grams combine token hashes.
2. signatures: rensa (Rust) turns the flat shingle hashes into an (n, num_perm) uint32
   MinHash matrix.
3. LSH: each band of ``rows`` signature values is hashed to one uint64 key. Bands and
   rows are chosen for recall at the threshold (``bands_for_recall``): a pair whose
   Jaccard is exactly the threshold becomes a candidate with a set probability.
4. candidates: documents sharing a band key are linked to the first member of the
   bucket and to their predecessor (members ordered by id).
5. verification: the exact Jaccard of each candidate pair on the documents' shingle sets
   (``shingle_sets``, ``jaccard``), or the signature estimate; pairs below the threshold
   are dropped, the rest joined into clusters with connected components.
6. survivors: a deterministic rule (``first``, ``longest``, ``highest_quality``) picks
   one document per cluster; the others are near duplicates of it.

The same functions run locally and inside Spark executors, so both paths give the same
clusters for the same input and parameters.
"""

from __future__ import annotations

import ctypes
import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import rensa

from tamis.text_kernels import string_buffers

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
        return {
            "version": SIGNATURE_VERSION,
            "shingle": self.shingle,
            "ngram": self.ngram,
            "num_perm": self.num_perm,
            "bands": self.bands,
            "rows": self.rows,
            "seed": self.seed,
            "lowercase": self.lowercase,
        }


# --------------------------------------------------------------------------- LSH parameters


def candidate_probability(similarity, bands: int, rows: int) -> np.ndarray:
    """Probability that two documents of this Jaccard similarity share at least one band
    key: 1 - (1 - s^rows)^bands, the LSH S-curve."""
    s = np.asarray(similarity, dtype=np.float64)
    with np.errstate(divide="ignore"):  # log1p(-1) = -inf at s = 1 gives probability 1
        return -np.expm1(bands * np.log1p(-(s**rows)))  # accurate where s^rows is tiny


def bands_for_recall(threshold: float, num_perm: int, candidate_recall: float) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm that make a candidate of a pair at exactly
    ``threshold`` with probability >= ``candidate_recall`` and, among those, the fewest
    candidates below the threshold (the least area under the S-curve on [0, threshold]):
    every such candidate costs a verification and is then rejected."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if not 0.0 < candidate_recall < 1.0:
        raise ValueError(f"candidate_recall must be in (0, 1), got {candidate_recall}")
    return _bands_for_recall(round(threshold, 6), num_perm, round(candidate_recall, 6))


@lru_cache(maxsize=64)
def _bands_for_recall(threshold: float, num_perm: int, candidate_recall: float) -> tuple[int, int]:
    below = np.linspace(0.0, threshold, 1001)
    best, best_area = None, math.inf
    for rows in range(1, num_perm + 1):
        # More bands only raise the curve everywhere: the fewest that reach the recall win.
        at_threshold = threshold**rows
        if at_threshold <= 0.0:
            break
        bands = max(1, math.ceil(math.log1p(-candidate_recall) / math.log1p(-at_threshold))) if at_threshold < 1 else 1
        while bands * rows <= num_perm and candidate_probability(threshold, bands, rows) < candidate_recall:
            bands += 1  # rounding of the closed form
        if bands * rows > num_perm:
            continue
        area = float(np.trapezoid(candidate_probability(below, bands, rows), below))
        if area < best_area:
            best, best_area = (bands, rows), area
    if best is None:
        raise ValueError(
            f"no banding of {num_perm} permutations makes a candidate of a pair at Jaccard {threshold} "
            f"with probability >= {candidate_recall}: raise num_perm or lower candidate_recall"
        )
    return best


@dataclass(frozen=True)
class SCurve:
    """Where the banding puts its S-curve."""

    bands: int
    rows: int
    effective_threshold: float  # (1/bands)^(1/rows): where the curve is steepest
    points: tuple[tuple[float, float], ...]  # (Jaccard, candidate probability), J = 0.5, 0.55, ... 1.0


def s_curve(bands: int, rows: int, start: float = 0.5, step: float = 0.05) -> SCurve:
    """The candidate probability of the banding at J = start, start + step, ... 1.0."""
    grid = np.round(np.arange(start, 1.0 + step / 2, step), 4)
    probability = candidate_probability(grid, bands, rows)
    return SCurve(
        bands,
        rows,
        float((1.0 / bands) ** (1.0 / rows)),
        tuple((float(j), float(p)) for j, p in zip(grid, probability)),
    )


# --------------------------------------------------------------------------- hashing


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique by sort: numpy 2.3+ hashes integers in np.unique, tens of times slower
    than sorting them for millions of values."""
    x = np.sort(x)
    if len(x) < 2:
        return x
    keep = np.empty(len(x), dtype=bool)
    keep[0] = True
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


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
    data, offsets = string_buffers(_normalise(texts, config))
    n_docs = len(offsets) - 1
    if config.shingle == "word":
        return _word_shingles(data, offsets, n_docs, config.ngram, config.lowercase)
    return _char_shingles(data, offsets, n_docs, config.ngram)


def _doc_of(positions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Document of each of the ascending byte ``positions``: one binary search per document
    boundary, not per position."""
    per_doc = np.diff(np.searchsorted(positions, offsets))
    return np.repeat(np.arange(len(offsets) - 1), per_doc)


@lru_cache(maxsize=1)
def _word_shingler():
    from tamis.text_stats import native_function

    p, i64, u64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64
    return native_function("tn_word_shingles", [p, p, i64, i64, ctypes.c_int, u64, u64, p, p, p])


def _word_shingles(data, offsets, n_docs, n, lowercase: bool) -> tuple[np.ndarray, np.ndarray]:
    """Words and their n-grams hashed in one pass (native/shingles.c): one count pass
    sizes the output, the second fills it."""
    data = np.ascontiguousarray(data, np.uint8)
    offsets = np.ascontiguousarray(offsets, np.int64)
    counts = np.empty(n_docs, np.int64)
    shingler = _word_shingler()

    def run(out) -> int:
        return shingler(
            data.ctypes.data, offsets.ctypes.data, n_docs, n, int(lowercase), int(_Q), int(_LEN_MIX),
            _COMBINE.ctypes.data, out, counts.ctypes.data,
        )  # fmt: skip

    total = run(None)
    if total < 0:
        raise ValueError(f"an n-gram of {n} words is out of 1..{len(_COMBINE)}")
    shingles = np.empty(total, np.uint64)
    run(shingles.ctypes.data)
    return shingles, counts


def _char_shingles(data, offsets, n_docs, n) -> tuple[np.ndarray, np.ndarray]:
    # Code points start at every byte that is not a UTF-8 continuation byte (10xxxxxx).
    cp = np.flatnonzero((data & 0xC0) != 0x80)
    cp_doc = _doc_of(cp, offsets)
    chars_per_doc = np.bincount(cp_doc, minlength=n_docs)
    full = max(len(cp) - n + 1, 0)
    bounds = np.append(cp, len(data))
    valid = cp_doc[:full] == cp_doc[n - 1 : n - 1 + full] if full else np.zeros(0, dtype=bool)
    starts = cp[:full][valid]
    ends = bounds[n : n + full][valid]
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
        sig[start : start + len(chunk)] = np.fromiter(
            itertools.chain.from_iterable(rows), dtype=np.uint32, count=len(chunk) * config.num_perm
        ).reshape(len(chunk), config.num_perm)
        counts[start : start + len(chunk)] = per_doc
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
    out = np.empty(len(sig_a), dtype=np.float64)
    for s in range(0, len(sig_a), chunk):
        out[s : s + chunk] = (sig_a[s : s + chunk] == sig_b[s : s + chunk]).mean(axis=1)
    return out


def pair_similarity(sig: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Signature-estimated Jaccard of the pairs (sig[a[i]], sig[b[i]]), gathering a chunk of
    pairs at a time: never two copies of the signatures of every pair."""
    out = np.empty(len(a), dtype=np.float64)
    for s in range(0, len(a), chunk):
        out[s : s + chunk] = similarity(sig[a[s : s + chunk]], sig[b[s : s + chunk]], chunk)
    return out


# --------------------------------------------------------------------------- exact Jaccard


@dataclass
class ShingleSets:
    """The distinct shingles of each document as sorted 32-bit hashes in one flat array:
    document i owns ``values[offsets[i]:offsets[i + 1]]``.

    32 bits (the top half of the 64-bit shingle hash) halve the memory of the sets and let
    a pair index and a shingle share one uint64 sort key. Two distinct shingles of a pair
    collide with probability about union^2 / 2^33, which moves its Jaccard by about
    union / 2^33: 1e-5 for documents of 10^5 shingles.
    """

    values: np.ndarray  # uint32
    offsets: np.ndarray  # int64, n + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, idx: np.ndarray) -> ShingleSets:
        idx = np.asarray(idx, dtype=np.int64)
        sizes = self.sizes[idx]
        return ShingleSets(self.values[_ranges(self.offsets[idx], sizes)], _offsets_of(sizes))

    @classmethod
    def concat(cls, parts: list[ShingleSets]) -> ShingleSets:
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.values for p in parts]), _offsets_of(np.concatenate([p.sizes for p in parts])))

    @classmethod
    def empty(cls, n: int = 0) -> ShingleSets:
        return cls(np.empty(0, np.uint32), np.zeros(n + 1, np.int64))

    def to_arrow(self) -> pa.Array:
        """One binary value per document: its hashes as little-endian uint32."""
        data = pa.py_buffer(np.ascontiguousarray(self.values, dtype="<u4").tobytes())
        byte_offsets = self.offsets * 4
        if byte_offsets[-1] < 2**31:
            return pa.Array.from_buffers(
                pa.binary(), len(self), [None, pa.py_buffer(byte_offsets.astype(np.int32)), data]
            )
        return pa.Array.from_buffers(pa.large_binary(), len(self), [None, pa.py_buffer(byte_offsets), data])

    @classmethod
    def from_arrow(cls, column: pa.Array | pa.ChunkedArray) -> ShingleSets:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks() if column.num_chunks else pa.array([], pa.large_binary())
        data, offsets = string_buffers(pc.fill_null(column.cast(pa.large_binary()), b""))
        if offsets[-1] % 4 or np.any(offsets % 4):
            raise ValueError("shingle sets must be whole uint32 arrays")
        return cls(data.view("<u4").astype(np.uint32, copy=False), offsets // 4)


def _offsets_of(sizes: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return offsets


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(starts[i], starts[i] + lengths[i]) for all i."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    heads = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - heads, lengths) + np.arange(total, dtype=np.int64)


def shingle_sets(texts: pa.Array | pa.ChunkedArray, config: MinHashConfig) -> ShingleSets:
    """The shingle set of every document, from the same shingle hashes as its signature."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks else pa.array([], type=pa.string())
    values, sizes = [], np.zeros(len(texts), dtype=np.int64)
    for start, chunk in _chunks(texts, CHUNK_BYTES):
        hashes, per_doc = shingle_hashes(chunk, config)
        doc = np.repeat(np.arange(len(chunk), dtype=np.uint64), per_doc)
        keys = sorted_unique((doc << _U64(32)) | (hashes >> _U64(32)))  # sorted by document, then hash
        values.append((keys & _U64(0xFFFFFFFF)).astype(np.uint32))
        sizes[start : start + len(chunk)] = np.bincount((keys >> _U64(32)).astype(np.int64), minlength=len(chunk))
    return ShingleSets(np.concatenate(values) if values else np.empty(0, np.uint32), _offsets_of(sizes))


def jaccard(left: ShingleSets, right: ShingleSets, a: np.ndarray, b: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Exact Jaccard of the pairs (left[a[i]], right[b[i]]).

    Each value is tagged with its pair's index in the high 32 bits, so the smaller sets of
    all pairs form one sorted array and the larger sets another: one binary search of the
    former in the latter counts every intersection, without sorting anything. Pairs are
    taken in runs of about ``chunk`` shingles to bound memory."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    size_a, size_b = left.sizes[a], right.sizes[b]
    out = np.zeros(len(a), dtype=np.float64)
    ends = np.cumsum(size_a + size_b)
    start = 0
    while start < len(a):
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + chunk, side="right")), start + 1)
        sa, sb = size_a[start:stop], size_b[start:stop]
        a_smaller = sa <= sb
        small = _tagged(left, right, a[start:stop], b[start:stop], a_smaller)
        large = _tagged(left, right, a[start:stop], b[start:stop], ~a_smaller)
        inter = np.zeros(stop - start, dtype=np.int64)
        if len(small) and len(large):
            at = np.minimum(np.searchsorted(large, small), len(large) - 1)
            both = small[large[at] == small]
            inter = np.bincount((both >> _U64(32)).astype(np.int64), minlength=stop - start)
        union = sa + sb - inter
        out[start:stop] = inter / np.maximum(union, 1)
        start = stop
    return out


def _tagged(left: ShingleSets, right: ShingleSets, a: np.ndarray, b: np.ndarray, from_left: np.ndarray) -> np.ndarray:
    """For pair i, the set left[a[i]] where from_left[i] else right[b[i]], each value
    tagged (i << 32 | value): ascending, as pairs ascend and every set is sorted."""
    starts = np.where(from_left, left.offsets[a], right.offsets[b])
    sizes = np.where(from_left, left.sizes[a], right.sizes[b])
    where = _ranges(starts, sizes)
    side = np.repeat(from_left, sizes)
    values = np.empty(len(where), dtype=np.uint64)
    values[side] = left.values[where[side]]
    values[~side] = right.values[where[~side]]
    return (np.repeat(np.arange(len(a), dtype=np.uint64), sizes) << _U64(32)) | values


def passes(similarity: np.ndarray, threshold: float) -> np.ndarray:
    """Verification's rule, the same on every path: similarity >= threshold, up to float rounding."""
    return np.asarray(similarity, dtype=np.float64) >= threshold - 1e-9


# A verdict taken from the signatures alone is wrong with at most this probability per pair.
SIGNATURE_VERDICT_ERROR = 1e-9


def signature_verdicts(estimate: np.ndarray, threshold: float, num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """(accept, reject): the candidate pairs whose signature estimate settles verification.

    Each of the num_perm MinHash values of two documents agrees with probability J (their
    Jaccard), so the number of agreements is Binomial(num_perm, J). A pair is accepted when
    so many agree that a pair below the threshold would show as many with probability
    <= SIGNATURE_VERDICT_ERROR, and rejected when so few agree that a pair at or above the
    threshold would show as few with that probability. At 0.8 with 128 values: accepted
    from 126 agreements, rejected at 72 or fewer. Only the pairs in between need their
    exact Jaccard, and only their documents need their shingle sets.
    """
    low, high = _verdict_bounds(round(threshold, 6), num_perm)
    agree = np.rint(np.asarray(estimate, dtype=np.float64) * num_perm)
    return agree >= high, agree <= low


@lru_cache(maxsize=64)
def _verdict_bounds(threshold: float, num_perm: int) -> tuple[int, int]:
    k = np.arange(num_perm + 1)
    log_pmf = np.array(
        [
            math.lgamma(num_perm + 1)
            - math.lgamma(i + 1)
            - math.lgamma(num_perm - i + 1)
            + i * math.log(threshold)
            + (num_perm - i) * math.log1p(-threshold)
            for i in k
        ]
    )
    pmf = np.exp(log_pmf)
    lower_tail = np.cumsum(pmf)  # P(K <= k) at J = threshold: the most a pair at or above it can have
    upper_tail = np.cumsum(pmf[::-1])[::-1]  # P(K >= k) at J = threshold: the most a pair below it can have
    low = int(k[lower_tail <= SIGNATURE_VERDICT_ERROR].max()) if (lower_tail <= SIGNATURE_VERDICT_ERROR).any() else -1
    high = (
        int(k[upper_tail <= SIGNATURE_VERDICT_ERROR].min())
        if (upper_tail <= SIGNATURE_VERDICT_ERROR).any()
        else num_perm + 1
    )
    return low, high


# --------------------------------------------------------------------------- clusters


def candidate_edges(
    keys: np.ndarray, order: np.ndarray, active: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Unique candidate pairs (a, b), a < b as document indices.

    Within every LSH bucket, members sorted by ``order`` (the rank of their id) are linked
    to the bucket's first member and to their predecessor: enough for connected components
    and identical to what the Spark job builds with window functions.
    """
    n = len(keys)
    idx = np.arange(n) if active is None else np.flatnonzero(active)
    idx = idx[np.argsort(order[idx], kind="stable")]  # by rank: a stable sort by key keeps it within a bucket
    a_parts, b_parts = [], []
    for band in range(keys.shape[1]):
        k = keys[idx, band]
        by_key = np.argsort(k, kind="stable")
        ks = k[by_key]
        first_of_bucket = np.ones(len(ks), dtype=bool)
        first_of_bucket[1:] = ks[1:] != ks[:-1]
        a, b = bucket_links(idx[by_key], first_of_bucket)
        a_parts.append(a)
        b_parts.append(b)
    return unique_pairs(a_parts, b_parts, n)


def bucket_links(members: np.ndarray, first_of_bucket: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The links of :func:`candidate_edges` within buckets: ``members`` grouped by bucket and
    ordered by id rank within each, ``first_of_bucket`` marking where each bucket starts.
    Every member is linked to its bucket's first member and to its predecessor."""
    if len(members) < 2 or first_of_bucket.all():
        return np.empty(0, np.int64), np.empty(0, np.int64)
    group_first = members[np.maximum.accumulate(np.where(first_of_bucket, np.arange(len(members)), 0))]
    member = ~first_of_bucket
    return (
        np.concatenate([group_first[member], members[:-1][member[1:]]]).astype(np.int64),
        np.concatenate([members[member], members[1:][member[1:]]]).astype(np.int64),
    )


def unique_pairs(a_parts: list[np.ndarray], b_parts: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct undirected pairs among links (a, b) of n documents, as (low, high) in
    ascending order."""
    if not sum(len(a) for a in a_parts):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    a, b = np.concatenate(a_parts).astype(np.int64), np.concatenate(b_parts).astype(np.int64)
    codes = sorted_unique(np.minimum(a, b) * n + np.maximum(a, b))
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
    candidate_similarity: np.ndarray | None  # similarity of each candidate pair; None: not verified
    verified: np.ndarray  # bool per candidate pair: the pair is an edge of a cluster

    @property
    def duplicate(self) -> np.ndarray:
        return self.survivor != np.arange(len(self.survivor))

    @property
    def candidate_pairs(self) -> int:
        return len(self.verified)

    @property
    def verified_pairs(self) -> int:
        return int(np.count_nonzero(self.verified))


def cluster(
    n: int, a: np.ndarray, b: np.ndarray, similarity: np.ndarray | None, threshold: float, priority: np.ndarray
) -> Clusters:
    """Candidate pairs (a, b) -> verification (similarity >= threshold; every pair when
    ``similarity`` is None) -> connected components -> one survivor per component."""
    verified = passes(similarity, threshold) if similarity is not None else np.ones(len(a), dtype=bool)
    labels = components(n, a[verified], b[verified])
    return Clusters(survivors(labels, priority), labels, similarity, verified)


def cluster_table(ids: pa.Array, clusters: Clusters, sample_pairs: int, pair_similarity) -> pa.Table:
    """One row per duplicate cluster: survivor id, size, member ids, and a sample of
    (survivor, member) pairs with their similarity, from ``pair_similarity(a, b)``."""
    dup = np.flatnonzero(clusters.duplicate)
    schema = pa.schema(
        [
            ("survivor_id", pa.string()),
            ("size", pa.int64()),
            ("duplicate_ids", pa.list_(pa.string())),
            (
                "sample_pairs",
                pa.list_(pa.struct([("id_a", pa.string()), ("id_b", pa.string()), ("similarity", pa.float32())])),
            ),
        ]
    )
    if len(dup) == 0:
        return schema.empty_table()
    surv = clusters.survivor[dup]
    order = np.lexsort((dup, surv))
    dup, surv = dup[order], surv[order]
    heads = np.flatnonzero(np.r_[True, surv[1:] != surv[:-1]])
    sizes = np.diff(np.r_[heads, len(dup)])
    position = np.arange(len(dup)) - np.repeat(heads, sizes)
    ids = pa.array(ids) if not isinstance(ids, (pa.Array, pa.ChunkedArray)) else ids
    member_ids = pc.take(ids, pa.array(dup))
    survivor_ids = pc.take(ids, pa.array(surv[heads]))
    pair_mask = position < sample_pairs
    sims = pair_similarity(surv[pair_mask], dup[pair_mask])
    pairs = pa.StructArray.from_arrays(
        [
            pc.take(ids, pa.array(surv[pair_mask])),
            pc.filter(member_ids, pa.array(pair_mask)),
            pa.array(sims, pa.float32()),
        ],
        names=["id_a", "id_b", "similarity"],
    )
    pair_heads = np.r_[0, np.cumsum(np.minimum(sizes, sample_pairs))]
    member_heads = np.r_[heads, len(dup)]
    if isinstance(member_ids, pa.ChunkedArray):
        member_ids = member_ids.combine_chunks()
    return pa.table(
        {
            "survivor_id": survivor_ids,
            "size": pa.array(sizes + 1, pa.int64()),
            "duplicate_ids": pa.ListArray.from_arrays(pa.array(member_heads, pa.int32()), member_ids),
            "sample_pairs": pa.ListArray.from_arrays(pa.array(pair_heads, pa.int32()), pairs),
        },
        schema=schema,
    )
