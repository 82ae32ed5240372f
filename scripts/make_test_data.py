"""Rebuild tests/data/ from the evaluation corpora (../shared/data in the development
checkout): the first records of the files the tests read, so that the test suite needs
nothing outside the repository. Deterministic: the same inputs give the same files.

    python scripts/make_test_data.py [SHARED_DATA_DIR]
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

DATA = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data")
OUT = Path(__file__).resolve().parents[1] / "tests" / "data"

# (file under the corpora, records kept): what the tests read, and no more.
SUBSETS = [
    ("web_en/wikipedia_en_sample.jsonl", 80),
    ("web_en/us_presidential_speeches.jsonl", 40),
    ("web_en/movie_reviews_polarity_2000.jsonl.gz", 150),
    ("web_en/cc_c4_pile_fixtures_by_source.jsonl", 80),
    ("code/code_00.jsonl.gz", 200),
    ("code/code_01.jsonl.gz", 120),
    ("code/code_03.jsonl.gz", 60),
    ("pii/presidio_synth_v2.jsonl", None),
]
# (file, field, values): the records whose field has one of the values, in file order.
SELECTED = [
    # UDHR in scripts lid.176 and lingua do not read, and in languages lid.176 lacks.
    (
        "multilingual/udhr_unicode_388docs.jsonl.gz",
        "lang_code",
        {"chr", "iii", "tzm_tfng", "ike", "xho", "sna", "sot", "tsn", "mri", "lug"},
    ),
]


def subset(relpath: str, limit: int | None, field: str | None = None, values: set | None = None) -> Path:
    source = DATA / relpath
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8") as f:
        if field is None:
            lines = [line for _, line in zip(range(limit) if limit else iter(int, 1), f)]
        else:
            lines = [line for line in f if json.loads(line)[field] in values]
    # Every subset is stored gzipped (mtime 0, so rebuilding gives the same bytes).
    target = OUT / (relpath if relpath.endswith(".gz") else relpath + ".gz")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(gzip.compress("".join(lines).encode(), mtime=0))
    return target


def main() -> int:
    made = [subset(relpath, limit) for relpath, limit in SUBSETS]
    made += [subset(relpath, None, field, values) for relpath, field, values in SELECTED]
    for target in made:
        with gzip.open(target, "rt", encoding="utf-8") as f:
            count = sum(1 for line in f if json.loads(line))
        print(f"{target.relative_to(OUT)}: {count} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
