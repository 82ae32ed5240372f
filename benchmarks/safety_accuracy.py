"""Accuracy and speed of the safety stage on labelled data.

    .venv/bin/python benchmarks/safety_accuracy.py [--data ../shared/data] [--folds 2]

Labels: the evaluation set of "A Holistic Approach to Undesired Content Detection" (Markov
et al. 2022; openai/moderation-api-release @ f4ab51b5, ``data/samples-1680.jsonl.gz``, MIT),
copied in ``tests/data/safety``: 1,680 texts, each labelled for sexual (S), hate (H),
violence (V) and self-harm (SH) where the annotators decided (a missing label is unknown:
those texts do not count for that category). Per category, precision and recall of a
document scoring at or above the threshold:

* ``lists``: the package's term lists (no training on this set);
* ``model``: a fastText one-vs-all model trained by ``tamis train-quality --loss ova`` on the
  set itself, cross-validated (``--folds`` deterministic folds by text hash: each text is
  scored by the model that did not see it);
* ``both``: the larger of the two scores, as the stage combines them.

False positives on clean text: the share of real documents with no undesired content
(Wikipedia articles, US presidential speeches, movie reviews from ``<data>/web_en``) that
each category's lists flag. Speed: documents per second on one core, lists alone and with the model.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import pyarrow as pa

from tamis.quality_model import run_command
from tamis.stages.safety import CATEGORIES, ContentSafety

REPO = Path(__file__).resolve().parents[1]
CODES = {"sexual": "S", "hate": "H", "violence": "V", "self_harm": "SH"}


def read(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def precision_recall(predicted: np.ndarray, actual: np.ndarray) -> tuple[float, float, int]:
    tp = int((predicted & actual).sum())
    return tp / max(int(predicted.sum()), 1), tp / max(int(actual.sum()), 1), int(actual.sum())


def train_fold(rows: list[dict], folder: Path, k: int) -> str:
    path = folder / f"fold{k}.jsonl"
    with open(path, "w") as f:
        for r in rows:
            cats = [c for c, code in CODES.items() if r.get(code) == 1]
            f.write(json.dumps({"text": r["prompt"], "categories": cats}) + "\n")
    model = str(folder / f"fold{k}.bin")
    args = Namespace(
        output=model,
        labelled=str(path),
        label_column="categories",
        high=None,
        positive=None,
        negative=None,
        text_column="text",
        max_chars=10_000,
        valid_fraction=0.0,
        threshold=0.5,
        epoch=25,
        lr=0.5,
        word_ngrams=2,
        dim=32,
        min_count=1,
        bucket=200_000,
        seed=0,
        loss="ova",
    )
    run_command(args)
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()

    rows = read(REPO / "tests/data/safety/openai_moderation_samples.jsonl.gz")
    texts = pa.array([r["prompt"] for r in rows], pa.string())
    lists = ContentSafety({"threshold": args.threshold})
    list_scores = lists.scores(texts)

    fold = np.array(
        [int(hashlib.blake2b(r["prompt"].encode(), digest_size=4).hexdigest(), 16) % args.folds for r in rows]
    )
    model_scores = {c: np.zeros(len(rows)) for c in CATEGORIES}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.folds):
            model = train_fold([r for r, f in zip(rows, fold) if f != k], Path(tmp), k)
            held = np.flatnonzero(fold == k)
            scored = ContentSafety({"model": model, "default_lists": False}).scores(texts.take(pa.array(held)))
            for c in CATEGORIES:
                model_scores[c][held] = scored[c]
        speed_model = model

        print(
            f"labelled set: {len(rows)} texts (openai/moderation-api-release samples-1680); threshold {args.threshold}"
        )
        print(f"{'category':<11}{'positives':>10}{'known':>7}  {'lists P/R':>13}  {'model P/R':>13}  {'both P/R':>13}")
        for c in CATEGORIES:
            known = np.array([CODES[c] in r for r in rows])
            actual = np.array([r.get(CODES[c]) == 1 for r in rows])[known]
            cells = []
            for scores in (list_scores[c], model_scores[c], np.maximum(list_scores[c], model_scores[c])):
                p, r, pos = precision_recall(scores[known] >= args.threshold, actual)
                cells.append(f"{p:.2f} / {r:.2f}")
            print(f"{c:<11}{pos:>10}{int(known.sum()):>7}  {cells[0]:>13}  {cells[1]:>13}  {cells[2]:>13}")

        clean = [
            r["text"]
            for name in (
                "wikipedia_en_sample.jsonl",
                "us_presidential_speeches.jsonl",
                "movie_reviews_polarity_2000.jsonl.gz",
            )
            for r in read(args.data / "web_en" / name)
        ]
        clean_scores = lists.scores(pa.array(clean, pa.string()))
        flagged = ", ".join(f"{c} {np.mean(clean_scores[c] >= args.threshold):.2%}" for c in CATEGORIES)
        print(f"clean text flagged by the lists ({len(clean)} Wikipedia, speech and review documents): {flagged}")

        table = pa.table({"id": [str(i) for i in range(len(clean))], "source": ["b"] * len(clean), "text": clean})
        mb = sum(len(t.encode()) for t in clean) / 1e6
        for label, stage in (("lists", lists), ("lists + model", ContentSafety({"model": speed_model}))):
            stage.setup()
            stage.process_batch(table.slice(0, 10))
            started = time.perf_counter()
            for start in range(0, len(clean), 2048):
                stage.process_batch(table.slice(start, 2048))
            seconds = time.perf_counter() - started
            print(
                f"speed, {label}: {len(clean) / seconds:,.0f} docs/s/core ({mb / seconds:.1f} MB/s), {len(clean)} docs of {mb:.1f} MB"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
