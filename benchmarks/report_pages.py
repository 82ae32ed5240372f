"""Time of every report page on a 100,000-document run.

Builds the run with the real stages (ingest, normalize, quality, pii with the pattern
types, exact and near dedup, tokenize, index; no language detection, whose time is not
the subject here) over documents cut from the real
corpora under shared/data: every text is cut into pieces of about 300 characters at
whitespace, until there are 100,000; a tenth of them are repeated (exact duplicates) and a
tenth repeated with one word changed (near duplicates). A second run reruns near dedup at
another threshold, for the comparison page.

The trends page reads manifests only, never records: it is timed over the run and 29 more
nights made of copies of the run's manifests (``--nights``).

Each page is the handler the api-server runs, called in this process (no HTTP, no
sign-in): the first call (cold: nothing cached) and the median of five more (warm).

    .venv/bin/python benchmarks/report_pages.py [--data ../shared/data] [--work /tmp/tamis_bench_report] [--docs 100000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
FILES = [  # research-only files are left out
    "web_en/wikipedia_en_sample.jsonl",
    "web_en/us_presidential_speeches.jsonl",
    "web_en/movie_reviews_polarity_2000.jsonl.gz",
    "web_en/trafilatura_eval_en_pages.jsonl",
    "web_en/cc_c4_pile_fixtures_by_source.jsonl",
    "multilingual/trafilatura_eval_pages_non_en.jsonl.gz",
    "multilingual/udhr_unicode_388docs.jsonl.gz",
    "quality/article_extraction_benchmark.jsonl",
    "quality/dclm_human_quality.jsonl",
    "pii/presidio_synth_v2.jsonl",
    "code/code_00.jsonl.gz",
    "code/code_01.jsonl.gz",
]
PIECE_CHARS = 300
RUN = "bench"
OTHER = "bench_other"


def pieces(data: Path, wanted: int) -> list[dict]:
    texts = []
    for name in FILES:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(data / name, "rt", encoding="utf-8") as f:
            texts += [json.loads(line).get("text") or "" for line in f]
    out: list[dict] = []
    originals = int(wanted * 0.8)
    while len(out) < originals:
        for text in texts:
            for start in range(0, len(text), PIECE_CHARS):
                cut = text.rfind(" ", start, start + PIECE_CHARS + 60)
                piece = text[start : cut if cut > start else start + PIECE_CHARS].strip()
                if piece:
                    out.append({"id": f"p{len(out):07d}", "text": piece})
                if len(out) >= originals:
                    break
            if len(out) >= originals:
                break
    exact = [{"id": f"x{i:07d}", "text": out[i * 7 % originals]["text"]} for i in range((wanted - originals) // 2)]
    near = []
    for i in range(wanted - originals - len(exact)):
        words = out[i * 11 % originals]["text"].split(" ")
        words[len(words) // 2] = "changed"
        near.append({"id": f"n{i:07d}", "text": " ".join(words)})
    return out + exact + near


def build(data: Path, work: Path, docs: int) -> object:
    from tamis.cli import run_one
    from tamis.pipeline import load_pipeline

    source = work / "src" / "date=2026-11-20"
    source.mkdir(parents=True)
    rows = pieces(data, docs)
    per_file = 10_000
    for k in range(0, len(rows), per_file):
        with open(source / f"part_{k // per_file:03d}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows[k : k + per_file])
    config = {
        "name": "bench_report",
        "storage_root": str(work / "store"),
        "workers": os.cpu_count() or 2,
        "sources": {"web": {"path": str(work / "src"), "id_field": "id"}},
        "stages": [
            {"name": "ingest", "type": "ingest"},
            {"name": "normalize", "type": "normalize"},
            # Pieces of a few sentences: the rules for whole documents would drop most of them.
            {
                "name": "quality",
                "type": "quality",
                "params": {"gopher": {"min_words": 10, "min_stop_words": 1}, "c4": {"min_sentences": 1}},
            },
            {
                "name": "pii",
                "type": "pii",
                "params": {"entities": ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IP_ADDRESS"]},
            },
            {"name": "exact_dedup", "type": "exact_dedup"},
            {"name": "near_dedup", "type": "near_dedup"},
            {
                "name": "tokenize",
                "type": "tokenize",
                "params": {"tokenizer": str(REPO / "include/sample/tokenizer.json")},
            },
            {"name": "index", "type": "index", "params": {"documents": None, "binary": False}},
        ],
        "gates": {"default": {"max_drop_rate": 1.0}},
        "reports": {"mlflow": {"enabled": False}},
    }
    path = work / "bench_report.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    pipeline = load_pipeline(str(path))
    for stage in pipeline.stage_names:
        started = time.perf_counter()
        manifest = run_one(pipeline, stage, RUN)
        print(f"  {stage:<12} {manifest['counts']}  {time.perf_counter() - started:.1f}s", flush=True)
    shutil.copytree(pipeline.run_url(RUN), pipeline.run_url(OTHER))
    run_one(
        pipeline,
        "near_dedup",
        OTHER,
        input_url=pipeline.stage_url(RUN, "exact_dedup"),
        overrides={"threshold": 0.6},
        rebuild=True,
    )
    return pipeline


def add_history(pipeline, nights: int) -> None:
    """Nights of manifests only (what the trends page reads), with a drift result each."""
    from tamis import storage
    from tamis.trends import DRIFT_FILE

    source = Path(pipeline.run_url(RUN))
    for n in range(nights):
        day = f"2026-10-{n + 1:02d}"
        target = Path(pipeline.run_url(f"night_{day}"))
        for stage in pipeline.stage_names:
            (target / stage).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / stage / "_manifest.json", target / stage / "_manifest.json")
        storage.write_json_atomic(
            str(target / DRIFT_FILE),
            {"date": day, "status": "ok", "breaches": [], "checked": 40, "window": 7},
            str(target),
        )


def pages(pipeline) -> dict[str, callable]:
    """Each page's handler, with the sign-in and access checks (Airflow's) left out."""
    sys.path.insert(0, str(REPO / "plugins"))
    from tamis import report
    from tamis.dataset import Dataset
    from tamis_reports import app as reports_app
    from tamis_reports import views

    views.pipeline_of = lambda name: pipeline
    views.authorize = lambda user, folder: None
    views.dag_runs_by_folder = lambda: {}
    views._readable_dags = lambda user: list(reports_app.REPORTED_DAGS)
    reports_app._resolve = lambda dag, run, user: (
        {"pipeline": pipeline.name, "state": "success"},
        pipeline.stage_names,
        pipeline.run_url(RUN),
    )
    run_url = pipeline.run_url(RUN)
    quality = Dataset(f"{run_url}/quality").manifest()
    rule = max(quality["drop_reasons"], key=quality["drop_reasons"].get)
    total = quality["drop_reasons"][rule]
    near = report.dropped_examples(f"{run_url}/near_dedup", "near_duplicate", limit=1)["rows"][0]
    kept = Dataset(f"{run_url}/tokenize").read(columns=["id"]).column("id")[len(quality["parts"]) * 3].as_py()
    name = pipeline.name
    return {
        "trends (30 nights)": lambda: views.trends_page(name, user=None),
        "run report": lambda: reports_app.run_page("corpus_build", RUN, user=None),
        "records via index, page 1": lambda: reports_app.records_page(
            "corpus_build", RUN, stage="tokenize", status="kept", offset=0, user=None
        ),
        "records via index, page 40": lambda: reports_app.records_page(
            "corpus_build", RUN, stage="tokenize", status="kept", offset=1000, user=None
        ),
        "records by id": lambda: reports_app.records_page(
            "corpus_build", RUN, stage="tokenize", id=kept, status="kept", offset=0, user=None
        ),
        f"examples: {rule}, page 1": lambda: views.examples_page(
            name, RUN, stage="quality", kind="dropped", rule=rule, entity="", offset=0, user=None
        ),
        f"examples: {rule}, last page": lambda: views.examples_page(
            name, RUN, stage="quality", kind="dropped", rule=rule, entity="", offset=max(total - 20, 0), user=None
        ),
        "examples: PII EMAIL_ADDRESS": lambda: views.examples_page(
            name, RUN, stage="pii", kind="pii", rule="", entity="EMAIL_ADDRESS", offset=0, user=None
        ),
        "before/after: normalize": lambda: views.examples_page(
            name, RUN, stage="normalize", kind="changed", rule="", entity="", offset=0, user=None
        ),
        "duplicate cluster": lambda: views.cluster_page(name, RUN, stage="near_dedup", id=near["id"], user=None),
        "document (from an example)": lambda: views.document_page(
            name, RUN, id=near["id"], part=near["part"], user=None
        ),
        "document (by id only)": lambda: views.document_page(name, RUN, id=kept, part="", user=None),
        "compare two runs": lambda: views.compare_page(name, a=RUN, b=OTHER, user=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--work", default="/tmp/tamis_bench_report")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--nights", type=int, default=29)
    parser.add_argument("--reuse", action="store_true", help="keep a run built by an earlier call")
    args = parser.parse_args()
    work = Path(args.work)
    from tamis.pipeline import load_pipeline

    if args.reuse and (work / "bench_report.yaml").exists():
        pipeline = load_pipeline(str(work / "bench_report.yaml"))
    else:
        shutil.rmtree(work, ignore_errors=True)
        print(f"building a run of {args.docs:,} documents in {work}", flush=True)
        pipeline = build(Path(args.data), work, args.docs)
        add_history(pipeline, args.nights)
    from tamis.dataset import Dataset

    print(
        f"run: {Dataset(pipeline.stage_url(RUN, 'ingest')).manifest()['counts']['in']:,} documents in, "
        f"{Dataset(pipeline.stage_url(RUN, 'tokenize')).manifest()['counts']['kept']:,} out"
    )
    print(f"{'page':<34}{'cold ms':>10}{'warm ms':>10}{'bytes':>10}")
    slowest = 0.0
    for label, page in pages(pipeline).items():
        started = time.perf_counter()
        first = page()
        cold = time.perf_counter() - started
        warm = []
        for _ in range(5):
            started = time.perf_counter()
            page()
            warm.append(time.perf_counter() - started)
        body = first.body if hasattr(first, "body") else str(first).encode()
        slowest = max(slowest, cold, statistics.median(warm))
        print(f"{label:<34}{cold * 1000:>10.0f}{statistics.median(warm) * 1000:>10.0f}{len(body):>10,}")
        if re.search(rb'class="error"', body):
            print(f"  the page reported an error: {body[:300]!r}")
    print(f"slowest page: {slowest * 1000:.0f} ms ({'within' if slowest <= 1.0 else 'over'} 1 s)")


if __name__ == "__main__":
    main()
