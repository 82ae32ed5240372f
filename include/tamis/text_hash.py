"""Stable 64-bit hashes of whole strings, for whole Arrow string columns at once."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tamis.minhash import _span_hashes, _string_buffers


def string_hashes(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A uint64 hash of each string (a null hashes as the empty string), the same in every
    process and run: one prefix sum over the column's bytes (:mod:`tamis.minhash`)."""
    values = pc.fill_null(values, "")
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == 0:
        return np.empty(0, np.uint64)
    data, offsets = _string_buffers(values)
    # One spare byte: an empty string at the end starts where the data ends.
    return _span_hashes(np.append(data, np.uint8(0)), offsets[:-1], offsets[1:])
