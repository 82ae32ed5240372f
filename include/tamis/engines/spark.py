"""The Spark engine: a stage's shards as Spark tasks, on any master (``local[*]``, a standalone
cluster ``spark://``, Kubernetes ``k8s://``).

Every shard is one Spark task that runs the stage's own code (:func:`tamis.runner.run_shard`)
on an executor, so a Spark run writes the same parts, side tables and commits as a local
run. Data never goes through Hadoop's filesystems: tasks read and write through tamis's
storage layer (fsspec), so ``s3://`` works with no Hadoop S3 connector, and the
credentials and endpoint travel to the executors as environment variables. Whole-dataset
stages may do their global step with Spark SQL over frames built by :meth:`_SparkRun.frame`
(``plan_spark``), so that step's memory is spread over the executors.

On each executor's Python worker the stage is unpickled once and its ``setup()`` called
once (a cache keyed by the stage's bytes), then reused by every task of the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import sys
import traceback
from functools import partial
from typing import Any, Iterator, Sequence

from tamis.engines import TaskFailed, TaskFn
from tamis.stage import Stage

log = logging.getLogger("tamis.engines.spark")

# Environment the executors need to reach the store as the driver does.
FORWARDED_ENV_PREFIXES = ("AWS_", "TAMIS_")
FORWARDED_ENV = ("PYTHONPATH", "GX_ANALYTICS_ENABLED", "HF_HUB_OFFLINE")

_executor_stages: dict[str, Stage] = {}


def under_spark_submit() -> bool:
    """True in a driver started by spark-submit (a SparkApplication, or spark-submit by hand):
    the master and the rest of the configuration then come from spark-submit."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def session(master: str | None = None, conf: dict[str, str] | None = None, app_name: str = "tamis"):
    from pyspark.sql import SparkSession

    # Python workers must run the interpreter that has tamis installed.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if not under_spark_submit():
        builder = builder.master(master or "local[*]")
        # Executors run the same interpreter, with the driver's storage settings.
        builder = builder.config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
        builder = builder.config("spark.ui.enabled", "false")
        for name, value in sorted(os.environ.items()):
            if name.startswith(FORWARDED_ENV_PREFIXES) or name in FORWARDED_ENV:
                builder = builder.config(f"spark.executorEnv.{name}", value)
    for key, value in (conf or {}).items():
        builder = builder.config(key, str(value))
    return builder.getOrCreate()


class SparkEngine:
    name = "spark"

    def __init__(self, spark_session):
        self.session = spark_session

    @classmethod
    def connect(cls, master: str | None = None, conf: dict[str, str] | None = None) -> "SparkEngine":
        engine = cls(session(master, conf))
        log.info("spark: running on %s with %d cores", engine.session.sparkContext.master, engine.workers)
        return engine

    @property
    def workers(self) -> int:
        return int(self.session.sparkContext.defaultParallelism)

    @contextlib.contextmanager
    def running(self, stage: Stage) -> Iterator["_SparkRun"]:
        run = _SparkRun(self, stage)
        try:
            yield run
        finally:
            run.close()


class _SparkRun:
    def __init__(self, engine: SparkEngine, stage: Stage):
        self.engine = engine
        self.session = engine.session
        self.stage = stage
        blob = pickle.dumps(stage)
        self.key = hashlib.sha256(blob).hexdigest()
        self._broadcast = self.session.sparkContext.broadcast(blob)

    @property
    def workers(self) -> int:
        return self.engine.workers

    def map(self, fn: TaskFn, items: Sequence[Any]) -> list[Any]:
        items = list(items)
        if not items:
            return []
        rdd = self.session.sparkContext.parallelize(list(enumerate(items)), len(items))
        outcomes = rdd.map(partial(_call_on_executor, fn, self._broadcast, self.key)).collect()
        results: list[Any] = [None] * len(items)
        for index, ok, value in outcomes:
            if not ok:
                error, trace = pickle.loads(value)
                log.error("task %d failed on an executor:\n%s", index, trace)
                raise TaskFailed(index, error)
            results[index] = value
        return results

    def imap(self, fn: TaskFn, items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        yield from enumerate(self.map(fn, items))

    def frame(self, fn: TaskFn, items: Sequence[Any], schema):
        """A DataFrame of the Arrow tables ``fn(stage, item)`` yields for every item, one
        Spark task per item; ``schema`` is a ``pyarrow.Schema``."""
        from pyspark.sql.pandas.types import from_arrow_schema

        rows = [(i, pickle.dumps(item)) for i, item in enumerate(items)]
        spark_schema = from_arrow_schema(schema)
        if not rows:
            return self.session.createDataFrame([], spark_schema)
        base = self.session.sparkContext.parallelize(rows, len(rows)).toDF("idx int, item binary")
        return base.mapInArrow(partial(_frame_on_executor, fn, self._broadcast, self.key, schema), spark_schema)

    def close(self) -> None:
        self._broadcast.unpersist()


def _executor_stage(broadcast, key: str) -> Stage:
    stage = _executor_stages.get(key)
    if stage is None:
        from tamis.engines.local import limit_threads

        limit_threads(_task_cpus())
        stage = pickle.loads(broadcast.value)
        stage.setup()
        _executor_stages.clear()  # one stage run at a time per Python worker
        _executor_stages[key] = stage
    return stage


def _task_cpus() -> int:
    from pyspark import TaskContext

    context = TaskContext.get()
    return max(1, int(context.cpus())) if context is not None else 1


def _call_on_executor(fn: TaskFn, broadcast, key: str, indexed: tuple[int, Any]) -> tuple[int, bool, Any]:
    index, item = indexed
    try:
        return index, True, fn(_executor_stage(broadcast, key), item)
    except Exception as exc:  # returned, not raised: a bad shard fails the stage at once, with its name
        try:
            payload = pickle.dumps((exc, traceback.format_exc()))
        except Exception:
            payload = pickle.dumps((RuntimeError(f"{type(exc).__name__}: {exc}"), traceback.format_exc()))
        return index, False, payload


def _frame_on_executor(fn: TaskFn, broadcast, key: str, schema, batches):
    import pyarrow as pa

    stage = _executor_stage(broadcast, key)
    for batch in batches:
        for item_blob in batch.column("item").to_pylist():
            for table in fn(stage, pickle.loads(item_blob)):
                table = table if isinstance(table, pa.Table) else pa.Table.from_batches([table])
                if table.num_rows:  # an empty part may not even have the columns
                    yield from table.cast(schema).to_batches()
