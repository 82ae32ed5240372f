"""Writes the reference decisions the quality rules are tested against (tests/test_quality_fidelity.py).

    PYTHONPATH=include .venv/bin/python scripts/make_rule_fidelity_fixture.py [--data ../shared/data]

The documents are the repository's own excerpts (tests/data/web_en, tests/data/code/code_03,
judged as prose) and 40 UDHR translations in scripts written with spaces, copied here into
tests/data/rule_fidelity/udhr_sample.jsonl.gz. Each text goes through tamis's normalize stage
and then to datatrove 0.10.1's filters, run in the peer virtualenv (benchmarks/peer_venv.sh)
by benchmarks/datatrove_rules.py; their decisions per group and per rule are written to
tests/data/rule_fidelity/reference.jsonl.gz. Run it again only when the reference changes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa

from tamis.stages.normalize import Normalize
from tamis.stages.quality import QualityFilter

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data" / "rule_fidelity"
INPUTS = [
    "web_en/wikipedia_en_sample.jsonl.gz",
    "web_en/us_presidential_speeches.jsonl.gz",
    "web_en/movie_reviews_polarity_2000.jsonl.gz",
    "web_en/cc_c4_pile_fixtures_by_source.jsonl.gz",
    "code/code_03.jsonl.gz",
    "rule_fidelity/udhr_sample.jsonl.gz",
]


def read(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write(path: Path, records: list[dict]) -> None:
    # mtime=0: the same records give the same bytes
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        for record in records:
            f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--peer-python", default=str(REPO / "benchmarks" / ".peer-venv" / "bin" / "python"))
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)

    udhr = read(args.data / "multilingual" / "udhr_unicode_388docs.jsonl.gz")
    spaced = [r for r in udhr if not QualityFilter.unspaced(r["text"])]
    write(
        OUT / "udhr_sample.jsonl.gz",
        [{"id": r["id"], "iso639_3": r["iso639_3"], "text": r["text"]} for r in spaced[::9][:40]],
    )

    docs = [(f"{name}:{r['id']}", r["text"]) for name in INPUTS for r in read(REPO / "tests" / "data" / name)]
    table = pa.table({"id": [d for d, _ in docs], "source": ["web"] * len(docs), "text": [t for _, t in docs]})
    kept = Normalize().process_batch(table).kept
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        with open(src, "w", encoding="utf-8") as f:
            for doc_id, text in zip(kept.column("id").to_pylist(), kept.column("text").to_pylist()):
                f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
        subprocess.run(
            [args.peer_python, str(REPO / "benchmarks" / "datatrove_rules.py"), str(src), str(dst)],
            check=True,
            env={"OMP_NUM_THREADS": "1", "LOGURU_LEVEL": "ERROR"},
        )
        decisions = [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    write(OUT / "reference.jsonl.gz", decisions)
    dropped = {g: sum(d["groups"][g] is False for d in decisions) for g in decisions[0]["groups"]}
    print(f"wrote {OUT / 'reference.jsonl.gz'}: {len(decisions)} documents; dropped by the reference: {dropped}")


if __name__ == "__main__":
    sys.exit(main())
