"""The local engine: the stage's shards in a process pool on this machine.

One pool per stage run: its workers fork from a fresh single-threaded forkserver that has
already imported Arrow and tamis (a plain fork of this process is unsafe: Arrow's thread
pools do not survive it; spawn would pay the imports again), receive the stage once, call
its ``setup()`` once, and then serve every map step and every shard of the run. Each
worker sizes the native thread pools (Arrow, tokenizers, BLAS) to its share of the cores,
so N workers never run N times the machine's threads. A worker whose parent dies exits
within a second instead of going on committing shards.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from tamis.engines import TaskFailed, TaskFn
from tamis.stage import Stage

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS", "POLARS_MAX_THREADS")

_worker_stage: Stage | None = None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def limit_threads(threads: int) -> None:
    """Native thread pools of this process sized to ``threads`` (call before they start)."""
    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    import pyarrow as pa

    pa.set_cpu_count(threads)
    pa.set_io_thread_count(max(threads, 2))


# The forkserver listens on a Unix socket at TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX; the
# kernel takes such a path up to 107 bytes.
_SOCKET_PATH_MAX = 107
_SOCKET_UNDER_TMPDIR = len("/pymp-XXXXXXXX/listener-XXXXXXXX")


def process_context() -> multiprocessing.context.BaseContext:
    tmp = tempfile.gettempdir()
    if len(os.fsencode(tmp)) + _SOCKET_UNDER_TMPDIR > _SOCKET_PATH_MAX:
        raise OSError(
            f"the temporary folder {tmp} is too long a path for the worker pool's socket "
            f"(at most {_SOCKET_PATH_MAX - _SOCKET_UNDER_TMPDIR} bytes): set TMPDIR to a shorter folder"
        )
    context = multiprocessing.get_context("forkserver")
    # pandas: Arrow imports it at a worker's first Parquet write (about 0.2 s per worker and stage).
    context.set_forkserver_preload(["tamis.engines.local", "tamis.runner", "pyarrow.parquet", "numpy", "pandas"])
    return context


def _exit_with_parent(parent_pid: int) -> None:
    while True:
        time.sleep(0.5)
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            os._exit(70)
        except PermissionError:  # the pid was reused by another user's process: the parent is gone
            os._exit(70)


def _init_worker(stage_bytes: bytes, parent_pid: int, threads: int) -> None:
    global _worker_stage
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True, name="tamis-parent-watch").start()
    limit_threads(threads)
    stage = pickle.loads(stage_bytes)
    stage.setup()
    _worker_stage = stage


def _call(fn: TaskFn, item: Any) -> Any:
    assert _worker_stage is not None, "worker was not initialised with a stage"
    return fn(_worker_stage, item)


class LocalEngine:
    name = "local"

    def __init__(self, workers: int = 1):
        self.workers = max(1, int(workers))

    @contextlib.contextmanager
    def running(self, stage: Stage) -> Iterator[_Run]:
        run = _Run(stage, self.workers)
        try:
            yield run
        finally:
            run.close()


class _Run:
    """A stage's workers: none (this process) for one worker, else a pool started on first use."""

    def __init__(self, stage: Stage, workers: int):
        self.stage = stage
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._set_up = False

    def _local_stage(self) -> Stage:
        if not self._set_up:
            self.stage.setup()
            self._set_up = True
        return self.stage

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            threads = max(1, available_cores() // self.workers)
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=process_context(),
                initializer=_init_worker,
                initargs=(pickle.dumps(self.stage), os.getpid(), threads),
            )
        return self._pool

    def map(self, fn: TaskFn, items: Sequence[Any]) -> list[Any]:
        results: list[Any] = [None] * len(items)
        for index, result in self.imap(fn, items):
            results[index] = result
        return results

    def imap(self, fn: TaskFn, items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        items = list(items)
        if self.workers <= 1 or len(items) <= 1:
            stage = self._local_stage()
            for index, item in enumerate(items):
                try:
                    result = fn(stage, item)
                except Exception as exc:
                    raise TaskFailed(index, exc) from exc
                yield index, result
            return
        pool = self._executor()
        futures: dict[Future, int] = {pool.submit(_call, fn, item): i for i, item in enumerate(items)}
        remaining = set(futures)
        try:
            while remaining:
                finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in finished:
                    try:
                        result = future.result()
                    except Exception as exc:
                        raise TaskFailed(futures[future], exc) from exc
                    yield futures[future], result
        finally:
            for future in remaining:
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
