"""The quality stage's fastText model against its heuristics, on held-out human labels.

    .venv/bin/python benchmarks/quality_model.py [--data ../shared/data] [--min-score 0.5]

Labels: the DCLM human quality annotations (``<data>/quality/dclm_human_quality.jsonl``,
mlfoundations/dclm @ 361714bd, MIT: 499 Common Crawl documents, 1 = high quality). They
are split deterministically by a hash of the id: the train half trains a model, the
held-out half is scored. Two models, both by ``tamis train-quality``:

* ``labels``: trained on the train half's labels (``--labelled ... --high 1``);
* ``dclm recipe``: curated text (Wikipedia and US presidential speeches from
  ``<data>/web_en``) against random web text (the Common Crawl / C4 samples of
  ``<data>/web_en/cc_c4_pile_fixtures_by_source.jsonl``), no DCLM label used.

For the held-out half: precision and recall of "kept" against "high quality" for the
rules alone (the default pipeline's quality parameters), each model alone (score >=
``--min-score``) and rules then model (what the stage does with ``model.min_score``).
Speed: documents per second on one core of the stage on every DCLM document, rules alone
and rules + model, in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import pyarrow as pa

from tamis.pipeline import load_pipeline
from tamis.quality_model import run_command
from tamis.stages.quality import QualityFilter

REPO = Path(__file__).resolve().parents[1]


def read(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def train(output: Path, **inputs) -> str:
    args = Namespace(
        output=str(output),
        labelled=None,
        label_column="label",
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
        dim=64,
        min_count=2,
        bucket=200_000,
        seed=0,
        loss="softmax",
    )
    for key, value in inputs.items():
        setattr(args, key, value)
    run_command(args)
    return str(output)


def pr(kept: np.ndarray, high: np.ndarray) -> str:
    tp = int((kept & high).sum())
    return f"{tp / max(int(kept.sum()), 1):.3f} / {tp / max(int(high.sum()), 1):.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--min-score", type=float, default=0.5)
    args = parser.parse_args()

    rows = read(args.data / "quality" / "dclm_human_quality.jsonl")
    held = np.array([int(hashlib.blake2b(r["id"].encode(), digest_size=4).hexdigest(), 16) % 2 == 1 for r in rows])
    test = [r for r, h in zip(rows, held) if h]
    high = np.array([str(r["label"]) == "1" for r in test])
    table = pa.table({"id": [r["id"] for r in test], "source": ["dclm"] * len(test), "text": [r["text"] for r in test]})
    params = load_pipeline("default").spec("quality").params

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_file = tmp / "train.jsonl"
        train_file.write_text("".join(json.dumps(r) + "\n" for r, h in zip(rows, held) if not h))
        models = {
            "labels": train(tmp / "labels.bin", labelled=str(train_file), high=["1"]),
            "dclm recipe": train(
                tmp / "recipe.bin",
                positive=[
                    str(args.data / "web_en" / f)
                    for f in ("wikipedia_en_sample.jsonl", "us_presidential_speeches.jsonl")
                ],
                negative=[str(args.data / "web_en" / "cc_c4_pile_fixtures_by_source.jsonl")],
            ),
        }
        rules = QualityFilter(params).process_batch(table)
        rules_kept = np.isin(
            table.column("id").to_numpy(zero_copy_only=False), rules.kept.column("id").to_numpy(zero_copy_only=False)
        )
        print(
            f"held-out DCLM human labels: {len(test)} documents ({int(high.sum())} high quality); "
            f"precision / recall of kept vs high, min_score {args.min_score}"
        )
        print(f"{'rules alone':<34}{pr(rules_kept, high):>16}")
        for name, path in models.items():
            # Model alone: every document scored, none dropped by rules.
            alone = QualityFilter(_rules_off(params) | {"model": {"path": path}}).process_batch(table)
            score = np.array(alone.kept.column("quality_model_score").to_pylist())
            both_ids = set(
                QualityFilter({**params, "model": {"path": path, "min_score": args.min_score}})
                .process_batch(table)
                .kept.column("id")
                .to_pylist()
            )
            both = np.array([i in both_ids for i in table.column("id").to_pylist()])
            print(f"{'model alone (' + name + ')':<34}{pr(score >= args.min_score, high):>16}")
            print(f"{'rules + model (' + name + ')':<34}{pr(both, high):>16}")

        every = pa.table(
            {"id": [r["id"] for r in rows], "source": ["dclm"] * len(rows), "text": [r["text"] for r in rows]}
        )
        mb = sum(len(r["text"].encode()) for r in rows) / 1e6
        timings = {}
        for label, stage in (
            ("rules", QualityFilter(params)),
            ("rules + model", QualityFilter({**params, "model": {"path": models["labels"]}})),
        ):
            stage.setup()
            stage.process_batch(every.slice(0, 5))
            started = time.perf_counter()
            for _ in range(3):
                stage.process_batch(every)
            timings[label] = (time.perf_counter() - started) / 3
            print(f"speed, {label}: {len(rows) / timings[label]:,.0f} docs/s/core ({mb / timings[label]:.1f} MB/s)")
        print(f"the model costs {timings['rules + model'] / timings['rules'] - 1:+.0%} over the rules alone")
    return 0


def _rules_off(params: dict) -> dict:
    """The stage's parameters with every rule off: the model alone decides."""
    gopher = {
        k: None
        for k in (
            "min_words",
            "max_words",
            "min_mean_word_length",
            "max_mean_word_length",
            "max_hash_word_ratio",
            "max_ellipsis_word_ratio",
            "max_bullet_lines_ratio",
            "max_ellipsis_lines_ratio",
            "min_alpha_words_ratio",
            "min_stop_words",
            "max_dup_line_frac",
            "max_dup_para_frac",
            "max_dup_line_char_frac",
            "max_dup_para_char_frac",
        )
    }
    return {
        **params,
        "gopher": gopher | {"max_top_ngram_char_frac": {}, "max_dup_ngram_char_frac": {}},
        "c4": {
            "lorem_ipsum": False,
            "curly_bracket": False,
            "min_sentences": None,
            "max_boilerplate_lines_ratio": None,
        },
        "fineweb": {
            "min_line_punct_ratio": None,
            "max_short_line_ratio": None,
            "max_char_dup_ratio": None,
            "max_list_ratio": None,
        },
        "code": {
            "autogenerated": False,
            "max_encoded_fraction": None,
            "max_line_length": None,
            "max_mean_line_length": None,
            "min_alnum_fraction": None,
        },
    }


if __name__ == "__main__":
    raise SystemExit(main())
