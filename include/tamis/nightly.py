"""The nightly ingest: one day's partition of every source, cleaned, deduplicated against the
corpus and appended to it, one day at a time and in date order.

Each day is deduplicated against the days before it, so the corpus depends on the order in
which days are appended. Whatever the order and overlap of the runs (scheduled catch-up,
backfills, re-runs by hand, two schedulers), a day is processed only once every earlier day
of the schedule is in the corpus, and only one day at a time: a run first *claims* its day
(``<corpus>/_claims/<date>.json``, written under the corpus lease) and waits while an
earlier day is missing or another run holds a claim; ``append`` publishes the partition
and gives the claim back. The corpus is then the one an in-order run builds.

A claim of a run that died expires after ``claim_ttl_s``; the same run (a retried task)
may take its own claim again.
"""

from __future__ import annotations

import logging
import time
from datetime import date, timedelta
from typing import Any

from tamis import corpus, storage
from tamis.lease import Lease, LeaseHeld
from tamis.pipeline import Pipeline
from tamis.runner import StageError

log = logging.getLogger("tamis.nightly")

CLAIMS = "_claims"


class DayNotReady(StageError):
    """The day cannot be processed yet: an earlier day is missing, or another run is at work."""


def earlier_days(pipeline: Pipeline, day: str) -> list[str]:
    """Every day of the schedule from its start up to (not including) ``day``."""
    start = date.fromisoformat(pipeline.nightly.start_date)
    end = date.fromisoformat(day)
    return [(start + timedelta(days=i)).isoformat() for i in range(max((end - start).days, 0))]


def claim_ttl_s(pipeline: Pipeline) -> float:
    # Long enough for every task of a day's run, each within its own timeout.
    return pipeline.orchestration.task_timeout_s * (2 * len(pipeline.corpus_stages) + 2)


def _claim_url(pipeline: Pipeline, day: str) -> str:
    return storage.join(pipeline.corpus_url, CLAIMS, f"{day}.json")


def _claims(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    fs, path = storage.filesystem(storage.join(pipeline.corpus_url, CLAIMS))
    if not fs.exists(path):
        return {}
    found = {}
    for entry in sorted(fs.ls(path, detail=False)):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.endswith(".json"):
            url = storage.join(pipeline.corpus_url, CLAIMS, name)
            try:
                found[name[: -len(".json")]] = storage.read_json(url)
            except (FileNotFoundError, ValueError):
                continue  # removed or being written in between
    return found


def try_claim(pipeline: Pipeline, day: str, owner: str) -> None:
    """Claim ``day`` for ``owner`` or raise :class:`DayNotReady` saying what it waits for."""
    with Lease(pipeline.corpus_url, ttl_s=60, shared=False):
        done = corpus.partitions(pipeline.corpus_url)
        missing = [d for d in earlier_days(pipeline, day) if d not in done]
        if missing:
            raise DayNotReady(
                f"day {day} waits for earlier days to be appended: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else "")
            )
        now = time.time()
        for other_day, claim in _claims(pipeline).items():
            if claim.get("owner") == owner:
                continue
            if now - float(claim.get("claimed_at", 0)) > claim_ttl_s(pipeline):
                log.warning("nightly: the claim of %s on %s expired; taking over", claim.get("owner"), other_day)
                storage.remove_tree(_claim_url(pipeline, other_day))
                continue
            raise DayNotReady(f"day {day} waits: run {claim.get('owner')} is processing {other_day}")
        storage.write_json_atomic(
            _claim_url(pipeline, day), {"owner": owner, "day": day, "claimed_at": now}, pipeline.corpus_url
        )
    log.info("nightly: %s claimed %s", owner, day)


def claim(pipeline: Pipeline, day: str, owner: str, wait_s: float, poll_s: float = 5.0) -> None:
    """Claim ``day``, waiting up to ``wait_s`` for earlier days and other runs."""
    deadline = time.time() + wait_s
    while True:
        try:
            return try_claim(pipeline, day, owner)
        except (DayNotReady, LeaseHeld) as exc:
            if time.time() >= deadline:
                raise DayNotReady(f"{exc} (waited {wait_s:.0f}s)") from None
            log.info("nightly: %s", exc)
            time.sleep(poll_s)


def check_claim(pipeline: Pipeline, day: str, owner: str) -> None:
    """Appending is for the run that holds the day."""
    url = _claim_url(pipeline, day)
    held = storage.read_json(url) if storage.exists(url) else None
    if held is None or held.get("owner") != owner:
        raise DayNotReady(
            f"day {day} is not claimed by {owner} (claim: {held and held.get('owner')}); "
            "a nightly run claims its day before its first stage"
        )


def release(pipeline: Pipeline, day: str, owner: str) -> None:
    url = _claim_url(pipeline, day)
    if storage.exists(url) and storage.read_json(url).get("owner") == owner:
        storage.remove_tree(url)
