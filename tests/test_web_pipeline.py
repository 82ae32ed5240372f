"""The web pipeline: every web filter together on the sample WARC archive, with no model
file; and the default pipeline still needs none."""

from __future__ import annotations

import pytest
from tamis.cli import main
from tamis.dataset import Dataset
from tamis.pipeline import check_pipeline, load_pipeline
from tamis.stages.repeated_lines import top_lines

NEW_STAGES = {"url_filter", "domain_cap", "safety", "decontaminate", "repeated_lines"}


@pytest.fixture(scope="module")
def web_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TAMIS_DATA_ROOT", str(root))
        mp.delenv("TAMIS_QUALITY_MODEL", raising=False)
        mp.delenv("TAMIS_SAFETY_MODEL", raising=False)
        pipeline = load_pipeline("web")
        assert main(["build", "--pipeline", "web", "--run-id", "r", "--workers", "1"]) == 0
    return pipeline, root / "runs" / "r"


def test_every_new_stage_runs_on_the_warc_source_and_reconciles(web_run):
    pipeline, run = web_run
    types = {spec.type for spec in pipeline.stages}
    assert NEW_STAGES <= types and pipeline.sources["crawl"].format == "warc"
    previous_kept = None
    for name in pipeline.stage_names:
        manifest = Dataset(str(run / name)).manifest()
        c = manifest["counts"]
        assert c["in"] == c["kept"] + c["dropped"] + c["quarantined"]
        if previous_kept is not None:
            assert c["in"] == previous_kept
        previous_kept = c["kept"]
        assert Dataset(str(run / name)).gate_result()["success"]
    ingest = Dataset(str(run / "ingest")).manifest()
    assert ingest["counts"]["kept"] == 4 and ingest["counts"]["quarantined"] == 3


def test_the_web_columns_travel_to_the_end(web_run):
    pipeline, run = web_run
    out = Dataset(str(run / pipeline.stage_names[-1])).read()
    for column in ("url", "fetch_date", "content_type", "safety_hate", "safety_self_harm", "word_count"):
        assert column in out.column_names
    assert all(u.startswith("http") for u in out.column("url").to_pylist())


def test_the_repeated_lines_side_file_is_written(web_run):
    _, run = web_run
    assert top_lines(str(run / "repeated_lines")) is not None


def test_the_default_pipeline_needs_no_model_file():
    pipeline = load_pipeline("default")
    assert pipeline.spec("quality").params["model"]["path"] is None
    assert check_pipeline(pipeline) == []
