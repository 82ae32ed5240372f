"""Fidelity of the named quality rules to their reference, datatrove 0.10.1.

    .venv/bin/python benchmarks/rule_fidelity.py [--data ../shared/data] [--peer-python PYTHON] [--sets web_en,multilingual,code]

For each set, every document goes through tamis's normalize stage and then, as text, to
datatrove's GopherQualityFilter, GopherRepetitionFilter, C4QualityFilter
(``filter_no_terminal_punct=False``) and FineWebQualityFilter with their defaults
(benchmarks/datatrove_rules.py, run in the peer virtualenv made by benchmarks/peer_venv.sh).
tamis's quality stage judges the RAW text, without normalize, with the
reference-equivalent profile (``QualityParams.reference()``: the defaults plus the C4
curly-bracket rule on, the group-only extras off): it must reach the same decisions as the
reference does on the normalized text. Per group and per rule it prints the agreement, the
documents tamis keeps and datatrove drops and the reverse, with five example ids of each.

Sets: web_en (all of it), multilingual (the non-English web pages and the UDHR translations,
documents in scripts written without spaces left out: the reference splits them with an
English word tokenizer, tamis skips its word rules there), code (source files judged as prose,
a stress test of the word and line rules; tamis itself judges code with its code rules).
The reference's decisions are cached under benchmarks/out/ by content hash.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from tamis.stages.normalize import Normalize
from tamis.stages.quality import GROUPS, QualityFilter, QualityParams

HERE = Path(__file__).resolve().parent


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_set(data: Path, name: str) -> list[tuple[str, str]]:
    if name == "web_en":
        paths = sorted(p for p in (data / "web_en").iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    elif name == "multilingual":
        paths = [
            data / "multilingual" / "trafilatura_eval_pages_non_en.jsonl.gz",
            data / "multilingual" / "udhr_unicode_388docs.jsonl.gz",
        ]
    elif name == "code":
        paths = sorted((data / "code").glob("code_*.jsonl.gz"))
    else:
        raise SystemExit(f"rule_fidelity: error: unknown set {name!r}")
    return [(r["id"], r["text"]) for path in paths for r in read_jsonl(path)]


def normalized(docs: list[tuple[str, str]]) -> dict[str, str]:
    """What normalize hands to the next stage: the reference judges this text."""
    table = pa.table({"id": [d for d, _ in docs], "source": ["web"] * len(docs), "text": [t for _, t in docs]})
    kept = Normalize().process_batch(table).kept
    return dict(zip(kept.column("id").to_pylist(), kept.column("text").to_pylist()))


def reference(texts: dict[str, str], peer_python: str, cache: Path) -> dict[str, dict]:
    digest = hashlib.sha256(json.dumps(sorted(texts.items())).encode()).hexdigest()[:16]
    digest += hashlib.sha256((HERE / "datatrove_rules.py").read_bytes()).hexdigest()[:8]
    out = cache / f"reference-{digest}.jsonl"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        src = cache / f"input-{digest}.jsonl"
        with open(src, "w", encoding="utf-8") as f:
            for doc_id, text in texts.items():
                f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
        started = time.perf_counter()
        tmp = out.with_suffix(".part")
        subprocess.run(
            [peer_python, str(HERE / "datatrove_rules.py"), str(src), str(tmp)],
            check=True,
            env={"OMP_NUM_THREADS": "1", "LOGURU_LEVEL": "ERROR"},
        )
        tmp.rename(out)
        src.unlink()
        print(f"  (datatrove judged {len(texts)} documents in {time.perf_counter() - started:.0f} s)")
    return {r["id"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}


def tamis_decisions(docs: list[tuple[str, str]], params: QualityParams) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per rule, True where tamis's rule keeps the document (raw text, no normalize before it)."""
    stage = QualityFilter(params)
    table = pa.table({"id": [d for d, _ in docs], "source": ["web"] * len(docs), "text": [t for _, t in docs]})
    failed = stage.rule_failures(table)
    return {rule: ~mask for rule, mask in failed.items()}, [d for d, _ in docs]


def compare(label: str, ours: np.ndarray, theirs: list, ids: list[str]) -> tuple[str, float]:
    known = np.array([t is not None for t in theirs])
    ref = np.array([bool(t) for t in theirs])
    same = (ours == ref) & known
    we_keep = np.flatnonzero(ours & ~ref & known)
    we_drop = np.flatnonzero(~ours & ref & known)
    n = int(known.sum())
    agreement = same.sum() / max(n, 1)
    examples = lambda rows: ", ".join(ids[i] for i in rows[:5])  # noqa: E731
    line = (
        f"{label:30} {int((~ours & known).sum()):7d} {int((~ref & known).sum()):7d} {100 * agreement:7.2f} %"
        f" {len(we_keep):6d} {len(we_drop):6d}" + (f" {len(known) - n:5d}" if n < len(known) else "")
    )
    if len(we_keep):
        line += f"\n{'':32}tamis keeps, datatrove drops: {examples(we_keep)}"
    if len(we_drop):
        line += f"\n{'':32}tamis drops, datatrove keeps: {examples(we_drop)}"
    return line, agreement


def report(
    name: str, docs: list[tuple[str, str]], peer_python: str, cache: Path, params: QualityParams
) -> dict[str, float]:
    texts = normalized(docs)
    docs = [(d, t) for d, t in docs if d in texts]
    ref = reference(texts, peer_python, cache)
    ours, ids = tamis_decisions(docs, params)
    print(f"\n== {name}: {len(docs)} documents")
    print(f"{'group / rule':30} {'dropped':>7} {'by ref':>7} {'same':>9} {'keeps':>6} {'drops':>6} {'n/a':>5}")
    print("(dropped: by tamis; keeps: tamis keeps, datatrove drops; drops: the reverse; n/a: the reference raised)")
    result = {}
    for group, rules in GROUPS.items():
        kept = np.ones(len(ids), dtype=bool)
        for rule in rules:
            if rule in ours:
                kept &= ours[rule]
        line, agreement = compare(group.upper(), kept, [ref[i]["groups"][group] for i in ids], ids)
        print(line)
        result[group] = agreement
        for rule in rules:
            if rule not in ours:
                print(f"  {rule:28} (off in this profile)")
                continue
            if rule not in ref[ids[0]]["rules"]:
                print(f"  {rule:28} {int((~ours[rule]).sum()):7d}  (no reference rule)")
                continue
            print("  " + compare(rule, ours[rule], [ref[i]["rules"][rule] for i in ids], ids)[0])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data")
    parser.add_argument("--peer-python", default=str(HERE / ".peer-venv" / "bin" / "python"))
    parser.add_argument("--sets", default="web_en,multilingual,code")
    parser.add_argument("--cache", type=Path, default=HERE / "out" / "rule_fidelity")
    parser.add_argument(
        "--profile",
        choices=["reference", "defaults"],
        default="reference",
        help="tamis's rules as the reference has them (default), or tamis's own defaults",
    )
    args = parser.parse_args()
    params = QualityParams.reference() if args.profile == "reference" else QualityParams()
    print(f"tamis profile: {args.profile}")
    summary = {}
    for name in args.sets.split(","):
        docs = load_set(args.data, name)
        if name == "multilingual":
            docs = [(d, t) for d, t in docs if not QualityFilter.unspaced(t)]
        summary[name] = report(name, docs, args.peer_python, args.cache, params)
    print("\n== agreement with datatrove 0.10.1, per group")
    print(f"{'set':14}" + "".join(f"{g:>19}" for g in GROUPS))
    for name, groups in summary.items():
        print(f"{name:14}" + "".join(f"{100 * groups[g]:18.2f}%" for g in GROUPS))


if __name__ == "__main__":
    sys.exit(main())
