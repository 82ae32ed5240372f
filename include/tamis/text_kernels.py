"""Whole-column text rewrites in C (``native/whitespace.c``).

Each stands for a chain of Arrow regex replacements and gives their exact result (the
tests compare them on random texts and real corpora): RE2's replacement kernels run at
about 40 MB/s each, these at byte speed, in one pass over the column.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tamis.text_stats import native_function


@lru_cache(maxsize=1)
def _normalize():
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    return native_function("tn_normalize", [p, p, i64, p, ctypes.c_int, ctypes.c_int, i64, p, p])


@lru_cache(maxsize=1)
def _collapse_spaces():
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    return native_function("tn_collapse_spaces", [p, p, i64, p, p])


def string_buffers(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, int64 offsets rebased to the first byte) of a string or binary array."""
    if not pa.types.is_large_binary(texts.type):
        texts = texts.cast(pa.large_binary())
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[texts.offset : texts.offset + len(texts) + 1]
    data_buffer = texts.buffers()[2]
    base = int(offsets[0])
    if data_buffer is None or offsets[-1] == base:
        return np.empty(0, dtype=np.uint8), np.zeros(len(texts) + 1, dtype=np.int64)
    data = np.frombuffer(data_buffer, dtype=np.uint8)[base : int(offsets[-1])]
    return data, offsets - base


def _rewritten(text: pa.Array, call) -> pa.Array:
    """``text`` (string or large_string, nulls kept) rewritten by ``call(data, offsets,
    out, out_offsets)``, which returns the bytes it wrote (never more than it read)."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        raise TypeError(f"a string column is needed, not {text.type}")
    data, offsets = string_buffers(text)
    out = np.empty(max(len(data), 1), np.uint8)
    out_offsets = np.empty(len(text) + 1, np.int64)
    written = call(data, offsets, out, out_offsets)
    validity = None
    if text.null_count:
        validity = pc.is_valid(text).buffers()[1]
    large = pa.types.is_large_string(text.type)
    return pa.Array.from_buffers(
        text.type,
        len(text),
        [validity, pa.py_buffer(out_offsets if large else out_offsets.astype(np.int32)), pa.py_buffer(out[:written])],
        null_count=text.null_count,
    )


def normalized_blanks(
    text: pa.Array, prose: np.ndarray, remove_controls: bool, strip_trailing: bool, max_blank_lines: int
) -> pa.Array:
    """Normalize's rewrites after the Unicode form, as these Arrow replacements in turn:
    ``\\r\\n`` and ``\\r`` to ``\\n``; controls (C0 and C1 but tab and newline; U+200B-D,
    U+2060, U+FEFF) removed; in prose rows (``prose``), every run of inline blanks (space,
    tab, U+00A0, U+1680, U+2000-200A, U+202F, U+205F, U+3000) to one space; ``(?m)[ \\t]+$``
    removed; ``\\n{max_blank_lines + 2,}`` to ``max_blank_lines + 1`` newlines; and
    ``utf8_trim(" \\t\\n")``."""
    flags = np.ascontiguousarray(prose, dtype=np.uint8)
    if len(flags) != len(text):
        raise ValueError(f"{len(flags)} prose flags for {len(text)} texts")

    def call(data, offsets, out, out_offsets):
        return _normalize()(
            data.ctypes.data,
            offsets.ctypes.data,
            len(offsets) - 1,
            flags.ctypes.data,
            int(remove_controls),
            int(strip_trailing),
            int(max_blank_lines),
            out.ctypes.data,
            out_offsets.ctypes.data,
        )

    return _rewritten(text, call)


def collapsed_spaces(text: pa.Array) -> pa.Array:
    """``replace_substring_regex(text, r"\\s+", " ")``: RE2's ``\\s`` is ``[\\t\\n\\f\\r ]``."""

    def call(data, offsets, out, out_offsets):
        return _collapse_spaces()(
            data.ctypes.data, offsets.ctypes.data, len(offsets) - 1, out.ctypes.data, out_offsets.ctypes.data
        )

    return _rewritten(text, call)
