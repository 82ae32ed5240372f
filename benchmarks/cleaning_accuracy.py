"""Accuracy of the language and quality stages on labelled real data.

    .venv/bin/python benchmarks/cleaning_accuracy.py [--data ../shared/data] [--per-lang 600]

Language: the stage's ``lang`` against the labels of the lingua test sentences
(30 languages) and of the UDHR translations in a language lingua knows; langid.py
1.1.6 on the same texts when it is installed (the peer). Quality: precision/recall of
"kept" against the DCLM human labels (1 = high quality), and the drop rate of SMS spam
against ham.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa

from tamis.stages.language import LanguageFilter, known_languages
from tamis.stages.quality import QualityFilter


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def as_table(texts: list[str], lang: list[str] | None = None) -> pa.Table:
    table = pa.table({"id": [str(i) for i in range(len(texts))], "source": ["bench"] * len(texts), "text": texts})
    return table if lang is None else table.append_column("lang", pa.array(lang, pa.string()))


def predict_languages(texts: list[str]) -> tuple[list[str], float]:
    # Every text gets its top language: the fallback's answer wherever the detector is unsure.
    stage = LanguageFilter({"fallback_min_confidence": 0.0})
    stage.process_batch(as_table(["warm up"]))
    started = time.perf_counter()
    predicted = ["und"] * len(texts)
    for start in range(0, len(texts), 2048):
        result = stage.process_batch(as_table(texts[start : start + 2048]))
        for row in result.kept.select(["id", "lang"]).to_pylist():
            predicted[start + int(row["id"])] = row["lang"]
    return predicted, time.perf_counter() - started


def langid_predict(texts: list[str]) -> tuple[list[str], float] | None:
    try:
        import langid
    except ImportError:
        return None
    langid.classify("warm up")
    started = time.perf_counter()
    predicted = [langid.classify(t)[0] for t in texts]
    return predicted, time.perf_counter() - started


def report_language(name: str, texts: list[str], labels: list[str]) -> None:
    print(f"\n== language: {name} ({len(texts)} texts, {len(set(labels))} languages)")
    ours, ours_s = predict_languages(texts)
    peer = langid_predict(texts)
    per_lang: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for label, a, b in zip(labels, ours, peer[0] if peer else ours):
        per_lang[label][0] += 1
        per_lang[label][1] += a == label
        per_lang[label][2] += b == label
    header = f"{'lang':6} {'n':>5} {'tamis':>7}" + (f" {'langid':>7}" if peer else "")
    print(header)
    for lang in sorted(per_lang):
        n, a, b = per_lang[lang]
        print(f"{lang:6} {n:5d} {a / n:7.3f}" + (f" {b / n:7.3f}" if peer else ""))
    ours_acc = sum(a == l for a, l in zip(ours, labels)) / len(labels)
    print(f"overall tamis accuracy {ours_acc:.4f}  ({len(texts) / ours_s:.0f} docs/s)")
    if peer:
        peer_acc = sum(b == l for b, l in zip(peer[0], labels)) / len(labels)
        print(f"overall langid accuracy {peer_acc:.4f}  ({len(texts) / peer[1]:.0f} docs/s)")
        print(f"accuracy ratio tamis/langid {ours_acc / peer_acc:.3f}; speed ratio {peer[1] / ours_s:.2f}x")
    confusions = Counter((l, a) for a, l in zip(ours, labels) if a != l).most_common(5)
    print("top confusions (label -> predicted):", ", ".join(f"{l}->{a} {c}" for (l, a), c in confusions))


def report_quality(data: Path) -> None:
    stage = QualityFilter()
    dclm = read_jsonl(data / "quality" / "dclm_human_quality.jsonl")
    started = time.perf_counter()
    result = stage.process_batch(as_table([r["text"] for r in dclm]))
    elapsed = time.perf_counter() - started
    kept = {int(i) for i in result.kept.column("id").to_pylist()}
    for subset, rows in (
        ("all", range(len(dclm))),
        ("unanimous", [i for i, r in enumerate(dclm) if r.get("annotators_unanimous")]),
    ):
        rows = list(rows)
        high = {i for i in rows if dclm[i]["label"] == 1}
        kept_here = kept & set(rows)
        tp = len(kept_here & high)
        precision = tp / len(kept_here) if kept_here else 0.0
        recall = tp / len(high) if high else 0.0
        base = len(high) / len(rows)
        print(f"\n== quality vs DCLM human labels ({subset}: {len(rows)} docs, {len(high)} high)")
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        correct = tp + len(set(rows) - high - kept_here)
        print(
            f"kept {len(kept_here)}  precision {precision:.3f} (base rate {base:.3f})  recall {recall:.3f}"
            f"  F1 {f1:.3f}  accuracy {correct / len(rows):.3f}"
        )
    print(f"({len(dclm) / elapsed:.0f} docs/s)")
    print("drop reasons:", dict(Counter(result.dropped.column("reason").to_pylist()).most_common()))

    sms = read_jsonl(data / "quality" / "sms_spam_collection.jsonl")
    # Default rules, then with the document-length rules off (messages are a few words long).
    short = QualityFilter({"gopher": {"min_words": None}, "c4": {"min_sentences": None}})
    for profile, sms_stage in (("default rules", stage), ("length rules off", short)):
        result = sms_stage.process_batch(as_table([r["text"] for r in sms]))
        dropped = {int(i) for i in result.dropped.column("id").to_pylist()}
        print(f"\n== SMS spam vs ham, {profile}")
        for label in ("spam", "ham"):
            rows = [i for i, r in enumerate(sms) if r["label"] == label]
            rate = sum(i in dropped for i in rows) / len(rows)
            print(f"SMS {label}: {len(rows)} messages, dropped {rate:.3f}")
        print("SMS drop reasons:", dict(Counter(result.dropped.column("reason").to_pylist()).most_common(5)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--per-lang", type=int, default=600, help="sentences per language (max 600)")
    parser.add_argument("--only", choices=["language", "quality"], help="run one half")
    args = parser.parse_args()
    if args.only == "quality":
        report_quality(args.data)
        return

    sentences = read_jsonl(args.data / "multilingual" / "lingua_sentences_30lang.jsonl")
    by_lang: dict[str, list[dict]] = defaultdict(list)
    for r in sentences:
        if len(by_lang[r["lang"]]) < args.per_lang:
            by_lang[r["lang"]].append(r)
    chosen = [r for rows in by_lang.values() for r in rows]
    report_language("lingua test sentences", [r["text"] for r in chosen], [r["lang"] for r in chosen])

    from lingua import Language

    iso3 = {lang.iso_code_639_3.name.lower(): lang.iso_code_639_1.name.lower() for lang in Language.all()}
    udhr = read_jsonl(args.data / "multilingual" / "udhr_unicode_388docs.jsonl.gz")
    known = known_languages("lingua")
    # The stage names Norwegian Bokmål "no", as lid.176 and CLD2 do.
    iso3 = {code: "no" if iso == "nb" else iso for code, iso in iso3.items()}
    labelled = [(r["text"], iso3.get(r["iso639_3"]) or iso3.get(r["lang_code"].split("_")[0])) for r in udhr]
    labelled = [(t, l) for t, l in labelled if l in known]
    print(f"\nUDHR: {len(labelled)} of {len(udhr)} documents are in a language lingua knows")
    report_language("UDHR translations", [t for t, _ in labelled], [l for _, l in labelled])

    if args.only is None:
        report_quality(args.data)


if __name__ == "__main__":
    main()
