"""Per-document text figures for the quality rules, computed by native code over whole Arrow columns.

``native/textscan.c`` reads the UTF-8 buffer of a string column and writes every figure the
rules need, one C pass per document and no Python per document. It sees each text as the
normalize stage would leave it (NFC is applied here, to the few documents it can change),
and splits words as the reference filters do (spaCy 3.8's English tokenizer), with the
character classes and special cases of ``native/text_tables.json``.
The library is built at install time (``pip install -e .`` via setup.py, run by
scripts/setup.sh) and loaded with ctypes.
"""

from __future__ import annotations

import ctypes
import json
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NATIVE = Path(__file__).resolve().parent / "native"

FLAG_NAMES = (
    "space",
    "py_alpha",
    "unicode_punct",
    "letter",
    "word_char",
    "digit",
    "sentence_punct",
    "dt_punct",
    "dt_terminal",
    "prefix",
    "suffix",
    "period_after",
    "alpha",
    "alpha_lower",
    "alpha_upper",
    "quote",
    "icon",
    "unspaced",
    "nfc_unsafe",
)
SIGNALS = (
    "chars",
    "letters",
    "spaces",
    "unspaced_letters",
    "tokens",
    "words",
    "word_chars",
    "alpha_tokens",
    "hashes",
    "ellipses",
    "gopher_lines",
    "bullet_lines",
    "ellipsis_lines",
    "stop_words",
    "paragraphs",
    "dup_paragraphs",
    "dup_paragraph_chars",
    "lines",
    "dup_lines",
    "dup_line_chars",
    "lorem_ipsum",
    "curly_bracket",
    "sentences",
    "notice_lines",
    "fineweb_lines",
    "fineweb_punct_lines",
    "fineweb_short_lines",
    "fineweb_dup_chars",
    "newlines",
    "nfc_unsafe",
)

_p = ctypes.c_void_p
_i64 = ctypes.c_int64
_i32 = ctypes.c_int32


@lru_cache(maxsize=1)
def native_library() -> ctypes.CDLL:
    """The compiled scanners (``native/*.c``, built into one library at install time)."""
    found = sorted(NATIVE.glob("_textscan*.so"))
    if not found:
        raise RuntimeError(
            f"tamis: error: the native text scanner is not built (no _textscan*.so in {NATIVE}); "
            "run scripts/setup.sh (or: pip install -e .) on a machine with a C compiler"
        )
    return ctypes.CDLL(str(found[-1]))


def native_function(name: str, argtypes: list, restype=ctypes.c_int64):
    """One function of the native library, with its C signature declared."""
    function = getattr(native_library(), name)
    function.argtypes = argtypes
    function.restype = restype
    return function


class _Native:
    def __init__(self) -> None:
        lib = native_library()
        native_function("tq_init", [_p, _p, _p, _p, _p, _i64, _p, _p, _i64, _p, _p], ctypes.c_int)
        native_function(
            "tq_signals", [_i64, _p, _p, _p, _p, _p, _p, _p, _i32, _i32, _i32, _i32, _i32, _p, _i32, _p, _i32, _p]
        )
        native_function("tq_tokens", [_p, _i64, ctypes.c_int, _p, _p, _p, _i64])
        tables = json.loads((NATIVE / "text_tables.json").read_text(encoding="utf-8"))
        flags = np.zeros(0x110000, dtype=np.uint32)
        for bit, name in enumerate(FLAG_NAMES):
            for lo, hi in tables["flags"][name]:
                flags[lo : hi + 1] |= np.uint32(1 << bit)
        self.flags = flags
        specials = tables["specials"]
        sp_chars, sp_off = _code_points(list(specials))
        pieces = np.array([n for lengths in specials.values() for n in lengths], np.int32)
        piece_off = np.concatenate([[0], np.cumsum([len(v) for v in specials.values()])]).astype(np.int64)
        ad_chars, ad_off = _code_points(tables["currency"] + tables["units"])
        patterns = [tables["matcher"].get(orth, []) for orth in specials]
        mt_pieces = np.array([n for p in patterns for n in p] or [0], np.int32)
        mt_off = np.concatenate([[0], np.cumsum([len(p) for p in patterns])]).astype(np.int64)
        if lib.tq_init(
            flags.ctypes.data,
            sp_chars.ctypes.data,
            sp_off.ctypes.data,
            pieces.ctypes.data,
            piece_off.ctypes.data,
            len(specials),
            ad_chars.ctypes.data,
            ad_off.ctypes.data,
            len(ad_off) - 1,
            mt_pieces.ctypes.data,
            mt_off.ctypes.data,
        ):
            raise MemoryError("tamis: error: the native text scanner could not allocate its tables")
        self.lib = lib


@lru_cache(maxsize=1)
def native() -> _Native:
    return _Native()


def _code_points(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    joined = "".join(strings)
    chars = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).copy() if joined else np.zeros(1, np.uint32)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in strings])]).astype(np.int64)
    return chars, offsets


def scan(
    text: pa.Array,
    prose: np.ndarray,
    stop_lang: np.ndarray,
    stop_lists: list[tuple[str, ...]],
    short_line_length: int,
    min_words_per_line: int,
    top_ns: list[int],
    dup_ns: list[int],
    max_word_length: int = 1000,
    line_requires_terminal_punct: bool = False,
) -> dict[str, np.ndarray]:
    """Every figure of ``SIGNALS`` per document, plus ``top_<n>`` and ``dup_<n>`` (characters)."""
    text = text.cast(pa.large_string())
    stops = _code_points([w for words in stop_lists for w in words])
    lang_first = np.concatenate([[0], np.cumsum([len(w) for w in stop_lists])]).astype(np.int64)
    settings = (
        stops,
        lang_first,
        short_line_length,
        min_words_per_line,
        max_word_length,
        int(line_requires_terminal_punct),
        np.array(top_ns or [0], np.int32),
        len(top_ns),
        np.array(dup_ns or [0], np.int32),
        len(dup_ns),
    )
    prose = np.ascontiguousarray(prose, dtype=np.uint8)
    stop_lang = np.ascontiguousarray(stop_lang, dtype=np.int32)
    out = _run(text, prose, stop_lang, settings)
    # NFC can change only the texts holding a character whose quick check is not Yes: those few
    # are normalized (Arrow's utf8proc) and scanned again.
    again = np.flatnonzero(out[SIGNALS.index("nfc_unsafe")] > 0)
    if len(again):
        rows = pa.array(again, pa.int64())
        normalized = pc.utf8_normalize(text.take(rows), "NFC")
        out[:, again] = _run(normalized, prose[again], stop_lang[again], settings)
    n = len(text)
    result = {name: out[i, :n] for i, name in enumerate(SIGNALS)}
    for j, k in enumerate(top_ns):
        result[f"top_{k}"] = out[len(SIGNALS) + j, :n]
    for j, k in enumerate(dup_ns):
        result[f"dup_{k}"] = out[len(SIGNALS) + len(top_ns) + j, :n]
    return result


def _run(text: pa.Array, prose: np.ndarray, stop_lang: np.ndarray, settings: tuple) -> np.ndarray:
    (stop_chars, stop_off), lang_first, short_line, min_words, max_word, terminal, tops, n_top, dups, n_dup = settings
    n = len(text)
    _, offsets_buf, data_buf = text.buffers()
    offsets = np.ascontiguousarray(np.frombuffer(offsets_buf, dtype=np.int64)[text.offset : text.offset + n + 1])
    data_address = data_buf.address if data_buf is not None and data_buf.size else np.zeros(1, np.uint8).ctypes.data
    out = np.zeros((len(SIGNALS) + n_top + n_dup, max(n, 1)), dtype=np.float64)
    status = native().lib.tq_signals(
        n,
        offsets.ctypes.data,
        data_address,
        prose.ctypes.data,
        stop_lang.ctypes.data,
        stop_chars.ctypes.data,
        stop_off.ctypes.data,
        lang_first.ctypes.data,
        len(lang_first) - 1,
        short_line,
        min_words,
        max_word,
        terminal,
        tops.ctypes.data,
        n_top,
        dups.ctypes.data,
        n_dup,
        out.ctypes.data,
    )
    if status:
        raise MemoryError("tamis: error: the native text scanner ran out of memory")
    return out[:, :n] if n else out[:, :0]


def words(text: str, prose: bool = True) -> list[str]:
    """The words the rules count in one text (seen as normalize leaves it), for tests and tools."""
    lib = native().lib
    data = unicodedata.normalize("NFC", text).encode("utf-8")
    points = np.zeros(len(data) + 1, np.uint32)
    length = np.zeros(1, np.int64)
    spans = np.zeros(2 * (len(data) + 1), np.int32)
    count = lib.tq_tokens(
        data, len(data), int(prose), points.ctypes.data, length.ctypes.data, spans.ctypes.data, len(data) + 1
    )
    if count < 0:
        raise MemoryError("tamis: error: the native text scanner ran out of memory")
    canonical = points[: length[0]].tobytes().decode("utf-32-le")
    return [canonical[spans[2 * k] : spans[2 * k] + spans[2 * k + 1]] for k in range(count)]
