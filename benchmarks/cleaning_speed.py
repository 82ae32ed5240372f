"""Speed of the language and quality stages against datatrove's filters, same documents.

    .venv/bin/python benchmarks/cleaning_speed.py [--data ../shared/data] [--peer-python PYTHON]  (default: benchmarks/.peer-venv, made by benchmarks/peer_venv.sh)

All documents of data/web_en are read once and written to a temporary JSONL file; our
stages run in this process (one core), datatrove 0.10.1 runs in its own virtualenv as a
subprocess (one core) on that same file. "MB/s per core" divides the input's UTF-8 bytes by
the CPU seconds the process spent (every thread counted), which a loaded machine does not
distort as it does wall-clock time; docs/s/core likewise. Quality: our one ``quality`` stage computes the
Gopher quality, Gopher repetition, C4 and FineWeb rule sets together, so it is compared
with the four datatrove filters run one after the other over every document (no early
exit, like ours). Language: datatrove's LanguageFilter downloads fastText's lid.176.bin at
first use, which cannot happen offline (our stage reads the same model's compressed form,
lid.176.ftz, from a package), so the language stage is compared with langid.py 1.1.6 (the
classic offline identifier) when it is installed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from tamis.stages.language import LanguageFilter
from tamis.stages.normalize import Normalize
from tamis.stages.quality import QualityFilter

BATCH = 2048

PEER_SCRIPT = r"""
import json, sys, time
from datatrove.data import Document
from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                        GopherRepetitionFilter)
docs = [Document(text=json.loads(line)["text"], id=str(i)) for i, line in enumerate(open(sys.argv[1]))]
filters = [GopherQualityFilter(), GopherRepetitionFilter(), C4QualityFilter(filter_no_terminal_punct=False),
           FineWebQualityFilter()]
for f in filters:
    f.filter(Document(text="warm up the word tokenizer. " * 60, id="w"))
out = {}
for f in filters:
    started, cpu = time.perf_counter(), time.process_time()
    kept = 0
    for doc in docs:
        # C4QualityFilter edits doc.text; give every filter the original text.
        result = f.filter(Document(text=doc.text, id=doc.id))
        kept += result is True or (isinstance(result, tuple) and result[0])
    out[type(f).__name__] = {"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu, "kept": kept}
print(json.dumps(out))
"""


def read_web_en(folder: Path) -> list[str]:
    texts = []
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".jsonl") or path.name.endswith(".jsonl.gz"):
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as f:
                texts.extend(json.loads(line)["text"] for line in f if line.strip())
    return texts


def time_stage(stage, texts: list[str]) -> tuple[float, float, int]:
    """Wall-clock seconds, CPU seconds and documents kept, over batches of BATCH documents."""
    stage.process_batch(pa.table({"id": ["w"], "source": ["web"], "text": [texts[0]]}))  # load models
    tables = []
    for start in range(0, len(texts), BATCH):
        chunk = texts[start : start + BATCH]
        tables.append(
            pa.table({"id": [str(i) for i in range(len(chunk))], "source": ["web"] * len(chunk), "text": chunk})
        )
    started, cpu = time.perf_counter(), time.process_time()
    kept = sum(stage.process_batch(table).kept.num_rows for table in tables)
    return time.perf_counter() - started, time.process_time() - cpu, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--peer-python", default=str(Path(__file__).resolve().parent / ".peer-venv" / "bin" / "python"))
    args = parser.parse_args()

    texts = read_web_en(args.data / "web_en")
    n = len(texts)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"{n} documents from {args.data / 'web_en'} ({mb:.1f} MB), one process each side\n")

    quality_s, quality_cpu, quality_kept = time_stage(QualityFilter(), texts)
    language_s, _, language_kept = time_stage(LanguageFilter(), texts)

    # datatrove gets the text as normalize leaves it, as in a pipeline; tamis's quality stage
    # applies what it needs of normalize itself, so it gets the raw text.
    table = pa.table({"id": [str(i) for i in range(n)], "source": ["web"] * n, "text": texts})
    normalized = Normalize().process_batch(table).kept.column("text").to_pylist()
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for text in normalized:
            f.write(json.dumps({"text": text}) + "\n")
    peer = subprocess.run(
        [args.peer_python, "-c", PEER_SCRIPT, f.name], capture_output=True, text=True, env={"OMP_NUM_THREADS": "1"}
    )
    Path(f.name).unlink()

    print(f"{'step':44} {'MB/s/core':>9} {'docs/s/core':>11} {'kept':>6}")
    print(
        f"{'tamis quality (Gopher+repetition+C4+FineWeb)':44} {mb / quality_cpu:9.1f} {n / quality_cpu:11.0f} {quality_kept:6d}"
    )
    if peer.returncode != 0:
        print(f"datatrove side failed (run it with a Python that has datatrove==0.10.1):\n{peer.stderr[-2000:]}")
    else:
        results = json.loads(peer.stdout.strip().splitlines()[-1])
        for name, r in results.items():
            print(f"{'datatrove ' + name:44} {mb / r['cpu']:9.2f} {n / r['cpu']:11.0f} {r['kept']:6d}")
        peer_s = sum(r["seconds"] for r in results.values())
        peer_cpu = sum(r["cpu"] for r in results.values())
        print(f"{'datatrove, the four filters together':44} {mb / peer_cpu:9.2f} {n / peer_cpu:11.1f}")
        print(
            f"ratio quality: tamis is {peer_cpu / quality_cpu:.1f}x datatrove's four filters per core "
            f"({peer_s / quality_s:.1f}x by wall clock)"
        )

    print(f"\n{'tamis language (lid.176 + lingua fallback)':44} {n / language_s:9.0f} {language_kept:6d}")
    print(
        "datatrove LanguageFilter: not run (it downloads lid.176.bin at first use; offline here). "
        "benchmarks/language_detectors.py compares the detectors themselves"
    )
    try:
        import langid
    except ImportError:
        print("langid not installed: no language peer")
    else:
        langid.classify("warm up")
        max_chars = LanguageFilter().params.max_chars
        for label, sample in (
            ("whole document", texts),
            (f"first {max_chars} chars, as ours", [t[:max_chars] for t in texts]),
        ):
            started = time.perf_counter()
            for text in sample:
                langid.classify(text)
            langid_s = time.perf_counter() - started
            print(f"{'langid.py 1.1.6 (' + label + ')':44} {n / langid_s:9.0f}")
            print(f"ratio language: tamis is {langid_s / language_s:.2f}x langid.py on the {label}")


if __name__ == "__main__":
    sys.exit(main())
