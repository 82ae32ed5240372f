"""The pipeline config as one validated surface: the list form of stages, types by import
path, the same type twice, the JSON Schema editors read."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
import yaml

from conftest import REPO
from tamis.pipeline import ConfigError, load_pipeline, read_config

TAMIS = [sys.executable, "-m", "tamis.cli"]


def write(tmp_path, stages, **extra):
    config = {
        "name": "p",
        "storage_root": str(tmp_path / "store"),
        "sources": {"web": {"path": str(tmp_path)}},
        "stages": stages,
        **extra,
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_the_list_form_runs_one_type_twice_under_two_names(tmp_path):
    pipeline = load_pipeline(
        str(
            write(
                tmp_path,
                [
                    {"name": "ingest", "type": "ingest"},
                    {"name": "quality", "type": "quality"},
                    {"name": "quality_strict", "type": "quality", "params": {"gopher": {"min_words": 200}}},
                ],
            )
        )
    )
    loose, strict = pipeline.stage("quality"), pipeline.stage("quality_strict")
    assert type(loose) is type(strict) and (loose.name, strict.name) == ("quality", "quality_strict")
    assert strict.params.gopher.min_words == 200 and loose.params.gopher.min_words == 50
    assert pipeline.stage_url("r", "quality_strict").endswith("/runs/r/quality_strict")
    assert pipeline.previous_stage("quality_strict") == "quality"


def drop_texts_with_digits(table, marker: str = "digits"):
    """A function stage: one reason, or None to keep, per row."""
    return [marker if any(c.isdigit() for c in text) else None for text in table.column("text").to_pylist()]


def test_a_function_is_a_stage_by_import_path_and_its_params_are_checked(tmp_path):
    import pyarrow as pa

    pipeline = load_pipeline(
        str(
            write(
                tmp_path,
                [
                    {"name": "ingest", "type": "ingest"},
                    {
                        "name": "no_digits",
                        "type": "test_pipeline_config:drop_texts_with_digits",
                        "params": {"marker": "has_digit"},
                    },
                ],
            )
        )
    )
    stage = pipeline.stage("no_digits")
    result = stage.process_batch(pa.table({"id": ["a", "b"], "source": ["web", "web"], "text": ["year 2026", "none"]}))
    assert result.kept.column("id").to_pylist() == ["b"] and result.dropped.column("reason").to_pylist() == [
        "has_digit"
    ]
    with pytest.raises(ConfigError, match="cannot take params"):
        load_pipeline(
            str(
                write(
                    tmp_path,
                    [
                        {"name": "ingest", "type": "ingest"},
                        {
                            "name": "no_digits",
                            "type": "test_pipeline_config:drop_texts_with_digits",
                            "params": {"mark": "x"},
                        },
                    ],
                )
            )
        )
    with pytest.raises(ConfigError, match="neither a Stage subclass nor a function"):
        load_pipeline(
            str(write(tmp_path, [{"name": "ingest", "type": "ingest"}, {"name": "x", "type": "string:digits"}]))
        )


@pytest.mark.parametrize(
    "stages, message",
    [
        ([{"name": "ingest", "type": "ingst"}], "unknown stage type 'ingst'"),
        ([{"name": "ingest", "type": "no_such_package.module:Thing"}], "cannot import 'no_such_package.module'"),
        ([{"name": "ingest", "type": "ingest"}, {"name": "ingest", "type": "normalize"}], "repeated: ['ingest']"),
        ([{"name": "in-gest", "type": "ingest"}], "must start with a letter"),
        ([{"name": "ingest", "type": "ingest", "params": {"max_doc_byte": 5}}], "max_doc_byte"),
    ],
)
def test_a_bad_stage_list_is_an_error_naming_the_instance(tmp_path, stages, message):
    with pytest.raises(ConfigError, match=__import__("re").escape(message)):
        load_pipeline(str(write(tmp_path, stages)))


def test_the_json_schema_accepts_the_shipped_pipelines_and_refuses_a_misspelt_key(tmp_path):
    done = subprocess.run([*TAMIS, "schema"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    shipped = sorted((REPO / "include/pipelines").glob("*.yaml"))
    assert shipped
    for path in shipped:
        config = read_config(path)
        errors = list(validator.iter_errors(config))
        assert not errors, (path.name, [e.message for e in errors[:3]])
    bad = read_config(shipped[0])
    bad["orchestration"] = {**bad.get("orchestration", {}), "retrys": 3}
    assert any("retrys" in e.message for e in validator.iter_errors(bad))
    listed = {
        **read_config(shipped[0]),
        "stages": [{"name": "quality", "type": "quality", "params": {"gopher": {"min_wrds": 3}}}],
    }
    assert any("min_wrds" in e.message for e in validator.iter_errors(listed))
