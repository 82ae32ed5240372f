"""The benchmark corpus: real documents from ../shared/data (English web text, code,
multilingual pages and UDHR texts), repeated with word-level edits (near copies) and some
exact copies, so that both dedup stages have work, laid out as a tamis source
(``<source>/date=2026-11-20/partNNN.jsonl``). Deterministic for a size and a seed.

    from bench_corpus import build_corpus, pipeline_yaml
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]
SOURCES = {
    "web": [
        "web_en/wikipedia_en_sample.jsonl",
        "web_en/us_presidential_speeches.jsonl",
        "web_en/movie_reviews_polarity_2000.jsonl.gz",
        "web_en/cc_c4_pile_fixtures_by_source.jsonl",
        "web_en/trafilatura_eval_en_pages.jsonl",
        "quality/dclm_human_quality.jsonl",
    ],
    "code": ["code/code_00.jsonl.gz", "code/code_01.jsonl.gz", "code/code_02.jsonl.gz", "code/code_03.jsonl.gz"],
    "multilingual": [
        "multilingual/udhr_unicode_388docs.jsonl.gz",
        "multilingual/trafilatura_eval_pages_non_en.jsonl.gz",
    ],
}
SHARE = {"web": 0.6, "code": 0.25, "multilingual": 0.15}


def read_texts(rel: str, data: Path = DATA) -> list[str]:
    path = data / rel
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [t for t in (json.loads(line).get("text") or "" for line in f) if t.strip()]


def edited(text: str, rng: random.Random, rate: float) -> str:
    words = text.split(" ")
    for _ in range(max(1, int(len(words) * rate))):
        words[rng.randrange(len(words))] = f"w{rng.randrange(10**6)}"
    return " ".join(words)


def build_corpus(
    root: Path, target_mb: float, files_per_source: int = 8, seed: int = 0, data: Path = DATA
) -> tuple[int, int]:
    """Write about ``target_mb`` MB of JSON Lines under ``root``; returns (bytes, documents)."""
    rng = random.Random(seed)
    total_bytes = total_docs = 0
    for source, rels in SOURCES.items():
        texts = [t for rel in rels for t in read_texts(rel, data)]
        budget = target_mb * 1e6 * SHARE[source]
        rows, size, k = [], 0, 0
        while size < budget:
            text = texts[k % len(texts)]
            if k >= len(texts):  # later passes: near copies (edited), a tenth exact copies
                draw = rng.random()
                text = text if draw < 0.1 else edited(text, rng, 0.02 if draw < 0.5 else 0.3)
            rows.append({"id": f"{source}-{k}", "text": text})
            size += len(text.encode())
            k += 1
        rng.shuffle(rows)
        per_file = -(-len(rows) // files_per_source)
        for i in range(0, len(rows), per_file):
            out = root / source / "date=2026-11-20" / f"part{i // per_file:03d}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[i : i + per_file]))
        total_bytes += int(size)
        total_docs += len(rows)
    return total_bytes, total_docs


def write_committed_dataset(rows: list[dict], root: Path, parts: int) -> None:
    """``rows`` as a committed tamis dataset of ``parts`` Parquet parts, in row groups of one
    read batch (as the runner writes the stages' outputs), with its manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tamis.stage import READ_BATCH_ROWS

    root.mkdir(parents=True, exist_ok=True)
    manifest = []
    per = -(-len(rows) // parts)
    for k in range(parts):
        name = f"part{k:02d}"
        pq.write_table(
            pa.Table.from_pylist(rows[k * per : (k + 1) * per]),
            root / f"{name}.parquet",
            row_group_size=READ_BATCH_ROWS,
        )
        manifest.append({"name": name, "bytes": (root / f"{name}.parquet").stat().st_size})
    (root / "_manifest.json").write_text(json.dumps({"parts": manifest}))


def pipeline_yaml(
    corpus: Path, store: Path, stages: list[str], workers: int, execution: dict | None = None, repo: Path = REPO
) -> str:
    """A pipeline over the benchmark corpus with the default pipeline's parameters for
    ``stages`` (those of the checkout ``repo``)."""
    import yaml

    default = yaml.safe_load((repo / "include/pipelines/default.yaml").read_text())
    params = default["stages"]
    tokenizer = str(repo / "include/sample/tokenizer.json")
    chosen = {}
    for name in stages:
        stage = dict(params.get(name) or {})
        if "tokenizer" in stage:
            stage["tokenizer"] = tokenizer
        if name == "mix":
            stage["weights"] = SHARE
        if name == "index":
            stage["documents"] = "mix" if "mix" in stages else None
        chosen[name] = stage
    config = {
        "name": "bench",
        "storage_root": str(store),
        "workers": workers,
        "execution": execution or {"mode": "local"},
        "sources": {
            "web": {"path": str(corpus / "web")},
            "code": {"path": str(corpus / "code"), "type": "code"},
            "multilingual": {"path": str(corpus / "multilingual")},
        },
        "stages": chosen,
    }
    return yaml.safe_dump(config, sort_keys=False)
