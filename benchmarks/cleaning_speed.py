"""Speed of the language and quality stages against datatrove's filters, same documents.

    .venv/bin/python benchmarks/cleaning_speed.py [--data ../shared/data] [--peer-python PYTHON]  (default: benchmarks/.peer-venv, made by benchmarks/peer_venv.sh)

All documents of data/web_en are read once and written to a temporary JSONL file; our
stages run in this process (one core), datatrove 0.10.1 runs in its own virtualenv as a
subprocess (one core) on that same file. Quality: our one ``quality`` stage computes the
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
from tamis.stages.quality import QualityFilter

BATCH = 2048

PEER_SCRIPT = r"""
import json, sys, time
from datatrove.data import Document
from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                        GopherRepetitionFilter)
docs = [Document(text=json.loads(line)["text"], id=str(i)) for i, line in enumerate(open(sys.argv[1]))]
filters = [GopherQualityFilter(), GopherRepetitionFilter(), C4QualityFilter(), FineWebQualityFilter()]
for f in filters:
    f.filter(Document(text="warm up the word tokenizer. " * 60, id="w"))
out = {}
for f in filters:
    started = time.perf_counter()
    kept = 0
    for doc in docs:
        # C4QualityFilter edits doc.text; give every filter the original text.
        result = f.filter(Document(text=doc.text, id=doc.id))
        kept += result is True or (isinstance(result, tuple) and result[0])
    out[type(f).__name__] = {"seconds": time.perf_counter() - started, "kept": kept}
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


def time_stage(stage, texts: list[str]) -> tuple[float, int]:
    stage.process_batch(pa.table({"id": ["w"], "source": ["web"], "text": [texts[0]]}))  # load models
    started = time.perf_counter()
    kept = 0
    for start in range(0, len(texts), BATCH):
        chunk = texts[start : start + BATCH]
        table = pa.table({"id": [str(i) for i in range(len(chunk))], "source": ["web"] * len(chunk), "text": chunk})
        kept += stage.process_batch(table).kept.num_rows
    return time.perf_counter() - started, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--peer-python", default=str(Path(__file__).resolve().parent / ".peer-venv" / "bin" / "python"))
    args = parser.parse_args()

    texts = read_web_en(args.data / "web_en")
    n = len(texts)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"{n} documents from {args.data / 'web_en'} ({mb:.1f} MB), one process each side\n")

    quality_s, quality_kept = time_stage(QualityFilter(), texts)
    language_s, language_kept = time_stage(LanguageFilter(), texts)

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")
    peer = subprocess.run(
        [args.peer_python, "-c", PEER_SCRIPT, f.name], capture_output=True, text=True, env={"OMP_NUM_THREADS": "1"}
    )
    Path(f.name).unlink()

    print(f"{'step':44} {'docs/s':>9} {'kept':>6}")
    print(f"{'tamis quality (Gopher+repetition+C4+FineWeb)':44} {n / quality_s:9.0f} {quality_kept:6d}")
    if peer.returncode != 0:
        print(f"datatrove side failed (run it with a Python that has datatrove==0.10.1):\n{peer.stderr[-2000:]}")
    else:
        results = json.loads(peer.stdout.strip().splitlines()[-1])
        for name, r in results.items():
            print(f"{'datatrove ' + name:44} {n / r['seconds']:9.0f} {r['kept']:6d}")
        peer_s = sum(r["seconds"] for r in results.values())
        print(f"{'datatrove, the four filters together':44} {n / peer_s:9.0f}")
        print(f"ratio quality: tamis is {peer_s / quality_s:.2f}x datatrove's four filters")

    print(f"\n{'tamis language (lid.176 + lingua fallback)':44} {n / language_s:9.0f} {language_kept:6d}")
    print("datatrove LanguageFilter: not run (it downloads lid.176.bin at first use; offline here). "
          "benchmarks/language_detectors.py compares the detectors themselves")
    try:
        import langid
    except ImportError:
        print("langid not installed: no language peer")
    else:
        langid.classify("warm up")
        max_chars = LanguageFilter().params.max_chars
        for label, sample in (("whole document", texts), (f"first {max_chars} chars, as ours", [t[:max_chars] for t in texts])):
            started = time.perf_counter()
            for text in sample:
                langid.classify(text)
            langid_s = time.perf_counter() - started
            print(f"{'langid.py 1.1.6 (' + label + ')':44} {n / langid_s:9.0f}")
            print(f"ratio language: tamis is {langid_s / language_s:.2f}x langid.py on the {label}")


if __name__ == "__main__":
    sys.exit(main())
