"""Tokenizers: load a Hugging Face fast tokenizer, or train a small byte-level BPE one.

A tokenizer is named by a local path (a ``tokenizer.json`` file, a folder holding one,
or a folder saved by ``transformers``) or by a hub name such as ``gpt2``. A relative
path is tried against the pipeline configs folder (like source paths in a pipeline
YAML), then against the working directory.

Training exists so that the demo needs nothing from the network: a byte-level BPE
trained on the corpus itself, with an end-of-text and a padding token.

    python -m tamis.tokenizer DATASET_URL OUTPUT_PATH --vocab-size 8192
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# Spellings used by common tokenizers, tried in order when a config does not name the token.
EOS_CANDIDATES = (EOS_TOKEN, "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")
PAD_CANDIDATES = (PAD_TOKEN, "<pad>", "[PAD]", "<|padding|>", "<|finetune_right_pad_id|>")


class TokenizerError(ValueError):
    """A tokenizer cannot be loaded or lacks a token the pipeline needs."""


def load_tokenizer(spec: str) -> Tokenizer:
    """Load a fast tokenizer from a local path or a hub name; raise :class:`TokenizerError` naming it."""
    path = resolve_local_path(spec)
    if path is not None:
        return _load_local(spec, path)
    if _looks_like_path(spec):
        where = "" if Path(spec).expanduser().is_absolute() else f" (looked in {_pipelines_dir()} and {Path.cwd()})"
        raise TokenizerError(
            f"tokenizer {spec!r}: no such file or directory{where}; expected a tokenizer.json file or a folder holding one"
        )
    return _load_from_hub(spec)


def resolve_local_path(spec: str) -> Path | None:
    """The existing local file or folder ``spec`` names, or None when it names none."""
    path = Path(spec).expanduser()
    candidates = [path] if path.is_absolute() else [_pipelines_dir() / path, path]
    return next((p.resolve() for p in candidates if p.exists()), None)


def _pipelines_dir() -> Path:
    from tamis.pipeline import PIPELINES_DIR

    return PIPELINES_DIR


def _looks_like_path(spec: str) -> bool:
    # Hub names are "name" or "org/name"; anything else is meant as a local path.
    return spec.startswith(("/", ".", "~")) or spec.endswith(".json") or spec.count("/") > 1 or "\\" in spec


def _load_local(spec: str, path: Path) -> Tokenizer:
    try:
        if path.is_file():
            return Tokenizer.from_file(str(path))
        if (path / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(path / "tokenizer.json"))
        from transformers import AutoTokenizer

        loaded = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise TokenizerError(f"tokenizer {spec!r} ({path}) could not be loaded: {exc}") from exc
    backend = getattr(loaded, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(f"tokenizer {spec!r} ({path}) has no fast (Rust) tokenizer; save it with tokenizer.json")
    return backend


def _load_from_hub(name: str) -> Tokenizer:
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Tokenizer.from_pretrained(name)
    except LocalEntryNotFoundError as exc:
        # Offline, or the hub is unreachable: no point asking transformers to retry.
        raise TokenizerError(
            f"tokenizer {name!r} is not a local path and could not be fetched from the Hugging Face hub "
            f"(no connection and not in the local cache): {exc}"
        ) from exc
    except EntryNotFoundError:
        pass  # the repository has no tokenizer.json; transformers may still build a fast tokenizer
    except Exception as exc:
        raise TokenizerError(f"tokenizer {name!r} could not be loaded from the Hugging Face hub: {exc}") from exc
    try:
        from transformers import AutoTokenizer

        loaded = AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        raise TokenizerError(f"tokenizer {name!r} could not be loaded from the Hugging Face hub: {exc}") from exc
    backend = getattr(loaded, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(f"tokenizer {name!r} has no fast (Rust) tokenizer")
    return backend


def special_token_id(tokenizer: Tokenizer, token: str | None, candidates: tuple[str, ...], role: str, spec: str) -> int:
    """The id of ``token``, or of the first of ``candidates`` the vocabulary holds."""
    names = (token,) if token else candidates
    for name in names:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            return token_id
    raise TokenizerError(
        f"tokenizer {spec!r} has no {role} token (looked for {', '.join(names)}); name it in the stage params"
    )


def eos_id(tokenizer: Tokenizer, spec: str, token: str | None = None) -> int:
    return special_token_id(tokenizer, token, EOS_CANDIDATES, "end-of-text", spec)


def pad_id(tokenizer: Tokenizer, spec: str, token: str | None = None) -> int:
    """The padding token; tokenizers without one (GPT-2) pad with their end-of-text token."""
    try:
        return special_token_id(tokenizer, token, PAD_CANDIDATES, "padding", spec)
    except TokenizerError:
        if token:
            raise
        return eos_id(tokenizer, spec)


def train_tokenizer(
    dataset_url: str,
    output_path: str,
    vocab_size: int = 8192,
    text_column: str = "text",
    min_frequency: int = 2,
    max_docs: int | None = None,
    special_tokens: tuple[str, ...] = (EOS_TOKEN, PAD_TOKEN),
) -> Path:
    """Train a byte-level BPE on the text of a dataset and save it as ``tokenizer.json``.

    ``dataset_url`` is a tamis dataset (a folder with ``_manifest.json``) or one Parquet,
    JSONL or JSONL.gz file. The result depends only on the text and the arguments: the
    same input gives the same file. ``output_path`` is a file path, or a folder that
    will hold ``tokenizer.json``.
    """
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the 256 byte symbols plus the special tokens")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(iter_texts(dataset_url, text_column, max_docs), trainer=trainer)
    out = Path(output_path)
    if out.suffix != ".json":
        out = out / "tokenizer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out))
    return out


def iter_texts(dataset_url: str, text_column: str = "text", max_docs: int | None = None) -> Iterator[list[str]]:
    """Batches of non-empty texts, in dataset order."""
    remaining = max_docs if max_docs is not None else -1
    for texts in _text_batches(dataset_url, text_column):
        texts = [t for t in texts if t]
        if remaining >= 0:
            texts = texts[:remaining]
            remaining -= len(texts)
        if texts:
            yield texts
        if remaining == 0:
            return


def _text_batches(url: str, column: str) -> Iterator[list[str]]:
    from tamis import storage
    from tamis.dataset import Dataset

    dataset = Dataset(url)
    if dataset.is_complete():
        for batch in dataset.iter_batches(columns=[column]):
            yield batch.column(column).to_pylist()
        return
    if not storage.exists(url):
        raise FileNotFoundError(f"training text {url!r}: no such dataset or file")
    fs, path = storage.filesystem(url)
    if path.endswith(".parquet"):
        with fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=[column]):
                yield batch.column(column).to_pylist()
        return
    if not path.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        raise ValueError(f"training text {url!r}: expected a tamis dataset, .parquet, .jsonl or .jsonl.gz")
    with fs.open(path, "rb") as raw:
        lines = (
            gzip.open(raw, "rt", encoding="utf-8") if path.endswith(".gz") else (line.decode("utf-8") for line in raw)
        )
        texts: list[str] = []
        for line in lines:
            if line.strip():
                texts.append(json.loads(line).get(column) or "")
            if len(texts) == 1024:
                yield texts
                texts = []
        if texts:
            yield texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tamis.tokenizer", description="Train a byte-level BPE tokenizer.")
    parser.add_argument("dataset_url", help="tamis dataset URL, or a .parquet/.jsonl/.jsonl.gz file")
    parser.add_argument("output_path", help="tokenizer.json path, or a folder to hold it")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--min-frequency", type=int, default=2)
    parser.add_argument("--max-docs", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        out = train_tokenizer(
            args.dataset_url, args.output_path, args.vocab_size, args.text_column, args.min_frequency, args.max_docs
        )
    except (ValueError, OSError, LookupError) as exc:
        print(f"tamis: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
