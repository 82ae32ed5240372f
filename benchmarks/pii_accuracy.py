"""Span-level precision and recall of the PII stage on labelled sets.

Sets: ../shared/data/pii/presidio_synth_v2.jsonl (Presidio's synthetic sentences) and
nemo_curator_pii_tests.jsonl (NeMo Curator's PII test lines); their labels are mapped to
the stage's entity types below, and labels the stage does not cover are listed apart.
The peer is Presidio's stock AnalyzerEngine with its stock recognizers for the same
types (model-free NLP engine, same score threshold), run in the same process.

Matching rule: a found span is a true positive when it overlaps (shares at least one
character with) a gold span of the same entity type; each gold span is recalled when
some found span of its type overlaps it. A found span that overlaps no gold span of its
type is a false positive; the column ``fp_in_other`` says how many of those lie on a gold
span of another type (e.g. a phone number inside a labelled street address). ``exact``
counts true positives whose boundaries match the gold span exactly.

Look-alikes: numbers in running text that are not personal data (order numbers,
arithmetic, private and documentation IPv4 addresses, versions, dates, ISBN-13s, UUIDs,
prices, coordinates, bare 9-digit numbers without SSN context), generated with a fixed
seed; every finding on them is a false positive, counted by kind and entity type.

    python benchmarks/pii_accuracy.py [--data-dir DIR] [--param key=value ...]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

from tamis.stages.pii import PiiMask

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "pii"
LABELS = {
    "presidio_synth_v2.jsonl": {
        "PERSON": "PERSON",
        "STREET_ADDRESS": "STREET_ADDRESS",
        "GPE": "LOCATION",
        "CREDIT_CARD": "CREDIT_CARD",
        "PHONE_NUMBER": "PHONE_NUMBER",
        "EMAIL_ADDRESS": "EMAIL_ADDRESS",
        "IBAN_CODE": "IBAN_CODE",
        "US_SSN": "US_SSN",
        "IP_ADDRESS": "IP_ADDRESS",
    },
    "nemo_curator_pii_tests.jsonl": {
        "NAME": "PERSON",
        "ADDRESS": "STREET_ADDRESS",
        "EMAIL": "EMAIL_ADDRESS",
        "PHONE_NUMBER": "PHONE_NUMBER",
        "CREDIT_CARD_NUMBER": "CREDIT_CARD",
        "SSN": "US_SSN",
        "IP_ADDRESS": "IP_ADDRESS",
    },
}


def _overlaps(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    return a_start < b_end and b_start < a_end


def stock_presidio_analyzer():
    """Presidio's AnalyzerEngine with its stock recognizers for the six types both cover,
    on the model-free NLP engine; only the e-mail validator is swapped for one that does
    not download the public suffix list."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    from tamis.pii_recognizers import OfflineEmailRecognizer

    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (PhoneRecognizer(), CreditCardRecognizer(), IpRecognizer(), IbanRecognizer(), UsSsnRecognizer()):
        registry.add_recognizer(recognizer)
    registry.add_recognizer(
        type("StockEmail", (EmailRecognizer,), {"validate_result": OfflineEmailRecognizer.validate_result})()
    )
    return AnalyzerEngine(
        nlp_engine=NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}]), registry=registry
    )


def stock_find(min_score: float):
    analyzer = stock_presidio_analyzer()

    def find(text: str) -> list:
        return [r for r in analyzer.analyze(text, language="en") if r.score >= min_score]

    return find


def evaluate(name: str, find, covered: set[str], path: Path, labels: dict[str, str]) -> dict[str, float]:
    """Print the table for one side and return its F1 by entity type."""
    records = [json.loads(line) for line in path.open(encoding="utf-8")]
    gold_n, tp_gold, found_n, tp_found, exact, fp_other = (Counter() for _ in range(6))
    uncovered = Counter()
    started = time.perf_counter()
    for rec in records:
        gold = []
        for span in rec["spans"]:
            mapped = labels.get(span["label"])
            if mapped in covered:
                gold.append((span["start"], span["end"], mapped))
                gold_n[mapped] += 1
            else:
                uncovered[span["label"]] += 1
        found = [(r.start, r.end, r.entity_type) for r in find(rec["text"])]
        for g_start, g_end, g_type in gold:
            if any(t == g_type and _overlaps(s, e, g_start, g_end) for s, e, t in found):
                tp_gold[g_type] += 1
        for s, e, t in found:
            found_n[t] += 1
            same = [(gs, ge) for gs, ge, gt in gold if gt == t and _overlaps(s, e, gs, ge)]
            if same:
                tp_found[t] += 1
                exact[t] += any((gs, ge) == (s, e) for gs, ge in same)
            elif any(_overlaps(s, e, sp["start"], sp["end"]) for sp in rec["spans"]):
                fp_other[t] += 1
    elapsed = time.perf_counter() - started

    print(f"\n== {name} on {path.name}: {len(records)} records, {elapsed:.2f}s")
    f1_by_type = {}
    print(
        f"{'entity':<16}{'gold':>6}{'found':>7}{'precision':>11}{'recall':>8}{'f1':>7}{'exact':>7}{'fp_in_other':>13}"
    )
    for t in sorted(set(gold_n) | set(found_n)):
        p = tp_found[t] / found_n[t] if found_n[t] else float("nan")
        r = tp_gold[t] / gold_n[t] if gold_n[t] else float("nan")
        f1 = 2 * p * r / (p + r) if p + r > 0 else float("nan")
        f1_by_type[t] = f1
        print(f"{t:<16}{gold_n[t]:>6}{found_n[t]:>7}{p:>11.3f}{r:>8.3f}{f1:>7.3f}{exact[t]:>7}{fp_other[t]:>13}")
    tot_p = sum(tp_found.values()) / max(sum(found_n.values()), 1)
    tot_r = sum(tp_gold.values()) / max(sum(gold_n.values()), 1)
    print(f"{'ALL covered':<16}{sum(gold_n.values()):>6}{sum(found_n.values()):>7}{tot_p:>11.3f}{tot_r:>8.3f}")
    not_covered = ", ".join(f"{k} {v}" for k, v in uncovered.most_common())
    print(f"gold spans of types not covered (not scored): {not_covered or 'none'}")
    f1_by_type["ALL"] = 2 * tot_p * tot_r / (tot_p + tot_r) if tot_p + tot_r > 0 else float("nan")
    return f1_by_type


def look_alikes(per_kind: int = 40, seed: int = 7) -> dict[str, list[str]]:
    """Sentences holding a number that is not PII, ``per_kind`` of each kind."""
    rng = random.Random(seed)

    def d(n: int) -> str:
        return "".join(rng.choice("0123456789") for _ in range(n))

    makers = {
        "order numbers": lambda: rng.choice(
            [
                "Your order number {} has shipped.",
                "Order #{} is pending.",
                "Invoice no. {} was paid.",
                "Tracking {} left the depot.",
            ]
        ).format(rng.choice([d(10), f"{d(3)}-{d(3)}-{d(4)}", f"{d(4)} {d(4)} {d(2)}"])),
        "arithmetic": lambda: f"We know that {d(4)} * {d(4)} = {d(7)}, and {d(7)} - {d(6)} = {d(7)}.",
        "private IPv4": lambda: (
            f"Point the client at {rng.choice(['10', '192.168', '172.16'])}."
            f"{'.'.join(str(rng.randint(0, 255)) for _ in range(2))}.{rng.randint(1, 254)} first."
        ),
        "documentation IPv4": lambda: (
            f"The manual uses {rng.choice(['192.0.2', '198.51.100', '203.0.113'])}.{rng.randint(1, 254)} as the server."
        ),
        "versions": lambda: (
            f"Upgrade to version {rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 30)}.{rng.randint(0, 99)} today."
        ),
        "dates": lambda: (
            f"It moved from {rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} to {rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.{rng.randint(1990, 2030)}."
        ),
        "ISBN-13": lambda: f"The paperback is ISBN 978-{d(1)}-{d(3)}-{d(5)}-{d(1)}.",
        "UUIDs": lambda: f"Request {d(8)}-{d(4)}-4{d(3)}-a{d(3)}-{d(12)} failed.",
        "prices": lambda: f"It costs ${rng.randint(1, 999)},{d(3)},{d(3)}.{d(2)} at auction.",
        "coordinates": lambda: f"The camp is at -{rng.randint(1, 89)}.{d(10)}, -{rng.randint(1, 179)}.{d(10)}.",
        "bare 9 digits": lambda: f"Parcel {rng.randint(1, 8)}{d(8)} was delivered.",
    }
    return {kind: [make() for _ in range(per_kind)] for kind, make in makers.items()}


def count_look_alikes(name: str, find) -> None:
    print(f"\n== {name}: false positives on look-alikes (texts with a finding / texts)")
    for kind, texts in look_alikes().items():
        hit = Counter()
        flagged = 0
        for text in texts:
            types = {r.entity_type for r in find(text)}
            flagged += bool(types)
            hit.update(types)
        detail = ", ".join(f"{t} {c}" for t, c in sorted(hit.items()))
        print(f"  {kind:<20}{flagged:>3} of {len(texts)}  {detail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--param", action="append", default=[], help="stage param as key=JSON value")
    args = parser.parse_args()
    params = {}
    for item in args.param:
        key, value = item.split("=", 1)
        params[key] = json.loads(value)
    stage = PiiMask(params)
    stage.check_ready()
    print("pii params:", json.dumps(stage.params.model_dump()))
    stock = stock_find(stage.params.min_score)
    stock_types = set(stage.params.entities) - {"CN_RESIDENT_ID", "PERSON", "STREET_ADDRESS"}
    count_look_alikes("tamis pii", stage.find)
    count_look_alikes("stock Presidio", stock)
    for name, labels in LABELS.items():
        ours = evaluate("tamis pii", stage.find, set(stage.params.entities), args.data_dir / name, labels)
        peer = evaluate("stock Presidio", stock, stock_types, args.data_dir / name, labels)
        print(f"\nF1, tamis pii vs stock Presidio on {name}:")
        for t in ours:
            if t in peer:
                ratio = ours[t] / peer[t] if peer[t] == peer[t] and peer[t] > 0 else float("nan")
                print(f"  {t:<16}{ours[t]:>7.3f}{peer[t]:>7.3f}   ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
