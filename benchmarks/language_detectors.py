"""The language stage's detectors side by side: fastText lid.176, lingua, CLD2, and the
default chain (fastText, with lingua asked where fastText is unsure).

    .venv/bin/python benchmarks/language_detectors.py [--data ../shared/data] [--repeat 3]

Every detector runs through the stage itself (``LanguageFilter``), in this one process,
on the same texts in the same run. Labelled sets:

- the lingua test sentences (30 languages, 17,812 sentences);
- the UDHR translations in a language lingua knows (the set benchmarks/cleaning_accuracy.py
  uses), and the part of them in a language all three detectors know;
- the trafilatura evaluation web pages whose declared ``html_lang`` agrees with langid.py's
  prediction (two independent signals).

Printed:

1. label accuracy, every text given its top language (min_confidence 0; for the chain,
   the fallback's answer always taken) — the figure benchmarks/cleaning_accuracy.py prints;
2. as a filter, at each variant's default thresholds: the share of texts kept with the
   right label, and the share kept with a wrong one;
3. speed per core: MB/s (whole documents' bytes, though only a prefix is examined) and
   docs/s over this process's CPU time (so other load on the machine does not count), on
   the web_en documents (the set benchmarks/cleaning_speed.py uses), the multilingual web
   pages and the sentences, the best of ``--repeat`` passes;
4. calibration: how often each detector is right within each band of its own score, and
   for the chain, the filter figures at other fastText thresholds — how
   CALIBRATED_MIN_CONFIDENCE was set.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa

from tamis.stages.language import CALIBRATED_MIN_CONFIDENCE, LanguageFilter, known_languages

BATCH = 2048
ALONE = {"fallback": None}
# name -> (params of the default configuration, params that give every text its top language)
VARIANTS = {
    "fasttext+lingua (default)": ({}, {"fallback_min_confidence": 0.0}),
    "fasttext": (ALONE, {**ALONE, "min_confidence": 0.0}),
    "lingua": ({**ALONE, "detector": "lingua"}, {**ALONE, "detector": "lingua", "min_confidence": 0.0}),
    "cld2": ({**ALONE, "detector": "cld2"}, {**ALONE, "detector": "cld2", "min_confidence": 0.0}),
    "fasttext+lingua, 1000 chars": ({"max_chars": 1000}, {"max_chars": 1000, "fallback_min_confidence": 0.0}),
}
STANDALONE = ("fasttext", "lingua", "cld2")
BANDS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01]


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def as_table(texts: list[str]) -> pa.Table:
    return pa.table({"id": [str(i) for i in range(len(texts))], "source": ["bench"] * len(texts), "text": texts})


def make_stage(params: dict) -> LanguageFilter:
    stage = LanguageFilter(params)
    stage.setup()
    stage.process_batch(as_table(["warm up the detector", "Taxi"]))  # loads a fallback too
    return stage


def predict(stage: LanguageFilter, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(lang, lang_score, kept, CPU seconds) of every text; lang ``und`` where dropped."""
    langs = np.full(len(texts), "und", dtype=object)
    scores = np.zeros(len(texts))
    kept_mask = np.zeros(len(texts), dtype=bool)
    seconds = 0.0
    for start in range(0, len(texts), BATCH):
        table = as_table(texts[start : start + BATCH])
        started = time.process_time()
        kept = stage.process_batch(table).kept
        seconds += time.process_time() - started
        rows = start + np.array(kept.column("id").to_pylist(), dtype=np.int64)
        langs[rows] = kept.column("lang").to_numpy(zero_copy_only=False)
        scores[rows] = kept.column("lang_score").to_numpy()
        kept_mask[rows] = True
    return langs, scores, kept_mask, seconds


def is_right(langs: np.ndarray, labels: list[str]) -> np.ndarray:
    # lid.176, CLD2 and the stage say "no" for Norwegian where the UDHR label is Bokmål.
    labels = np.array(["no" if label == "nb" else label for label in labels], dtype=object)
    return langs == labels


def labelled_sets(data: Path) -> dict[str, tuple[list[str], list[str]]]:
    sentences = read_jsonl(data / "multilingual" / "lingua_sentences_30lang.jsonl")
    sets = {"lingua sentences, 30 languages": ([r["text"] for r in sentences], [r["lang"] for r in sentences])}

    from lingua import Language

    iso3 = {lang.iso_code_639_3.name.lower(): lang.iso_code_639_1.name.lower() for lang in Language.all()}
    udhr = read_jsonl(data / "multilingual" / "udhr_unicode_388docs.jsonl.gz")
    lingua_known = known_languages("lingua") | {"nb"}
    labelled = [(r["text"], iso3.get(r["iso639_3"]) or iso3.get(r["lang_code"].split("_")[0])) for r in udhr]
    labelled = [(t, l) for t, l in labelled if l in lingua_known]
    sets["UDHR, languages lingua knows"] = ([t for t, _ in labelled], [l for _, l in labelled])
    everyone = known_languages("lingua") & known_languages("fasttext") & known_languages("cld2")
    common = [(t, l) for t, l in labelled if ("no" if l == "nb" else l) in everyone]
    sets["UDHR, languages all three know"] = ([t for t, _ in common], [l for _, l in common])

    pages = read_jsonl(data / "multilingual" / "trafilatura_eval_pages_non_en.jsonl.gz")
    agreed = [
        (r["text"], r["langid_pred"])
        for r in pages
        if r["html_lang"] and r["html_lang"].replace("_", "-").split("-")[0].lower() == r["langid_pred"]
    ]
    sets["web pages, html_lang = langid"] = ([t for t, _ in agreed], [l for _, l in agreed])
    return sets


def speed_sets(data: Path, sets: dict) -> dict[str, list[str]]:
    web_en = []
    for path in sorted((data / "web_en").iterdir()):
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            web_en.extend(r["text"] for r in read_jsonl(path))
    pages = [r["text"] for r in read_jsonl(data / "multilingual" / "trafilatura_eval_pages_non_en.jsonl.gz")]
    return {
        "web_en documents": web_en,
        "multilingual web pages": pages,
        "lingua sentences": sets["lingua sentences, 30 languages"][0],
    }


def table_header(first: str, width: int, columns: list[str]) -> str:
    return f"{first:{width}} " + " ".join(f"{c:>27}" for c in columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=3, help="speed passes per variant and set (best kept)")
    args = parser.parse_args()

    sets = labelled_sets(args.data)
    names = list(VARIANTS)
    default_stages = {name: make_stage(default) for name, (default, _) in VARIANTS.items()}
    top_stages = {name: make_stage(top) for name, (_, top) in VARIANTS.items()}
    print("calibrated min_confidence:", CALIBRATED_MIN_CONFIDENCE)

    print("\n== 1. label accuracy, every text given its top language")
    print(table_header("set (texts)", 40, names))
    top_scores: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in STANDALONE}
    confusions = {}
    for set_name, (texts, labels) in sets.items():
        row = []
        for name in names:
            langs, scores, _, _ = predict(top_stages[name], texts)
            right = is_right(langs, labels)
            row.append(f"{right.mean():27.4f}")
            if name in STANDALONE and set_name != "UDHR, languages all three know":
                top_scores[name].append((scores, right))
            if name in STANDALONE or name.endswith("(default)"):
                confusions[set_name, name] = Counter((l, p) for p, l, r in zip(langs, labels, right) if not r)
        print(f"{set_name + f' ({len(texts)})':40} " + " ".join(row))
    for (set_name, name), counts in confusions.items():
        print(
            f"  {set_name}, {name}: top confusions (label->predicted) "
            + ", ".join(f"{l}->{p} {c}" for (l, p), c in counts.most_common(4))
        )

    print("\n== 2. as a filter, default thresholds: kept with the right label / kept with a wrong one")
    print(table_header("set", 40, names))
    for set_name, (texts, labels) in sets.items():
        row = []
        for name in names:
            langs, _, kept, _ = predict(default_stages[name], texts)
            right = is_right(langs, labels)
            row.append(f"{(kept & right).mean():19.4f} / {(kept & ~right).mean():.4f}")
        print(f"{set_name:40} " + " ".join(row))

    print(f"\n== 3. speed per core (CPU time of this process), best of {args.repeat}: MB/s, docs/s")
    print(table_header("set (docs, MB)", 40, names))
    for set_name, texts in speed_sets(args.data, sets).items():
        mb = sum(len(t.encode()) for t in texts) / 1e6
        row = []
        for name in names:
            seconds = min(predict(default_stages[name], texts)[3] for _ in range(args.repeat))
            row.append(f"{mb / seconds:17.1f} {len(texts) / seconds:9.0f}")
        print(f"{set_name + f' ({len(texts)}, {mb:.1f})':40} " + " ".join(row))

    print("\n== 4a. calibration: share right within each band of the detector's own score")
    print("   (sentences, UDHR lingua set and web pages together; texts in the band)")
    print(f"{'score band':12} " + " ".join(f"{name:>16}" for name in STANDALONE))
    pooled = {
        name: (np.concatenate([s for s, _ in pairs]), np.concatenate([r for _, r in pairs]))
        for name, pairs in top_scores.items()
    }
    for low, high in pairwise(BANDS):
        cells = []
        for name in STANDALONE:
            scores, right = pooled[name]
            band = (scores >= low) & (scores < high)
            cells.append(f"{right[band].mean():9.3f} {band.sum():6d}" if band.any() else f"{'-':>16}")
        print(f"[{low:.1f}, {min(high, 1.0):.1f}{')' if high < 1 else ']'}   " + " ".join(cells))

    print("\n== 4b. the chain at other fastText thresholds: kept right / kept wrong")
    thresholds = (0.3, 0.4, 0.5, 0.6, 0.7)
    print(table_header("set", 40, [f"min_confidence {t}" for t in thresholds]))
    chains = {t: make_stage({"min_confidence": t}) for t in thresholds}
    for set_name, (texts, labels) in sets.items():
        row = []
        for t in thresholds:
            langs, _, kept, _ = predict(chains[t], texts)
            right = is_right(langs, labels)
            row.append(f"{(kept & right).mean():19.4f} / {(kept & ~right).mean():.4f}")
        print(f"{set_name:40} " + " ".join(row))


if __name__ == "__main__":
    main()
