"""tiktoken as an exact fast path for byte-level BPE tokenizers.

The ``tokenizers`` library spends most of its time on bookkeeping (normalized strings,
offsets), not on BPE: the tokenize stage runs 3.7x faster per CPU second with tiktoken
than with ``encode_batch_fast`` (benchmarks/tokenize_pack.py). tiktoken is used only where
its ids are provably the ids ``tokenizers`` gives, and :meth:`RankedBpe.of` says why not
otherwise:

* the pre-tokenizer is byte-level with a regex tiktoken knows to split text the same way
  (GPT-2's, or the GPT-4 / Llama 3 pattern through ``Split``), no normalizer, and a plain
  BPE model (no dropout, no subword prefix or suffix, no byte fallback) holding all 256
  bytes;
* the merges make new tokens in increasing id order (so each token by one merge only);
* every token an output holds is *clean*: tiktoken's BPE of its own bytes ends in the
  token by listed merges only. The two algorithms differ in one respect: ``tokenizers``
  merges a pair only when the merge list holds it, tiktoken any pair whose concatenation
  is a token (ranked by its id). While tiktoken merges only listed pairs, each of its
  choices is the lowest-ranked listed pair, the choice ``tokenizers`` makes. The merges
  inside one output token are those of BPE on that token's bytes alone (merges never
  cross an output token), so an output made only of clean tokens was made by listed
  merges only. Each token is checked the first time an output holds it; documents
  holding a token that is not clean go to ``tokenizers``. Trained BPE vocabularies have
  none (the sample tokenizer: 0 of 8,190).

``tokenizers`` also cuts added tokens (``<|endoftext|>``...) out of the raw text before
anything else; documents that contain one are left to it as well.
"""

from __future__ import annotations

import json
import os
import re
from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Patterns whose matches cover every character (tiktoken encodes matches only, where
# ``tokenizers`` also keeps the text between them).
_COVERING_PATTERNS = {
    GPT2_PATTERN,
    # GPT-4 (cl100k) and Llama 3
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}


def _byte_of_char() -> dict[str, int]:
    """GPT-2's printable stand-in character of each byte, reversed (the byte-level alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class RankedBpe:
    """Encodes texts with tiktoken where that gives ``tokenizers``' ids, and says which it left."""

    def __init__(
        self, encoding: Any, added: re.Pattern | None, vocab: dict[str, int], listed: dict[tuple[str, str], int]
    ):
        self._encoding = encoding
        self._added = added
        self._vocab = vocab
        self._listed = listed
        self._token = {token_id: token for token, token_id in vocab.items()}
        # Per token id: 0 not checked yet, 1 clean, 2 not clean.
        self._clean = np.zeros(max(vocab.values()) + 1, np.int8)

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> tuple[RankedBpe | None, str]:
        """The fast path for ``tokenizer``, or None and the reason it would not be exact."""
        spec = json.loads(tokenizer.to_str())
        model = spec.get("model") or {}
        if spec.get("normalizer") is not None:
            return None, "the tokenizer normalizes text"
        pattern = _byte_level_pattern(spec.get("pre_tokenizer"))
        if pattern is None:
            return None, "the pre-tokenizer is not byte-level with a known split pattern"
        if model.get("type") != "BPE" or model.get("dropout") or model.get("byte_fallback"):
            return None, "the model is not a plain BPE"
        if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            return None, "the BPE model marks subwords"
        byte_of = _byte_of_char()
        added = {t["content"] for t in spec.get("added_tokens") or []}
        vocab: dict[str, int] = {t: i for t, i in model["vocab"].items() if t not in added}
        if any(ch not in byte_of for t in vocab for ch in t):
            return None, "the vocabulary is not byte-level"
        if not all(ch in vocab for ch in byte_of):
            return None, "the vocabulary lacks some of the 256 bytes"
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model.get("merges") or []]
        made = [vocab.get(a + b) for a, b in merges]
        if None in made or any(x >= y for x, y in zip(made, made[1:])):  # type: ignore[operator]
            return None, "the merges do not make new tokens in id order"
        listed = {pair: rank for rank, pair in enumerate(merges)}
        import tiktoken

        ranks = {bytes(byte_of[ch] for ch in token): token_id for token, token_id in vocab.items()}
        encoding = tiktoken.Encoding("tamis", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        found = re.compile("|".join(map(re.escape, sorted(added, key=len, reverse=True)))) if added else None
        return cls(encoding, found, vocab, listed), ""

    def encode(self, texts: list[str], skip: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every text's ids, flat, and their counts per text; and which texts are left to
        ``tokenizers`` (no ids here): those ``skip`` marks (see :meth:`holds_added_token`) and
        those holding a token that is not clean."""
        todo = [t if not skipped else "" for t, skipped in zip(texts, skip)]
        if threads > 1 and len(todo) > 1:  # tiktoken lets go of the GIL while it encodes
            ids = self._encoding.encode_ordinary_batch(todo, num_threads=threads)
        else:
            ids = list(map(self._encoding.encode_ordinary, todo))
        counts = np.fromiter(map(len, ids), np.int64, len(ids))
        flat = np.fromiter(chain.from_iterable(ids), np.int32, int(counts.sum()))
        state = self._clean[flat]
        if (state == 0).any():
            for token_id in np.unique(flat[state == 0]):
                token = self._token[int(token_id)]
                self._clean[token_id] = 1 if len(token) == 1 or _clean(token, self._vocab, self._listed) else 2
            state = self._clean[flat]
        left = skip.copy()
        if (state == 2).any():
            doc_of = np.repeat(np.arange(len(ids)), counts)
            left[doc_of[state == 2]] = True
            keep = ~left[doc_of]
            flat, counts = flat[keep], np.where(left, 0, counts)
        return flat, counts, left

    def holds_added_token(self, text: pa.Array) -> np.ndarray:
        """Which texts contain an added token's text (``tokenizers`` would cut it out first)."""
        if self._added is None:
            return np.zeros(len(text), bool)
        return pc.match_substring_regex(text, self._added.pattern).fill_null(False).to_numpy(zero_copy_only=False)


def _byte_level_pattern(pre: dict | None) -> str | None:
    if pre is None:
        return None
    if pre.get("type") == "ByteLevel":
        return GPT2_PATTERN if pre.get("use_regex", True) and not pre.get("add_prefix_space") else None
    steps = pre.get("pretokenizers") or []
    if pre.get("type") != "Sequence" or len(steps) != 2:
        return None
    split, level = steps
    pattern = (split.get("pattern") or {}).get("Regex")
    if (
        split.get("type") == "Split"
        and split.get("behavior") == "Isolated"
        and not split.get("invert")
        and pattern in _COVERING_PATTERNS
        and level.get("type") == "ByteLevel"
        and not level.get("use_regex", True)
        and not level.get("add_prefix_space")
    ):
        return pattern
    return None


def _clean(token: str, vocab: dict[str, int], listed: dict[tuple[str, str], int]) -> bool:
    """tiktoken's BPE of the token's own bytes ends in the token by listed merges only;
    ``tokenizers`` then makes the same merges (see the module's docstring)."""
    parts = list(token)
    while len(parts) > 1:
        ranked = [(vocab.get(a + b), k) for k, (a, b) in enumerate(zip(parts, parts[1:]))]
        candidates = [(r, k) for r, k in ranked if r is not None]
        if not candidates:
            return False
        _, k = min(candidates)
        if (parts[k], parts[k + 1]) not in listed:
            return False
        parts[k : k + 2] = [parts[k] + parts[k + 1]]
    return True


def thread_budget() -> int:
    """The native threads this process may use (the runner sizes RAYON_NUM_THREADS to cores ÷ workers)."""
    try:
        return max(1, int(os.environ.get("RAYON_NUM_THREADS", "1")))
    except ValueError:
        return 1
