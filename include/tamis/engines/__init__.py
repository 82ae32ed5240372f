"""Engines run a stage's shards: a process pool on this machine, or Spark tasks on a cluster.

An engine is entered once per stage run (``with engine.running(stage) as run:``); inside,
``run.map(fn, items)`` calls ``fn(stage, item)`` for every item on the engine's workers and
returns the results in order, and ``run.imap(fn, items)`` yields ``(index, result)`` as
they finish. Every worker holds one copy of the stage and has called its ``setup()`` once
before its first item, so start-up (imports, models, tokenizers) is paid per worker, not
per shard. ``fn`` must be a module-level function, so that workers import it by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from tamis.stage import Stage

# fn(stage, item): the stage is the one running, so a task names its own stage class.
TaskFn = Callable[[Any, Any], Any]


class TaskFailed(Exception):
    """``fn`` raised on item ``index``; the original error is the cause."""

    def __init__(self, index: int, error: BaseException):
        super().__init__(f"item {index}: {type(error).__name__}: {error}")
        self.index = index
        self.error = error


class EngineRun(Protocol):
    @property
    def workers(self) -> int: ...

    def map(self, fn: TaskFn, items: Sequence[Any]) -> list[Any]: ...

    def imap(self, fn: TaskFn, items: Sequence[Any]) -> Iterator[tuple[int, Any]]: ...


class Engine(Protocol):
    name: str

    @property
    def workers(self) -> int: ...

    def running(self, stage: Stage) -> AbstractContextManager[EngineRun]: ...


def make_engine(
    name: str, workers: int = 1, spark_master: str | None = None, spark_conf: dict[str, str] | None = None
) -> Engine:
    """The engine a ``tamis`` command runs stages on."""
    if name == "local":
        from tamis.engines.local import LocalEngine

        return LocalEngine(workers)
    if name == "spark":
        from tamis.engines.spark import SparkEngine

        return SparkEngine.connect(spark_master, spark_conf or {})
    raise ValueError(f"unknown engine {name!r}; expected local or spark")
