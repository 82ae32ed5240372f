"""A team's own filters from a package outside tamis (examples/tamis-example-filters),
installed with pip: used by `tamis build`, by corpus_build locally and in the rendered
Kubernetes tasks, with their reasons in the manifest, gate, report and DVC stages; and one
built-in stage type running twice under two names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, airflow_env

pytestmark = pytest.mark.slow

PLUGIN = REPO / "examples" / "tamis-example-filters"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
TAMIS = [sys.executable, "-m", "tamis.cli"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example package installed with pip, as a team would install theirs."""
    target = tmp_path_factory.mktemp("plugin_site")
    # pip builds a local folder in place (build/, *.egg-info): build a copy, never the repository.
    source = tmp_path_factory.mktemp("plugin_source") / PLUGIN.name
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    assert list(target.glob("tamis_example_filters-*.dist-info"))
    return target


@pytest.fixture(scope="module")
def plugin_pipeline(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plugin_pipeline")
    sample = REPO / "include" / "sample"
    config = {
        "name": "teamfilters",
        "storage_root": str(root / "store"),
        "workers": 2,
        "execution": {"mode": "${TAMIS_EXECUTION:-local}"},
        "sources": {
            "web": {"path": str(sample / "web"), "id_field": "id", "url_field": "url"},
            "udhr": {"path": str(sample / "udhr"), "format": "text"},
        },
        "stages": [
            {"name": "ingest", "type": "ingest"},
            {"name": "normalize", "type": "normalize"},
            {"name": "normalize_nfkc", "type": "normalize", "params": {"unicode_form": "NFKC"}},
            {"name": "quality", "type": "quality"},
            {"name": "min_length", "type": "min_length", "params": {"min_chars": 1500}},
            {
                "name": "short_lines",
                "type": "tamis_example_filters:drop_short_lines",
                "params": {"max_short_line_ratio": 0.2, "short_line_chars": 60},
            },
            {"name": "pii", "type": "pii"},
            {"name": "exact_dedup", "type": "exact_dedup"},
        ],
        "release": {"workspace": str(root / "workspace"), "remote": str(root / "remote")},
    }
    path = root / "teamfilters.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def env_with(site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAMIS_", "AWS_", "AIRFLOW_CONN_"))}
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")])), **extra}


def manifest(root: Path, run: str, stage: str) -> dict:
    return json.loads((root / "store/runs" / run / stage / "_manifest.json").read_text())


def test_tamis_build_runs_the_team_s_stages_and_a_built_in_twice(site, plugin_pipeline):
    done = subprocess.run(
        [*TAMIS, "build", "--pipeline", str(plugin_pipeline), "--run-id", "b"],
        env=env_with(site),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    root = plugin_pipeline.parent
    min_length, short_lines = manifest(root, "b", "min_length"), manifest(root, "b", "short_lines")
    assert min_length["type"] == "tamis_example_filters:MinLength" and min_length["drop_reasons"]["too_short"] > 0
    assert short_lines["type"] == "tamis.stage:FunctionStage" and short_lines["drop_reasons"]["mostly_short_lines"] > 0
    assert manifest(root, "b", "pii")["counts"]["in"] == short_lines["counts"]["kept"]
    nfkc = manifest(root, "b", "normalize_nfkc")
    assert (
        nfkc["params"]["unicode_form"] == "NFKC" and manifest(root, "b", "normalize")["params"]["unicode_form"] == "NFC"
    )
    for stage in ("min_length", "short_lines", "normalize_nfkc"):
        gate = json.loads((root / "store/runs/b" / stage / "_gates/result.json").read_text())
        assert gate["success"], stage
    from tamis.report import run_report

    rows = {
        row["stage"]: row
        for row in run_report(
            str(root / "store/runs/b"),
            ["ingest", "normalize", "normalize_nfkc", "quality", "min_length", "short_lines", "pii", "exact_dedup"],
        )["stages"]
    }
    assert rows["min_length"]["drop_reasons"] == min_length["drop_reasons"]


def test_the_team_s_stages_are_dvc_stages_of_a_release(site, plugin_pipeline):
    env = env_with(site)
    for step in ("prepare", "repro"):
        done = subprocess.run(
            [*TAMIS, "release", step, "--pipeline", str(plugin_pipeline)],
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert done.returncode == 0, (step, done.stderr[-3000:])
    workspace = plugin_pipeline.parent / "workspace"
    stages = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]
    assert {"min_length", "short_lines", "normalize_nfkc"} <= set(stages)
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    assert lock["min_length"]["outs"][0]["path"] == "data/min_length"


def test_corpus_build_runs_them_locally_and_as_rendered_pods(site, plugin_pipeline, tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "team_build.py").write_text(
        "from tamis_airflow.corpus import build_corpus_dag\n"
        f"dag = build_corpus_dag({str(plugin_pipeline)!r}, dag_id='team_build')\n"
    )
    env = env_with(site, **{**airflow_env(tmp_path / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(dags)})
    for command in (["db", "migrate"], ["dags", "reserialize"]):
        subprocess.run([AIRFLOW, *command], env=env, check=True, capture_output=True)
    done = subprocess.run(
        [AIRFLOW, "dags", "test", "team_build"], env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0 and "state=success" in done.stdout + done.stderr, (done.stdout + done.stderr)[-4000:]

    # Kubernetes mode: the team's stage fans out; one of its pods, as rendered, runs here.
    probe = tmp_path / "render.py"
    probe.write_text(RENDER_ONE_POD)
    rendered = subprocess.run(
        [sys.executable, str(probe), str(dags)],
        env={**env, "TAMIS_EXECUTION": "kubernetes"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    argv = json.loads(rendered.stdout.strip().splitlines()[-1])
    assert argv[:2] == ["run", "min_length"] and "--shard" in argv
    pod = subprocess.run(
        ["tamis", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert pod.returncode == 0, pod.stderr[-3000:]
    assert json.loads(pod.stdout.strip().splitlines()[-1])["committed_shards"] == argv[argv.index("--shard") + 1 :: 2]


# Runs in a subprocess with the plugin on the path: parses the DAG in kubernetes mode, runs the
# shard lister of the team's stage for the run the local build made, unmaps its first pod and
# prints the container's arguments as rendered.
RENDER_ONE_POD = """
import json, sys
from pathlib import Path
from airflow.dag_processing.dagbag import DagBag
from kubernetes.client import ApiClient
from tamis.cli import run_one
from tamis.pipeline import load_pipeline


def main():
    folder = Path(sys.argv[1])
    bag = DagBag(dag_folder=str(folder), bundle_path=folder, safe_mode=False)
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["team_build"]
    run_id = "k8s-probe"
    pipeline = load_pipeline(dag.params.dump()["pipeline"])
    # The stages before the team's, as the earlier pods would have left them.
    for stage in pipeline.stage_names[: pipeline.stage_names.index("min_length")]:
        run_one(pipeline, stage, run_id)
    context = lambda task: {"dag": dag, "task": task, "run_id": run_id, "params": dag.params.dump(), "ds": "2026-11-23"}
    lister = dag.get_task("list_min_length_shards")
    lister.render_template_fields(context(lister))
    batches = lister.execute(context(lister))
    pod_task = dag.get_task("min_length").unmap({"arguments": batches[0]})
    pod_task.render_template_fields(context(pod_task))
    pod = ApiClient().sanitize_for_serialization(pod_task.build_pod_request_obj(dry_run=True))
    assert pod["spec"]["containers"][0]["command"] == ["tamis"]
    print(json.dumps(pod["spec"]["containers"][0]["args"]))


if __name__ == "__main__":  # the local engine's workers start from a forkserver that imports this file
    main()
"""
