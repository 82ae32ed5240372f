"""Throughput of the PII stage against datatrove's PIIFormatter, on the same documents.

Documents: every text of ../shared/data/web_en, cut at whitespace into pieces of about
2 KB (the size the target is stated for). Each side runs in one process and is timed in
CPU seconds of that process, so the figures are docs/s per core.

Sides:
- tamis pii, default entities (7 pattern types, PERSON, STREET_ADDRESS), action mask;
- tamis pii, the 7 pattern types only;
- tamis pii, EMAIL_ADDRESS + IP_ADDRESS only: the same scope as the peer;
- Presidio's stock AnalyzerEngine with its own recognizers for the same 6 types (no
  screens, model-free NLP engine): what the screens save;
- datatrove 0.10.1 PIIFormatter (e-mail and public IPv4 only), run as a subprocess with
  the Python of a separate virtualenv (default benchmarks/.peer-venv, made by benchmarks/peer_venv.sh).

    python benchmarks/pii_speed.py [--peer-python PATH] [--piece-chars 2048]
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from pii_accuracy import (
    stock_presidio_analyzer,  # benchmarks/ is on the path when run as a script
)

from tamis.pii_recognizers import _phone_matches, _regions_where_valid
from tamis.stages.pii import PiiMask

WEB_EN = Path(__file__).resolve().parents[2] / "shared" / "data" / "web_en"
BATCH = 2048

PEER_SCRIPT = r"""
import json, sys, time
from datatrove.pipeline.formatters import PIIFormatter
texts = [json.loads(line)["text"] for line in open(sys.argv[1], encoding="utf-8")]
formatter = PIIFormatter()
formatter.format(texts[0])
started = time.process_time()
changed = sum(formatter.format(t) != t for t in texts)
cpu = time.process_time() - started
print(json.dumps({"docs": len(texts), "cpu_s": cpu, "changed": changed}))
"""


def load_pieces(web_en: Path, piece_chars: int) -> list[str]:
    pieces = []
    for path in sorted(glob.glob(f"{web_en}/*.jsonl*")):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["text"]
                while len(text) > piece_chars:
                    cut = text.rfind(" ", piece_chars // 2, piece_chars)
                    cut = cut if cut > 0 else piece_chars
                    pieces.append(text[:cut])
                    text = text[cut:]
                if text.strip():
                    pieces.append(text)
    return pieces


def time_stage(params: dict, texts: list[str]) -> tuple[float, dict]:
    stage = PiiMask(params)
    table = pa.table({"id": [str(i) for i in range(len(texts))], "source": ["web"] * len(texts), "text": texts})
    # Not timed, as a worker does it once: building the engines (the engine calls setup),
    # loading phone metadata for every region.
    stage.setup()
    warm = "call 0800 138 1018, +86 138-0013-8000 or 905-674-3793; mail a.b@example.com from 41.173.96.26"
    stage.find(warm)
    _phone_matches.cache_clear()  # each side starts with the same empty caches
    _regions_where_valid.cache_clear()
    metrics: dict = {}
    started = time.process_time()
    for offset in range(0, table.num_rows, BATCH):
        result = stage.process_batch(table.slice(offset, BATCH))
        for key, value in result.metrics.items():
            metrics[key] = metrics.get(key, 0) + value
    return time.process_time() - started, metrics


def time_stock_presidio(texts: list[str]) -> float:
    analyzer = stock_presidio_analyzer()
    analyzer.analyze(texts[0], language="en")
    started = time.process_time()
    for text in texts:
        analyzer.analyze(text, language="en")
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-python", default=str(Path(__file__).resolve().parent / ".peer-venv" / "bin" / "python"))
    parser.add_argument("--piece-chars", type=int, default=2048)
    parser.add_argument("--web-en", type=Path, default=WEB_EN, help="folder of web_en JSONL files")
    args = parser.parse_args()

    texts = load_pieces(args.web_en, args.piece_chars)
    if not texts:
        raise SystemExit(f"pii_speed: error: no documents under {args.web_en}")
    mean_chars = sum(map(len, texts)) / len(texts)
    print(f"documents: {len(texts)} pieces of web_en, mean {mean_chars:.0f} characters")

    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    rows = []
    cpu, metrics = time_stage({}, texts)
    found = {k.removeprefix("pii.entity."): v for k, v in sorted(metrics.items()) if k.startswith("pii.entity.")}
    print(
        f"tamis pii (default, 9 types): {metrics.get('pii.findings', 0)} findings in {metrics.get('pii.docs_with_pii', 0)} docs: {found}"
    )
    rows.append(("tamis pii, default (9 types)", len(texts) / cpu))
    pattern_types = [e for e in PiiMask().params.entities if e not in ("PERSON", "STREET_ADDRESS")]
    cpu, metrics = time_stage({"entities": pattern_types}, texts)
    print(
        f"tamis pii (7 pattern types): {metrics.get('pii.findings', 0)} findings; "
        f"{metrics.get('pii.docs_analysed', 0)} of {len(texts)} docs passed the screens"
    )
    rows.append(("tamis pii, 7 pattern types", len(texts) / cpu))
    cpu, metrics = time_stage({"entities": ["EMAIL_ADDRESS", "IP_ADDRESS"]}, texts)
    rows.append(("tamis pii, EMAIL_ADDRESS + IP_ADDRESS", len(texts) / cpu))
    print(
        f"tamis pii (e-mail, IP): {metrics.get('pii.findings', 0)} findings in {metrics.get('pii.docs_with_pii', 0)} docs"
    )

    rows.append(("stock Presidio analyzer, 6 types", len(texts) / time_stock_presidio(texts)))

    peer = None
    if not Path(args.peer_python).exists():
        print(f"peer skipped: {args.peer_python} not found (python -m venv it and pip install datatrove==0.10.1 regex)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            docs_path = os.path.join(tmp, "docs.jsonl")
            with open(docs_path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"text": text}) + "\n" for text in texts)
            out = subprocess.run(
                [args.peer_python, "-c", PEER_SCRIPT, docs_path], capture_output=True, text=True, check=True
            )
            peer = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"datatrove PIIFormatter: changed {peer['changed']} docs")
        rows.append(("datatrove 0.10.1 PIIFormatter (e-mail, IPv4)", peer["docs"] / peer["cpu_s"]))

    stock_rate = next(rate for name, rate in rows if name.startswith("stock Presidio"))
    mb_per_doc = megabytes / len(texts)
    print(f"\n{'side':<52}{'docs/s/core':>12}{'MB/s/core':>10}{'vs datatrove':>14}{'vs stock Presidio':>19}")
    for name, rate in rows:
        ratio = f"{rate / rows[-1][1]:.2f}x" if peer else "-"
        print(f"{name:<52}{rate:>12.0f}{rate * mb_per_doc:>10.2f}{ratio:>14}{rate / stock_rate:>18.2f}x")


if __name__ == "__main__":
    main()
