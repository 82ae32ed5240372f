"""The stage runner: resume after a killed run, atomic parts, reconciling counts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, write_jsonl
from tamis.dataset import Dataset
from tamis.runner import CountsDoNotReconcile, run_stage
from tamis.stage import BatchResult, Stage

WIKI = REPO / "include/sample/web/date=2026-11-20/wikipedia.jsonl"


def build_corpus(root: Path, files: int, docs_per_file: int) -> None:
    """Real Wikipedia paragraphs spread over many files, so a stage has many shards."""
    paragraphs = [
        p for line in WIKI.read_text().splitlines() for p in json.loads(line)["text"].split("\n\n") if len(p) > 200
    ]
    k = 0
    for f in range(files):
        rows = []
        for _ in range(docs_per_file):
            rows.append({"text": paragraphs[k % len(paragraphs)] + f" ({k})"})
            k += 1
        write_jsonl(root / f"date=2026-11-20/part{f:03d}.jsonl", rows)


def write_pipeline(path: Path, source: Path, store: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": "resume",
                "storage_root": str(store),
                "workers": 2,
                "sources": {"web": {"path": str(source)}},
                "stages": {"ingest": {}, "normalize": {}},
            }
        )
    )
    return path


def tamis(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tamis.cli", *args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def parts(dataset_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dataset_dir.glob("*.parquet"))}


def test_resume_after_sigkill_gives_byte_identical_output_and_never_shows_a_partial_part(tmp_path):
    build_corpus(tmp_path / "web", files=40, docs_per_file=250)
    config = write_pipeline(tmp_path / "p.yaml", tmp_path / "web", tmp_path / "store")
    ingest = ["run", "ingest", "--pipeline", str(config)]
    assert (
        subprocess.run([sys.executable, "-m", "tamis.cli", *ingest, "--run-id", "base"], capture_output=True).returncode
        == 0
    )
    base_input = str(tmp_path / "store/runs/base/ingest")

    clean = tmp_path / "clean"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tamis.cli",
            "run",
            "normalize",
            "--pipeline",
            str(config),
            "--input",
            base_input,
            "--output",
            str(clean),
        ],
        check=True,
        capture_output=True,
    )

    killed = tmp_path / "killed"
    normalize = ["run", "normalize", "--pipeline", str(config), "--input", base_input, "--output", str(killed)]
    process = tamis(*normalize)
    seen_parts = 0
    deadline = time.time() + 120
    while time.time() < deadline:
        for part in killed.glob("*.parquet"):  # every visible part must be a complete Parquet file
            pq.read_metadata(part)
            seen_parts += 1
        commits = list((killed / "_commits").glob("*.json")) if (killed / "_commits").exists() else []
        if len(commits) >= 3:
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    committed_at_kill = len(list((killed / "_commits").glob("*.json")))
    assert process.returncode == -signal.SIGKILL
    assert 3 <= committed_at_kill < 40, "the kill must land in the middle of the stage"
    assert not (killed / "_manifest.json").exists()
    for part in killed.glob("*.parquet"):
        pq.read_metadata(part)

    resumed = tamis(*normalize)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]
    assert f"resuming, {committed_at_kill} of 40 shards already committed" in err.decode()
    assert parts(killed) == parts(clean)
    assert len(parts(clean)) == 40
    manifest = Dataset(str(killed)).manifest()
    assert (
        manifest["counts"]
        == Dataset(str(clean)).manifest()["counts"]
        == {"in": 10000, "kept": 10000, "dropped": 0, "quarantined": 0}
    )
    assert not (killed / "_tmp").exists()


class _Halver(Stage):
    """Keeps even rows, drops odd ones: a small stage to exercise the runner."""

    name = "halver"

    def process_batch(self, table: pa.Table) -> BatchResult:
        reasons = ["odd" if i % 2 else None for i in range(table.num_rows)]
        from tamis.stage import split_by_reason

        kept, dropped = split_by_reason(table, reasons)
        return BatchResult(kept=kept, dropped=dropped)


class _Leaky(_Halver):
    """Loses rows without a reason: the runner must refuse to commit."""

    name = "leaky"

    def process_batch(self, table: pa.Table) -> BatchResult:
        result = super().process_batch(table)
        return BatchResult(kept=result.kept, rows_in=table.num_rows)


def _input_dataset(tmp_path, make_pipeline, n=10):
    write_jsonl(tmp_path / "web/a.jsonl", [{"text": f"document {i}"} for i in range(n)])
    from tamis.cli import run_one

    return run_one(make_pipeline({"web": {"path": str(tmp_path / "web")}}), "ingest", "r")["output"]


def test_manifest_counts_and_reasons_reconcile_with_the_side_tables(tmp_path, make_pipeline):
    source = _input_dataset(tmp_path, make_pipeline)
    manifest = run_stage(_Halver(), source, str(tmp_path / "out"))
    assert manifest["counts"] == {"in": 10, "kept": 5, "dropped": 5, "quarantined": 0}
    assert manifest["drop_reasons"] == {"odd": 5}
    dataset = Dataset(str(tmp_path / "out"))
    assert dataset.read().num_rows == 5
    assert dataset.read_side("dropped").num_rows == 5
    assert manifest["input_manifest_sha256"] is not None


def test_rows_lost_without_a_reason_fail_the_stage_and_commit_nothing(tmp_path, make_pipeline):
    source = _input_dataset(tmp_path, make_pipeline)
    with pytest.raises(CountsDoNotReconcile, match="in=10 but kept\\+dropped\\+quarantined=5"):
        run_stage(_Leaky(), source, str(tmp_path / "out"))
    assert not (tmp_path / "out/_manifest.json").exists()
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_a_completed_dataset_is_not_recomputed(tmp_path, make_pipeline):
    source = _input_dataset(tmp_path, make_pipeline)
    first = run_stage(_Halver(), source, str(tmp_path / "out"))
    (tmp_path / "out" / "_commits").rename(tmp_path / "commits-aside")  # a recomputation would need them
    second = run_stage(_Halver(), source, str(tmp_path / "out"))
    assert first == second


def test_an_output_made_by_another_stage_or_params_is_never_reused(tmp_path, make_pipeline):
    from tamis.runner import StaleOutput

    source = _input_dataset(tmp_path, make_pipeline)
    run_stage(_Halver(), source, str(tmp_path / "out"))
    with pytest.raises(StaleOutput, match="type: .*_Halver.* -> .*_Leaky"):
        run_stage(_Leaky(), source, str(tmp_path / "out"))


def test_reading_a_dataset_without_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing _manifest.json"):
        run_stage(_Halver(), str(tmp_path / "nothing"), str(tmp_path / "out"))


class _OrderRecorder(_Halver):
    """Remembers the shards in the order it was handed them (one worker: this process)."""

    name = "order_recorder"
    seen: list[str] = []

    def run_shard(self, shard):
        self.seen.append(shard.name)
        return super().run_shard(shard)


def test_workers_are_handed_the_largest_shards_first(tmp_path, make_pipeline):
    # A run that ends on one worker still busy with a large shard leaves the others idle.
    for name, docs in [("a", 5), ("b", 400), ("c", 40), ("d", 4000)]:
        write_jsonl(tmp_path / f"web/{name}.jsonl", [{"text": f"document {i} of {name}"} for i in range(docs)])
    from tamis.cli import run_one

    source = run_one(make_pipeline({"web": {"path": str(tmp_path / "web")}}), "ingest", "r")["output"]
    sizes = {shard.name: shard.size_bytes for shard in Dataset(source).shards()}
    _OrderRecorder.seen = []
    run_stage(_OrderRecorder(), source, str(tmp_path / "out"))
    assert _OrderRecorder.seen == sorted(sizes, key=sizes.get, reverse=True)
    assert _OrderRecorder.seen != sorted(sizes)


def test_shards_run_one_by_one_then_a_full_run_writes_the_manifest(tmp_path, make_pipeline):
    write_jsonl(tmp_path / "web/a.jsonl", [{"text": "first file"}])
    write_jsonl(tmp_path / "web/b.jsonl", [{"text": "second file"}, {"text": ""}])
    from tamis.cli import run_one

    pipeline = make_pipeline({"web": {"path": str(tmp_path / "web")}})
    assert run_one(pipeline, "ingest", "r", only_shards=["undated_web_00001"]) is None
    out = tmp_path / "store/runs/r/ingest"
    assert [p.name for p in (out / "_commits").iterdir()] == ["undated_web_00001.json"]
    assert not (out / "_manifest.json").exists()
    manifest = run_one(pipeline, "ingest", "r")
    assert manifest["counts"] == {"in": 3, "kept": 2, "dropped": 1, "quarantined": 0}


def test_a_whole_dataset_stage_runs_shard_by_shard_only_after_its_plan(tmp_path, make_pipeline):
    write_jsonl(tmp_path / "web/a.jsonl", [{"text": "same"}, {"text": "other"}])
    write_jsonl(tmp_path / "web/b.jsonl", [{"text": "same"}])
    from tamis.cli import run_one
    from tamis.runner import StageError

    pipeline = make_pipeline({"web": {"path": str(tmp_path / "web")}}, stages={"ingest": {}, "exact_dedup": {}})
    run_one(pipeline, "ingest", "r")
    with pytest.raises(StageError, match="needs its plan"):
        run_one(pipeline, "exact_dedup", "r", only_shards=["undated_web_00001"])
    assert run_one(pipeline, "exact_dedup", "r", step="plan") is None
    assert run_one(pipeline, "exact_dedup", "r", only_shards=["undated_web_00001"]) is None
    with pytest.raises(StageError, match="1 shards are not committed"):
        run_one(pipeline, "exact_dedup", "r", step="manifest")
    assert run_one(pipeline, "exact_dedup", "r", only_shards=["undated_web_00000"]) is None
    manifest = run_one(pipeline, "exact_dedup", "r", step="manifest")
    assert manifest["counts"] == {"in": 3, "kept": 2, "dropped": 1, "quarantined": 0}
    assert manifest["drop_reasons"] == {"exact_duplicate": 1}


def test_fused_stages_write_what_separate_runs_write(tmp_path, make_pipeline):
    """One pass over each shard for ingest -> normalize -> halver: every stage still gets its
    own dataset, byte for byte the one a separate run writes, and its own manifest."""
    from tamis.runner import run_fused

    build_corpus(tmp_path / "web", files=6, docs_per_file=40)
    pipeline = make_pipeline({"web": {"path": str(tmp_path / "web")}}, workers=2)
    separate = [str(tmp_path / "separate" / n) for n in ("ingest", "normalize", "halver")]
    run_stage(pipeline.stage("ingest"), None, separate[0], workers=2)
    run_stage(pipeline.stage("normalize"), separate[0], separate[1], workers=2)
    run_stage(_Halver(), separate[1], separate[2], workers=2)
    fused = [str(tmp_path / "fused" / n) for n in ("ingest", "normalize", "halver")]
    manifests = run_fused([pipeline.stage("ingest"), pipeline.stage("normalize"), _Halver()], None, fused, workers=2)
    import hashlib

    for k, (one, manifest) in enumerate(zip(separate, manifests)):
        expected = Dataset(one).manifest()
        assert [p["sha256"] for p in manifest["parts"]] == [p["sha256"] for p in expected["parts"]]
        assert manifest["counts"] == expected["counts"] and manifest["drop_reasons"] == expected["drop_reasons"]
        if k:  # each manifest names the one it read, as in separate runs
            previous = (Path(fused[k - 1]) / "_manifest.json").read_bytes()
            assert manifest["input_manifest_sha256"] == hashlib.sha256(previous).hexdigest()
    assert manifests[2]["counts"]["dropped"] > 0
    # A later run of one stage alone finds the fused output complete, not stale.
    again = run_stage(_Halver(), fused[1], fused[2])
    assert again == manifests[2] | {"fused_with": manifests[2]["fused_with"]}


def test_a_batch_of_long_documents_is_read_in_slices_of_bounded_size(tmp_path):
    from conftest import write_dataset
    from tamis.stage import READ_BATCH_BYTES, READ_BATCH_ROWS, iter_shard_batches

    # One row group of long documents and short ones mixed: read whole, it would hold
    # 26 MB.
    lengths = [100_000 if i % 8 == 0 else 200 for i in range(READ_BATCH_ROWS)]
    table = pa.table({"id": [f"d{i}" for i in range(len(lengths))], "text": ["x" * n for n in lengths]})
    url = write_dataset(tmp_path / "long", table, row_group_size=READ_BATCH_ROWS)
    (shard,) = Dataset(url).shards()
    batches = list(iter_shard_batches(shard))
    assert all(t.nbytes <= READ_BATCH_BYTES + 100_000 for _, t in batches)
    assert len(batches) > 1
    assert [offset for offset, _ in batches] == list(np.cumsum([0] + [t.num_rows for _, t in batches[:-1]]))
    assert pa.concat_tables([t for _, t in batches]).equals(table)


def test_a_temporary_folder_too_long_for_the_pool_s_socket_is_one_clear_line(tmp_path):
    build_corpus(tmp_path / "src", files=2, docs_per_file=5)
    config = write_pipeline(tmp_path / "p.yaml", tmp_path / "src", tmp_path / "store")
    long_tmp = tmp_path / ("t" * 90)
    long_tmp.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "tamis.cli", "run", "ingest", "--pipeline", str(config), "--run-id", "r"],
        env={**os.environ, "TMPDIR": str(long_tmp)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"tamis: error: the temporary folder {long_tmp} is too long a path for the worker pool's socket "
        "(at most 75 bytes): set TMPDIR to a shorter folder"
    )
    assert "Traceback" not in done.stderr
    # A shorter TMPDIR works (the temporary folder of the test itself here).
    short = subprocess.run(
        [sys.executable, "-m", "tamis.cli", "run", "ingest", "--pipeline", str(config), "--run-id", "r"],
        capture_output=True,
        text=True,
    )
    assert short.returncode == 0, short.stderr[-2000:]
