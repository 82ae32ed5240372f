"""Tokenize: add ``input_ids`` and ``token_count`` to every document.

Encoding runs in native code: tiktoken where it gives exactly the tokenizer's ids
(``fast_bpe``, byte-level BPE tokenizers; see :mod:`tamis.ranked_bpe`), the tokenizer's
own Rust code (``encode_batch_fast``) for the rest. A pool worker's threads are sized by
the runner (cores / workers); in the runner's own process tiktoken uses one thread. The
ids of a batch are flattened into one numpy array and the Arrow list column is built from
offsets, so no Python code runs per token. The end-of-text token, when asked for, is
inserted with numpy on the flat values. Documents that produce no tokens, and
documents longer than ``max_chars`` (a guard against a pathological input stalling a
worker), are dropped with their reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field
from tokenizers import Tokenizer

from tamis import storage
from tamis.ranked_bpe import RankedBpe, thread_budget
from tamis.stage import BatchResult, PathOrName, Stage, StageParams, split_by_reason
from tamis.tokenizer import TokenizerError, eos_id, load_tokenizer, resolve_local_path

log = logging.getLogger("tamis.stages.tokenize")


class TokenizeParams(StageParams):
    # A tokenizer.json file, a folder holding one, or a Hugging Face hub name; relative to include/pipelines.
    tokenizer: PathOrName = "../sample/tokenizer.json"
    add_eos: bool = True  # end every document with the end-of-text token, so packed documents stay separated
    eos_token: str | None = None  # None: the first of <|endoftext|>, <|end_of_text|>, </s>, <eos> the vocabulary holds
    add_special_tokens: bool = False  # the tokenizer's own post-processor (BOS, [CLS]...); off for pretraining text
    max_chars: int = Field(default=1_000_000, ge=1)
    batch_size: int = Field(default=1024, ge=1)  # documents per encode call
    # Encode with tiktoken where it provably gives the tokenizer's ids (about 4.5x faster);
    # tokenizers that do not qualify, and documents holding an added token, use the tokenizer itself.
    fast_bpe: bool = True


class Tokenize(Stage):
    type_name = "tokenize"
    Params = TokenizeParams
    params: TokenizeParams
    joins_corpus = False
    default_gate = {"required_columns": ["id", "source", "text", "input_ids", "token_count"]}

    def __init__(
        self,
        params: StageParams | dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(params, context, name)
        self._tokenizer: Tokenizer | None = None
        self._ranked: RankedBpe | None = None
        self._eos_id: int | None = None

    def setup(self) -> None:
        tokenizer = load_tokenizer(self.params.tokenizer)
        if self.params.add_eos:
            self._eos_id = eos_id(tokenizer, self.params.tokenizer, self.params.eos_token)
        if self.params.fast_bpe and not self.params.add_special_tokens:
            self._ranked, why = RankedBpe.of(tokenizer)
            if self._ranked is None:
                log.info(
                    "tokenize: %s; every document goes through the tokenizer itself (%s)", why, self.params.tokenizer
                )
        self._tokenizer = tokenizer

    def check_ready(self) -> None:
        load_tokenizer(self.params.tokenizer)

    def dependencies(self, output_url: str) -> dict[str, str]:
        return tokenizer_dependency(self.params.tokenizer)

    def _load(self):
        if self._tokenizer is None:
            self.setup()
        return self._tokenizer

    def process_batch(self, table: pa.Table) -> BatchResult:
        if "text" not in table.column_names:
            raise TokenizerError(f"tokenize: input has no 'text' column (columns: {', '.join(table.column_names)})")
        tokenizer = self._load()
        table = table.drop_columns([c for c in ("input_ids", "token_count") if c in table.column_names])
        text = pc.fill_null(table.column("text"), "")
        chars = pc.utf8_length(text).to_numpy(zero_copy_only=False)
        too_long = chars > self.params.max_chars

        texts = text.to_pylist()
        for i in np.flatnonzero(too_long):
            texts[i] = ""  # not encoded; dropped below
        flat, counts, by_tokenizer = self._encode(tokenizer, texts, text, too_long)
        if self.params.add_eos:
            assert self._eos_id is not None, "setup finds the end-of-text token whenever add_eos is on"
            flat = np.insert(flat, np.cumsum(counts)[counts > 0], np.int32(self._eos_id))
            counts = counts + (counts > 0)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32()))

        no_tokens = (counts == 0) & ~too_long
        reasons = np.full(table.num_rows, None, dtype=object)
        detail = np.full(table.num_rows, None, dtype=object)
        reasons[no_tokens] = "no_tokens"
        reasons[too_long] = "too_many_chars"
        detail[too_long] = [f"{int(n)} chars > max_chars {self.params.max_chars}" for n in chars[too_long]]
        table = table.append_column("input_ids", ids).append_column("token_count", pa.array(counts.astype(np.int32)))
        kept, dropped = split_by_reason(table, reasons.tolist(), detail.tolist())
        kept_mask = ~(no_tokens | too_long)
        metrics = Counter(
            {
                "tokenize.tokens": int(counts[kept_mask].sum()),
                "tokenize.chars": int(chars[kept_mask].sum()),
                "tokenize.docs_by_tokenizer": by_tokenizer,
            }
        )
        return BatchResult(kept=kept, dropped=dropped, metrics=metrics)

    def _encode(
        self, tokenizer: Tokenizer, texts: list[str], text: pa.ChunkedArray, too_long: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Every text's ids, flat, their counts per text, and how many texts the tokenizer
        itself encoded (``too_long`` ones are encoded by neither)."""
        if self._ranked is not None:
            flat, counts, left = self._ranked.encode(texts, self._ranked.holds_added_token(text), thread_budget())
        else:
            flat, counts, left = np.empty(0, np.int32), np.zeros(len(texts), np.int64), np.ones(len(texts), bool)
        rows = np.flatnonzero(left & ~too_long)
        if not len(rows):
            return flat, counts, 0
        per_text = np.split(flat, np.cumsum(counts)[:-1]) if len(texts) else []
        size = self.params.batch_size
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            encodings = tokenizer.encode_batch_fast(
                [texts[i] for i in chunk], add_special_tokens=self.params.add_special_tokens
            )
            for i, encoding in zip(chunk, encodings):
                per_text[i] = np.asarray(encoding.ids, np.int32)
        counts = np.fromiter(map(len, per_text), np.int64, len(per_text))
        flat = np.concatenate(per_text) if per_text else np.empty(0, np.int32)
        return flat, counts, len(rows)


def tokenizer_dependency(spec: str) -> dict[str, str]:
    """The tokenizer file's content hash (a hub name is its own version)."""
    path = resolve_local_path(spec)
    if path is None:
        return {"tokenizer": spec}
    file = path / "tokenizer.json" if path.is_dir() else path
    return {"tokenizer": storage.sha256(str(file))}
