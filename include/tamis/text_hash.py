"""Stable 64-bit hashes of whole strings, for whole Arrow string columns at once."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tamis.minhash import CHUNK_BYTES, _span_hashes
from tamis.text_kernels import string_buffers


def string_hashes(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A uint64 hash of each string (a null hashes as the empty string), the same in every
    process and run: a prefix sum over the column's bytes (:mod:`tamis.minhash`), a few
    megabytes at a time so that memory stays bounded whatever the column's size."""
    values = pc.fill_null(values, "")
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == 0:
        return np.empty(0, np.uint64)
    sizes = pc.binary_length(values).to_numpy(zero_copy_only=False).astype(np.int64)
    ends = np.searchsorted(
        np.cumsum(sizes), np.arange(CHUNK_BYTES, int(sizes.sum()) + CHUNK_BYTES, CHUNK_BYTES), side="right"
    )
    bounds = np.unique(np.concatenate([[0], np.minimum(ends, len(values)), [len(values)]]))
    out = []
    for start, end in pairwise(bounds):
        data, offsets = string_buffers(values.slice(int(start), int(end - start)))
        # One spare byte: an empty string at the end starts where the data ends.
        out.append(_span_hashes(np.append(data, np.uint8(0)), offsets[:-1], offsets[1:]))
    return np.concatenate(out)
