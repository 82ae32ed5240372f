"""``tamis train-quality``: a fastText text classifier trained from labelled documents.

Two ways to give the labels:

* ``--labelled PATH --label-column COL``: one dataset whose column says each document's
  class. With ``--high VALUE ...`` the listed values become ``__label__hq`` and every other
  value ``__label__lq`` (a quality model); without, every value is its own label
  ``__label__<value>`` (a multi-class model). A list column gives a document several labels
  (none: ``__label__none``); with ``--loss ova`` each label is then scored on its own, as
  the ``safety`` stage reads its categories.
* ``--positive PATH ... --negative PATH ...``: the DCLM recipe (Li et al. 2024): curated
  text as ``__label__hq`` against random web text as ``__label__lq``.

A PATH is a tamis dataset (a folder with a manifest), or a JSON Lines (``.jsonl``,
``.jsonl.gz``) or Parquet file. Documents are prepared exactly as the quality stage prepares
them before scoring (:func:`prepare`), so training and scoring see the same tokens. With
``--valid-fraction`` a deterministic share of the documents (by a hash of their text) is
held out and the model's precision and recall on it are reported. The model is written with
a ``<model>.json`` beside it: its inputs with their SHA-256, counts, labels, parameters and
held-out figures, so a model file always says where it came from.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tamis import __version__, storage
from tamis.dataset import Dataset

HIGH, LOW = "__label__hq", "__label__lq"


def prepare(text: pa.Array | pa.ChunkedArray, max_chars: int) -> list[str]:
    """fastText's input: the first ``max_chars`` characters, lower-cased, punctuation split
    off words (fastText splits on spaces only), all whitespace one space (it reads one line)."""
    text = pc.fill_null(text, "")
    text = pc.utf8_lower(pc.utf8_slice_codeunits(text, 0, max_chars))
    text = pc.replace_substring_regex(text, r"([^\w\s])", r" \1 ")
    text = pc.replace_substring_regex(text, r"\s+", " ")
    return pc.utf8_trim_whitespace(text).to_pylist()


def read_texts(path: str, text_column: str = "text", columns: tuple[str, ...] = ()) -> pa.Table:
    """The text column (and ``columns``) of a tamis dataset, a JSON Lines or a Parquet file."""
    wanted = [text_column, *columns]
    if os.path.isdir(path) or "://" in path:
        dataset = Dataset(path)
        if not dataset.is_complete():
            raise FileNotFoundError(f"train-quality: {path} is neither a finished tamis dataset nor a file")
        table = dataset.read()
    elif path.endswith(".parquet"):
        table = pq.read_table(path)
    elif path.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            table = pa.Table.from_pylist([json.loads(line) for line in f if line.strip()])
    else:
        raise ValueError(f"train-quality: {path}: expected a dataset folder, .jsonl(.gz) or .parquet")
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise ValueError(
            f"train-quality: {path} has no column {missing[0]!r} (columns: {', '.join(table.column_names)})"
        )
    return table.select(wanted)


def labelled_documents(args: argparse.Namespace) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """(texts, labels, input descriptions) from the command line's inputs."""
    texts: list[str] = []
    labels: list[str] = []
    inputs = []
    if args.labelled:
        table = read_texts(args.labelled, args.text_column, (args.label_column,))
        values = table.column(args.label_column).to_pylist()
        high = set(args.high or [])
        labels = [(HIGH if str(v) in high else LOW) if high else _labels(v) for v in values]
        texts = prepare(table.column(args.text_column), args.max_chars)
        inputs.append(_describe(args.labelled, "labelled", len(texts)))
    for kind, paths, label in (("positive", args.positive, HIGH), ("negative", args.negative, LOW)):
        for path in paths or []:
            column = read_texts(path, args.text_column).column(args.text_column)
            texts.extend(prepare(column, args.max_chars))
            labels.extend([label] * len(column))
            inputs.append(_describe(path, kind, len(column)))
    keep = [i for i, t in enumerate(texts) if t]
    return [texts[i] for i in keep], [labels[i] for i in keep], inputs


def _labels(value) -> str:
    values = value if isinstance(value, (list, tuple)) else [value]
    names = [f"__label__{str(v).replace(' ', '_')}" for v in values if v is not None]
    return " ".join(names) or "__label__none"


def _describe(path: str, kind: str, documents: int) -> dict[str, Any]:
    digest = None
    if os.path.isfile(path):
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    elif Dataset(path).is_complete():
        digest = hashlib.sha256(storage.read_bytes(Dataset(path).manifest_url)).hexdigest()
    return {"kind": kind, "path": path, "sha256": digest, "documents": documents}


def held_out(texts: list[str], fraction: float) -> np.ndarray:
    """A deterministic validation mask: the same documents are held out on every run."""
    keys = np.array([int.from_bytes(hashlib.blake2b(t.encode(), digest_size=4).digest(), "big") for t in texts])
    return keys < int(fraction * 2**32)


def train(texts: list[str], labels: list[str], params: dict[str, Any]):
    import fasttext

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(f"{label} {text}\n" for label, text in zip(labels, texts))
        # One thread: fastText's training is then deterministic for a given seed.
        return fasttext.train_supervised(input=path, thread=1, verbose=0, **params)


def scores(model, texts: list[str], label: str) -> np.ndarray:
    """The probability of ``label`` for each prepared text (one native call for the batch)."""
    if not texts:
        return np.empty(0)
    labels, probs = model.predict(texts, k=-1)
    return np.array([dict(zip(ls, ps)).get(label, 0.0) for ls, ps in zip(labels, probs)], dtype=np.float64)


def evaluate(model, texts: list[str], labels: list[str], label: str, threshold: float) -> dict[str, float]:
    predicted = scores(model, texts, label) >= threshold
    actual = np.array([label in line.split() for line in labels])
    tp = int((predicted & actual).sum())
    return {
        "documents": len(texts),
        "positives": int(actual.sum()),
        "threshold": threshold,
        "precision": round(tp / max(int(predicted.sum()), 1), 4),
        "recall": round(tp / max(int(actual.sum()), 1), 4),
    }


def add_command(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "train-quality",
        help="train a fastText quality (or category) classifier from labelled documents",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("output", help="the model file to write (.bin); its provenance goes to <output>.json")
    cmd.add_argument("--labelled", help="a dataset or file with a label column")
    cmd.add_argument("--label-column", default="label")
    cmd.add_argument("--high", nargs="+", metavar="VALUE", help="label values that mean high quality (the rest: low)")
    cmd.add_argument("--positive", nargs="+", metavar="PATH", help="curated documents (high quality)")
    cmd.add_argument("--negative", nargs="+", metavar="PATH", help="random web documents (low quality)")
    cmd.add_argument("--text-column", default="text")
    cmd.add_argument("--max-chars", type=int, default=10_000, help="as the quality stage's model.max_chars")
    cmd.add_argument("--valid-fraction", type=float, default=0.0, help="share held out for precision/recall")
    cmd.add_argument(
        "--threshold", type=float, default=0.5, help="score that counts as the label, for the held-out figures"
    )
    cmd.add_argument("--epoch", type=int, default=10)
    cmd.add_argument("--lr", type=float, default=0.1)
    cmd.add_argument("--word-ngrams", type=int, default=2)
    cmd.add_argument("--dim", type=int, default=64)
    cmd.add_argument("--min-count", type=int, default=2)
    cmd.add_argument("--bucket", type=int, default=200_000, help="hash buckets of the word n-grams (model size)")
    cmd.add_argument(
        "--loss",
        choices=["softmax", "ova", "hs"],
        default="softmax",
        help="ova: one-vs-all, each label scored on its own (several labels per document)",
    )
    cmd.add_argument("--seed", type=int, default=0)
    cmd.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    if bool(args.labelled) == bool(args.positive or args.negative):
        raise ValueError("train-quality: give either --labelled PATH or --positive PATH... --negative PATH...")
    if not args.labelled and not (args.positive and args.negative):
        raise ValueError("train-quality: --positive and --negative are given together")
    texts, labels, inputs = labelled_documents(args)
    distinct = {name for line in labels for name in line.split()}
    if len(distinct) < 2:
        raise ValueError(f"train-quality: the documents have {len(distinct)} label(s); a classifier needs two or more")
    params = {
        "epoch": args.epoch,
        "lr": args.lr,
        "wordNgrams": args.word_ngrams,
        "dim": args.dim,
        "minCount": args.min_count,
        "bucket": args.bucket,
        "seed": args.seed,
        "loss": args.loss,
    }
    valid = held_out(texts, args.valid_fraction) if args.valid_fraction > 0 else np.zeros(len(texts), bool)
    train_idx, valid_idx = np.flatnonzero(~valid), np.flatnonzero(valid)
    model = train([texts[i] for i in train_idx], [labels[i] for i in train_idx], params)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    model.save_model(args.output)
    label = HIGH if HIGH in distinct else max(distinct)
    report = {
        "model": args.output,
        "sha256": hashlib.sha256(Path(args.output).read_bytes()).hexdigest(),
        "tamis_version": __version__,
        "labels": {lab: sum(lab in line.split() for line in labels) for lab in sorted(distinct)},
        "inputs": inputs,
        "params": {**params, "max_chars": args.max_chars, "valid_fraction": args.valid_fraction},
        "train_documents": len(train_idx),
    }
    if len(valid_idx):
        report["held_out"] = evaluate(
            model, [texts[i] for i in valid_idx], [labels[i] for i in valid_idx], label, args.threshold
        ) | {"label": label}
    Path(args.output + ".json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps({k: report[k] for k in ("model", "sha256", "labels", "train_documents", "held_out") if k in report})
    )
    return 0
