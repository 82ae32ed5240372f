"""The ``tamis`` command lines that tasks run, the same in a local process and in a pod."""

from __future__ import annotations

import os
import shlex
import sys

RUN_ID = "{{ run_id }}"


def tamis_executable() -> str:
    """The ``tamis`` beside this Python (a pod's image puts ``tamis`` on PATH instead)."""
    beside = os.path.join(os.path.dirname(sys.executable), "tamis")
    return beside if os.path.exists(beside) else "tamis"


def stage_argv(stage: str, pipeline: str, extra: list[str] | None = None) -> list[str]:
    return ["run", stage, "--pipeline", pipeline, "--run-id", RUN_ID, *(extra or [])]


def gate_argv(stage: str, pipeline: str) -> list[str]:
    return ["validate", stage, "--pipeline", pipeline, "--run-id", RUN_ID]


def summary_argv(pipeline: str) -> list[str]:
    return ["summary", "--pipeline", pipeline, "--run-id", RUN_ID]


def shell_command(executable: str, argv: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in [executable, *argv])


def append_argv(pipeline: str, date: str, owner: str) -> list[str]:
    return ["append", "--pipeline", pipeline, "--run-id", RUN_ID, "--date", date, "--owner", owner]


def claim_argv(pipeline: str, date: str, owner: str, wait_s: int) -> list[str]:
    return ["nightly", "claim", "--pipeline", pipeline, "--date", date, "--owner", owner, "--wait-s", str(wait_s)]
