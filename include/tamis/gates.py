"""Quality gates: a Great Expectations suite validates each stage's output.

Two batches are validated: the records (a bounded sample, so memory does not grow
with the corpus) and a one-row table of whole-dataset facts computed with Arrow over
every part (row count, distinct ids, drop rate, the reconcile difference). A failed
gate exits non-zero, so nothing downstream consumes the dataset.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from tamis import storage
from tamis.dataset import GATE_RESULT, Dataset

log = logging.getLogger("tamis.gates")


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    required_columns: list[str] = Field(default_factory=lambda: ["id", "source", "text"])
    unique_ids: bool = True
    min_rows: int = 1
    max_drop_rate: float = Field(default=0.5, ge=0.0, le=1.0)
    min_text_chars: int | None = 1
    max_text_chars: int | None = None
    sample_rows: int = 20000
    # Further expectations by Great Expectations name, e.g.
    # {expect_column_values_to_not_match_regex: {column: text, regex: "[\\w.]+@[\\w.]+"}}
    expectations: list[dict[str, dict[str, Any]]] = Field(default_factory=list)


def gate_config(gates: dict[str, Any], stage: str, stage_default: dict[str, Any] | None = None) -> GateConfig:
    """A stage's gate: the stage's own default (what fits its output), then the pipeline's
    ``gates.default``, then its ``gates.<stage>``, each overriding the one before."""
    merged = {**(stage_default or {}), **(gates.get("default") or {}), **(gates.get(stage) or {})}
    return GateConfig(**merged)


def expectation_class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def unknown_expectations(config: GateConfig) -> list[str]:
    """Expectation names of ``config`` that Great Expectations does not have. Read from the
    package's files (one module per expectation), so the check costs no import of it."""
    names = [name for item in config.expectations for name in item]
    return [name for name in names if name not in _known_expectations()]


@functools.lru_cache(maxsize=1)
def _known_expectations() -> frozenset[str]:
    spec = importlib.util.find_spec("great_expectations")
    if spec is None or spec.origin is None:
        return frozenset()
    core = Path(spec.origin).parent / "expectations" / "core"
    return frozenset(p.stem for p in core.glob("expect_*.py"))


def dataset_facts(dataset: Dataset, manifest: dict[str, Any]) -> dict[str, float]:
    counts = manifest["counts"]
    ids = (
        dataset.read(columns=["id"]).column("id")
        if "id" in dataset.column_names()
        else pa.chunked_array([], pa.string())
    )
    lost = counts["dropped"] + counts["quarantined"]
    return {
        "rows": float(counts["kept"]),
        "distinct_ids": float(pc.count_distinct(ids).as_py()) if len(ids) else 0.0,
        "id_rows": float(len(ids)),
        "drop_rate": lost / counts["in"] if counts["in"] else 0.0,
        "reconcile_difference": float(counts["in"] - counts["kept"] - lost),
    }


def _sample(dataset: Dataset, rows: int) -> pa.Table:
    batches, taken = [], 0
    for batch in dataset.iter_batches():
        batches.append(batch.slice(0, rows - taken))
        taken += min(batch.num_rows, rows - taken)
        if taken >= rows:
            break
    return pa.Table.from_batches(batches) if batches else pa.table({})


def validate(dataset_url: str, stage: str, config: GateConfig) -> dict[str, Any]:
    """Validate the dataset at ``dataset_url``; write and return the result summary."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    import great_expectations.expectations as gxe

    dataset = Dataset(dataset_url)
    manifest = dataset.manifest()
    facts = dataset_facts(dataset, manifest)
    sample = _sample(dataset, config.sample_rows)

    context = gx.get_context(mode="ephemeral")
    source = context.data_sources.add_pandas("tamis")
    records = source.add_dataframe_asset("records").add_batch_definition_whole_dataframe("sample")
    totals = source.add_dataframe_asset("facts").add_batch_definition_whole_dataframe("all")

    record_suite = gx.ExpectationSuite(name=f"{stage}.records")
    for column in config.required_columns:
        record_suite.add_expectation(gxe.ExpectColumnToExist(column=column))
    if "id" in config.required_columns:
        record_suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column="id"))
    if "text" in config.required_columns:
        record_suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column="text"))
        if config.min_text_chars is not None or config.max_text_chars is not None:
            record_suite.add_expectation(
                gxe.ExpectColumnValueLengthsToBeBetween(
                    column="text", min_value=config.min_text_chars, max_value=config.max_text_chars
                )
            )
    for item in config.expectations:
        for name, kwargs in item.items():
            record_suite.add_expectation(getattr(gxe, expectation_class_name(name))(**kwargs))

    fact_suite = gx.ExpectationSuite(name=f"{stage}.dataset")
    fact_suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="rows", min_value=config.min_rows))
    fact_suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="drop_rate", max_value=config.max_drop_rate))
    fact_suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(column="reconcile_difference", min_value=0, max_value=0)
    )
    if config.unique_ids:
        fact_suite.add_expectation(gxe.ExpectColumnPairValuesToBeEqual(column_A="distinct_ids", column_B="id_rows"))

    checks = [(fact_suite, totals, pa.table({k: [v] for k, v in facts.items()}).to_pandas())]
    if sample.num_rows or config.min_rows > 0:  # an allowed-empty dataset has no records to check
        checks.insert(0, (record_suite, records, sample.to_pandas()))
    results = []
    for suite, batch, frame in checks:
        suite = context.suites.add(suite)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=suite.name, data=batch, suite=suite)
        )
        results.append(definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY"))

    failed = []
    for r in results:
        for e in r.results:
            if not e.success:
                expectation = e.expectation_config
                assert expectation is not None, "a validation result names the expectation it checked"
                failed.append(
                    {"suite": r.suite_name, "expectation": expectation.type, "kwargs": _plain(expectation.kwargs)}
                )
    summary = {
        "stage": stage,
        "dataset": dataset_url,
        "success": all(r.success for r in results),
        "evaluated": sum(len(r.results) for r in results),
        "failed": failed,
        "facts": facts,
        "sample_rows": sample.num_rows,
        "suites": [r.describe_dict() for r in results],
    }
    storage.write_json_atomic(storage.join(dataset_url, GATE_RESULT), summary, dataset_url)
    return summary


def _plain(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k != "batch_id"}
