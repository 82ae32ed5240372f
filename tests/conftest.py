from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tamis.pipeline import load_pipeline

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


@pytest.fixture
def make_pipeline(tmp_path):
    """Write a pipeline YAML into tmp_path and load it; sources are {name: {path, ...}}."""

    def make(sources: dict, stages: dict | None = None, gates: dict | None = None, workers: int = 1, name: str = "test"):
        config = {
            "name": name,
            "storage_root": str(tmp_path / "store"),
            "workers": workers,
            "sources": sources,
            "stages": stages or {"ingest": {}, "normalize": {}, "exact_dedup": {}},
        }
        if gates is not None:
            config["gates"] = gates
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return load_pipeline(str(path))

    return make


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    """An Airflow home of the tests' own (SQLite), set before Airflow is first imported."""
    home = tmp_path_factory.mktemp("airflow_home")
    os.environ.update(airflow_env(home))
    return home


def airflow_env(home: Path, data_root: Path | None = None) -> dict[str, str]:
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "GX_ANALYTICS_ENABLED": "False",
    }
    if data_root is not None:
        env["TAMIS_DATA_ROOT"] = str(data_root)
    return env
