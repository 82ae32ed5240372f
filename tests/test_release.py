"""Releases: dvc.yaml mirrors the pipeline, dvc repro/push version the datasets, the release
manifest traces the final files back to the raw ones, and a rerun reproduces the same bytes."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from pathlib import Path

import dpath
import pytest
import yaml

from conftest import REPO
from tamis.cli import run_one
from tamis.pipeline import ConfigError, load_pipeline
from tamis.release import (
    LOCK_FILE,
    dvc_stages,
    prepare_workspace,
    push,
    release,
    release_config,
    repro,
    workspace_pipeline,
    write_release,
)

SAMPLE = REPO / "include/sample"
STAGES = {"ingest": {}, "normalize": {}, "exact_dedup": {}}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_sources(root: Path) -> Path:
    """Five real speeches and two UDHR translations, one of them twice (a duplicate for exact_dedup)."""
    web = root / "src/web/date=2026-11-20"
    udhr = root / "src/udhr/date=2026-11-20"
    web.mkdir(parents=True)
    udhr.mkdir(parents=True)
    lines = (SAMPLE / "web/date=2026-11-20/speeches.jsonl").read_text().splitlines(keepends=True)[:5]
    (web / "speeches.jsonl").write_text("".join(lines))
    for name in ("eng", "fra"):
        shutil.copyfile(SAMPLE / f"udhr/date=2026-11-20/{name}.txt", udhr / f"{name}.txt")
    shutil.copyfile(SAMPLE / "udhr/date=2026-11-20/eng.txt", udhr / "eng_again.txt")
    return root / "src"


def write_pipeline(root: Path, sources: Path, stages: dict, name: str = "tiny") -> Path:
    config = {
        "name": name,
        "storage_root": str(root / "store"),
        "workers": 1,
        "sources": {
            "web": {"path": str(sources / "web"), "id_field": "id"},
            "udhr": {"path": str(sources / "udhr"), "format": "text"},
        },
        "stages": stages,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """One full release (prepare, repro, push, manifest) of the tiny pipeline, shared by the tests below."""
    root = tmp_path_factory.mktemp("release")
    sources = write_sources(root)
    path = write_pipeline(root, sources, STAGES)
    pipeline = load_pipeline(str(path))
    for stage in pipeline.stage_names:  # the corpus run that the release follows
        run_one(pipeline, stage, "corpus-1")
    config = release_config(pipeline)
    manifest = release(pipeline, config, source_run_id="corpus-1", run_id="manual__test")
    # Later tests change the workspace; the lock as released is kept here.
    lock_bytes = (Path(config.workspace) / LOCK_FILE).read_bytes()
    return {
        "root": root,
        "sources": sources,
        "path": path,
        "pipeline": pipeline,
        "config": config,
        "manifest": manifest,
        "workspace": Path(config.workspace),
        "lock_bytes": lock_bytes,
    }


def test_dvc_yaml_has_one_stage_per_pipeline_stage_chained_in_pipeline_order(tmp_path):
    sources = write_sources(tmp_path)
    pipeline = load_pipeline(str(write_pipeline(tmp_path, sources, {"ingest": {}, "exact_dedup": {"key": "text"}})))
    stages = dvc_stages(pipeline)["stages"]
    assert list(stages) == ["ingest", "exact_dedup"]
    assert stages["ingest"]["deps"] == ["sources/udhr", "sources/web"]
    assert stages["exact_dedup"]["deps"] == ["data/ingest"]
    assert shlex.split(stages["exact_dedup"]["cmd"][0])[:3] == ["tamis", "run", "exact_dedup"]
    assert "--input data/ingest --output data/exact_dedup" in stages["exact_dedup"]["cmd"][0]
    assert [s["outs"] for s in stages.values()] == [["data/ingest"], ["data/exact_dedup"]]
    # Each DVC stage depends on its own entry of the workspace pipeline: name, type and params.
    config = workspace_pipeline(pipeline)
    for name, stage in stages.items():
        key = stage["params"][0]["pipeline.yaml"][0]
        entry = dpath.get(config, key, separator=".")
        assert entry["name"] == name and entry["params"] == pipeline.stage(name).params.model_dump(mode="json")


def test_default_workspace_and_remote_live_under_the_storage_root_and_s3_roots_need_a_workspace(tmp_path):
    sources = write_sources(tmp_path)
    pipeline = load_pipeline(str(write_pipeline(tmp_path, sources, STAGES)))
    config = release_config(pipeline)
    assert config.workspace == str(tmp_path / "store/releases/tiny/workspace")
    assert config.remote == str(tmp_path / "store/releases/tiny/remote")
    s3 = pipeline.model_copy(update={"storage_root": "s3://corpus/tamis"})
    with pytest.raises(ConfigError, match="release.workspace"):
        release_config(s3)
    config = release_config(s3, {"workspace": str(tmp_path / "ws")})
    assert config.remote == "s3://corpus/tamis/releases/tiny/remote"


def test_workspace_params_spell_out_every_effective_stage_param(released):
    params = yaml.safe_load((released["workspace"] / "pipeline.yaml").read_text())
    by_name = {s["name"]: s for s in params["stages"]}
    effective = released["pipeline"].stage("exact_dedup").params.model_dump(mode="json")
    assert by_name["exact_dedup"]["params"] == effective and effective["key"] == "normalized"
    assert by_name["ingest"]["params"] == released["pipeline"].stage("ingest").params.model_dump(mode="json")
    assert params["sources"]["web"]["path"] == "sources/web"
    lock = yaml.safe_load((released["workspace"] / LOCK_FILE).read_text())
    (locked,) = lock["stages"]["exact_dedup"]["params"]["pipeline.yaml"].values()
    assert locked["params"] == effective


def test_push_sends_every_locked_object_to_the_local_remote(released):
    remote = Path(released["config"].remote) / "files/md5"
    lock = yaml.safe_load((released["workspace"] / LOCK_FILE).read_text())
    outs = [o["md5"] for s in lock["stages"].values() for o in s["outs"]]
    outs += [
        yaml.safe_load((released["workspace"] / f"sources/{n}.dvc").read_text())["outs"][0]["md5"]
        for n in ("web", "udhr")
    ]
    for md5 in outs:
        listing = remote / md5[:2] / md5[2:]
        assert listing.exists(), f"{md5} is not on the remote"
        for entry in json.loads(listing.read_text()):
            assert (remote / entry["md5"][:2] / entry["md5"][2:]).exists(), entry["relpath"]
    version_dir = Path(released["config"].remote) / "releases" / released["manifest"]["version"]
    assert (version_dir / LOCK_FILE).read_bytes() == (released["workspace"] / LOCK_FILE).read_bytes()


def test_release_manifest_traces_the_final_files_back_to_the_raw_files(released):
    manifest = released["manifest"]
    assert manifest["version"].startswith("tiny-") and manifest["version"].endswith(manifest["dvc"]["lock_sha256"][:8])
    assert manifest["run_id"] == "manual__test"
    # The release's dvc repro rebuilt the same bytes as the corpus run it follows.
    assert manifest["source_run"]["identical_parts"] == {"ingest": True, "normalize": True, "exact_dedup": True}
    raw = {f["path"]: f for s in manifest["sources"].values() for f in s["files"]}
    originals = {
        p.relative_to(released["sources"]).as_posix(): p for p in released["sources"].rglob("*") if p.is_file()
    }
    assert {f"sources/{k}" for k in originals} == set(raw)
    for rel, path in originals.items():
        assert raw[f"sources/{rel}"]["sha256"] == sha256(path)
    stages = manifest["stages"]
    assert [s["stage"] for s in stages] == ["ingest", "normalize", "exact_dedup"]
    assert {p["input"] for p in stages[0]["parts"]} == set(raw)
    for upstream, downstream in zip(stages, stages[1:]):
        assert downstream["input_manifest_sha256"] == upstream["manifest_sha256"]
        assert {p["input"] for p in downstream["parts"]} == {
            f"{upstream['output']}/{p['name']}.parquet" for p in upstream["parts"]
        }
    assert stages[-1]["counts"] == {"in": 8, "kept": 7, "dropped": 1, "quarantined": 0}
    workspace = released["workspace"]
    final = {f["path"]: f["sha256"] for f in manifest["final"]["files"]}
    for part in stages[-1]["parts"]:
        path = f"data/exact_dedup/{part['name']}.parquet"
        assert final[path] == part["sha256"] == sha256(workspace / path)


def test_sealed_outputs_keep_timings_and_workspace_paths_out_of_the_tracked_files(released):
    workspace = released["workspace"]
    manifest = json.loads((workspace / "data/ingest/_manifest.json").read_text())
    assert "finished_at" not in manifest and "elapsed_s" not in manifest
    assert all(not p["input"].startswith("/") for p in manifest["parts"])
    for commit in (workspace / "data/ingest/_commits").glob("*.json"):
        assert str(workspace) not in commit.read_text()
    timings = json.loads((workspace / "timings/ingest.json").read_text())
    assert timings["elapsed_s"] >= 0 and set(timings["parts"]) == {p["name"] for p in manifest["parts"]}


def test_repro_with_unchanged_inputs_and_params_runs_nothing(released):
    workspace = released["workspace"]
    lock = (workspace / LOCK_FILE).read_bytes()
    prepare_workspace(released["pipeline"], released["config"])
    result = repro(workspace)
    assert result == {"ran": [], "up_to_date": True}
    assert (workspace / LOCK_FILE).read_bytes() == lock


def test_a_fresh_workspace_reproduces_byte_identical_outputs(released, tmp_path):
    config = released["config"].model_copy(update={"workspace": str(tmp_path / "again")})
    workspace = prepare_workspace(released["pipeline"], config)
    assert repro(workspace)["ran"] == ["ingest", "normalize", "exact_dedup"]
    first, second = released["workspace"], Path(config.workspace)
    files = sorted(p.relative_to(first) for p in (first / "data").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in (second / "data").rglob("*") if p.is_file())
    for rel in files:
        assert sha256(first / rel) == sha256(second / rel), rel
    # Same inputs and params: the same lock, hence the same version name on the same day.
    assert (second / LOCK_FILE).read_bytes() == (first / LOCK_FILE).read_bytes()


def test_push_to_an_s3_remote_uses_the_configured_endpoint_and_the_environment_credentials(
    released, moto_s3, monkeypatch
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3["secret"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    config = released["config"].model_copy(
        update={"remote": f"s3://{moto_s3['bucket']}/releases/tiny", "endpoint_url": moto_s3["endpoint"]}
    )
    prepare_workspace(released["pipeline"], config)
    push(released["workspace"], config)
    manifest = write_release(released["pipeline"], config)
    listed = moto_s3["client"].list_objects_v2(Bucket=moto_s3["bucket"], Prefix="releases/tiny/")
    keys = {o["Key"] for o in listed.get("Contents", [])}
    lock = yaml.safe_load((released["workspace"] / LOCK_FILE).read_text())
    for stage in lock["stages"].values():
        md5 = stage["outs"][0]["md5"]
        assert f"releases/tiny/files/md5/{md5[:2]}/{md5[2:]}" in keys
    assert f"releases/tiny/releases/{manifest['version']}/{LOCK_FILE}" in keys


def test_a_changed_param_reruns_that_stage_and_not_the_ones_before_it(released):
    stages = {**STAGES, "normalize": {"collapse_spaces": False, "max_blank_lines": 0}}
    path = write_pipeline(released["root"], released["sources"], stages)
    pipeline = load_pipeline(str(path))
    prepare_workspace(pipeline, released["config"])
    ran = repro(released["workspace"])["ran"]
    assert ran[0] == "normalize" and "ingest" not in ran
    lock = yaml.safe_load((released["workspace"] / LOCK_FILE).read_text())
    (locked,) = lock["stages"]["normalize"]["params"]["pipeline.yaml"].values()
    assert locked["params"]["max_blank_lines"] == 0


def test_a_release_is_an_mlflow_run_with_the_hashes_of_dvc_lock(released):
    """``tamis release manifest`` logs the release; read back, its datasets carry DVC's own hashes."""
    import mlflow

    from tamis.release import track

    manifest, config = released["manifest"], released["config"]
    track(released["pipeline"], config, manifest)
    pointer = json.loads((Path(config.remote) / "releases" / manifest["version"] / "mlflow.json").read_text())
    run = mlflow.MlflowClient(tracking_uri=pointer["tracking_uri"]).get_run(pointer["run_id"])
    assert run.data.tags["tamis.kind"] == "release" and run.data.tags["tamis.release_version"] == manifest["version"]
    assert run.data.tags["dvc.lock_sha256"] == hashlib.sha256(released["lock_bytes"]).hexdigest()
    digests = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    lock = yaml.safe_load(released["lock_bytes"])
    final = list(STAGES)[-1]
    assert digests[f"release:{manifest['version']}"] == lock["stages"][final]["outs"][0]["md5"]
    for source in ("web", "udhr"):
        tracked = yaml.safe_load((released["workspace"] / "sources" / f"{source}.dvc").read_text())
        assert digests[f"source:{source}"] == tracked["outs"][0]["md5"]
    assert run.data.params[f"stage.{final}.key"] == str(manifest["stages"][-1]["params"]["key"])
