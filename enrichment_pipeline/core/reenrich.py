"""Re-enrich inventory IPs outside any ingest day: the stalest or named ones, chunk by chunk, through the
same clients and rules as the daily passes. Shared by the `refresh_stale` job and the `refresh` command."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd
from sqlalchemy import Engine

from enrichment_pipeline.core import freshness
from enrichment_pipeline.core.cymru import BulkLookupResult, CymruBulkClient
from enrichment_pipeline.core.eligibility import greynoise_askable, needs_cymru_in_frame
from enrichment_pipeline.core.frames import (
    CYMRU_FAILED,
    cymru_frame,
    greynoise_frame,
    lookup_failures,
    maxmind_frame,
    source_updates,
)
from enrichment_pipeline.core.freshness import FreshnessPolicy, MaxMindBuilds
from enrichment_pipeline.core.greynoise import FAILED as GREYNOISE_FAILED
from enrichment_pipeline.core.greynoise import (
    NOT_OBSERVED,
    OBSERVED,
    GreyNoiseAuthError,
    GreyNoiseLookupResult,
    GreyNoiseLookups,
    RequestBudget,
    budgeted_lookup,
)
from enrichment_pipeline.core.inventory import (
    backing_off_ips,
    fetch_inventory,
    fresh_ips,
    stalest_ips,
    upsert_enrichment,
)
from enrichment_pipeline.core.maxmind import MaxMindLookup

# Asks GreyNoise about IPs, within the daily budget (e.g. `core.greynoise.budgeted_lookup` bound to a client).
GreyNoiseLookup = Callable[[Sequence[str]], GreyNoiseLookupResult]


@dataclass(frozen=True)
class ChunkPlan:
    """Which sources will be asked about which IPs of one chunk; MaxMind is offline, so planning is too."""

    ips: list[str]
    maxmind: pd.DataFrame  # the current MaxMind answers of every IP of the chunk
    maxmind_fresh: set[str]  # stored MaxMind answers kept as they are
    cymru: list[str]
    greynoise: list[str]

    @property
    def maxmind_rewritten(self) -> list[str]:
        return [ip for ip in self.ips if ip not in self.maxmind_fresh]


@dataclass
class ChunkOutcome:
    plan: ChunkPlan
    cymru_failed: int = 0
    greynoise_answered: int = 0
    greynoise_failed: int = 0
    failures_recorded: int = 0
    failures_cleared: int = 0
    seconds: float = 0.0


@dataclass
class RefreshReport:
    selected: list[str]
    chunks: list[ChunkOutcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """What the refresh did, summed over its chunks."""
        chunks = self.chunks
        return {
            "selected": len(self.selected),
            "chunks": len(chunks),
            "maxmind_rewritten": sum(len(chunk.plan.maxmind_rewritten) for chunk in chunks),
            "cymru_asked": sum(len(chunk.plan.cymru) for chunk in chunks),
            "cymru_failed": sum(chunk.cymru_failed for chunk in chunks),
            "greynoise_asked": sum(len(chunk.plan.greynoise) for chunk in chunks),
            "greynoise_answered": sum(chunk.greynoise_answered for chunk in chunks),
            "greynoise_failed": sum(chunk.greynoise_failed for chunk in chunks),
            "failures_recorded": sum(chunk.failures_recorded for chunk in chunks),
            "failures_cleared": sum(chunk.failures_cleared for chunk in chunks),
        }


def budgeted_greynoise(client: GreyNoiseLookups, budget: RequestBudget) -> GreyNoiseLookup:
    """GreyNoise lookups charged to the current UTC day's budget, the one the daily runs share."""
    return lambda ips: budgeted_lookup(client, budget, ips, day=freshness.utc_now().date())


def select_stalest(
    engine: Engine, count: int, policy: FreshnessPolicy, *, now: datetime, greynoise_enabled: bool
) -> list[str]:
    """The `count` inventory IPs most in need of a lookup (due retries first, then the stalest)."""
    sources = ("maxmind", "cymru", "greynoise") if greynoise_enabled else ("maxmind", "cymru")
    return stalest_ips(engine, count, policy, now=now, sources=sources, askable=_askable)


def _askable(source: str, ip: str) -> bool:
    return source != "greynoise" or greynoise_askable(ip)


def known_ips(engine: Engine, ips: Sequence[str]) -> list[str]:
    """The IPs among `ips` that have an inventory row, in the given order."""
    present = {row["ip_address"] for row in fetch_inventory(engine, ips)}
    return [ip for ip in dict.fromkeys(ips) if ip in present]


def plan_chunk(
    engine: Engine,
    ips: Sequence[str],
    maxmind: MaxMindLookup,
    policy: FreshnessPolicy,
    *,
    now: datetime,
    greynoise_enabled: bool,
    force: bool = False,
) -> ChunkPlan:
    """Decide, without any network, what to ask: what is stale (all of it with `force`), following the
    pass rules (Cymru only without a MaxMind ASN, GreyNoise only for global IPv4); failures backing off
    wait."""
    ips = list(dict.fromkeys(ips))
    builds = MaxMindBuilds.of(maxmind)
    answers = maxmind_frame(maxmind.lookup_many(ips), builds)

    def stale(candidates: list[str], source: str) -> list[str]:
        if force:
            return candidates
        skip = fresh_ips(engine, candidates, source, policy.ttl(source), now=now, maxmind_builds=builds)
        skip |= backing_off_ips(engine, candidates, source, now=now)
        return [ip for ip in candidates if ip not in skip]

    maxmind_fresh = set(ips) - set(stale(ips, "maxmind"))
    without_asn = answers.loc[needs_cymru_in_frame(answers), "ip"].tolist()
    askable = [ip for ip in ips if greynoise_askable(ip)] if greynoise_enabled else []
    return ChunkPlan(ips, answers, maxmind_fresh, stale(without_asn, "cymru"), stale(askable, "greynoise"))


def refresh(
    engine: Engine,
    ips: Sequence[str],
    *,
    maxmind: MaxMindLookup,
    cymru: CymruBulkClient,
    greynoise: GreyNoiseLookup | None,
    policy: FreshnessPolicy,
    chunk_size: int,
    force: bool = False,
    clock: Callable[[], datetime] | None = None,
    on_chunk: Callable[[ChunkOutcome], None] | None = None,
) -> RefreshReport:
    """Re-enrich `ips` chunk by chunk; each chunk's answers and failures are written in one transaction.

    Nothing is written for IPs whose sources are all fresh. A GreyNoise error that stops the pass (a bad
    key) is raised after the chunk's other answers are saved.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    now = clock or (lambda: freshness.utc_now())  # looked up at call time, so tests can move the clock
    report = RefreshReport(selected=list(dict.fromkeys(ips)))
    for start in range(0, len(report.selected), chunk_size):
        started = time.perf_counter()
        plan = plan_chunk(
            engine,
            report.selected[start : start + chunk_size],
            maxmind,
            policy,
            now=now(),
            greynoise_enabled=greynoise is not None,
            force=force,
        )
        cymru_result = cymru.lookup(plan.cymru) if plan.cymru else BulkLookupResult()
        stop: GreyNoiseAuthError | None = None
        greynoise_rows = None
        if greynoise is not None and plan.greynoise:
            try:
                greynoise_rows = greynoise_frame(plan.greynoise, greynoise(plan.greynoise))
            except GreyNoiseAuthError as error:  # a bad key: save the chunk's other answers first
                stop = error
        outcome = _write_chunk(engine, plan, cymru_frame(cymru_result), greynoise_rows, now())
        outcome.seconds = time.perf_counter() - started
        report.chunks.append(outcome)
        if on_chunk is not None:
            on_chunk(outcome)
        if stop is not None:
            raise stop
    return report


def _write_chunk(
    engine: Engine, plan: ChunkPlan, cymru: pd.DataFrame, greynoise: pd.DataFrame | None, now: datetime
) -> ChunkOutcome:
    updates = source_updates(plan.maxmind, cymru, greynoise, maxmind_fresh=plan.maxmind_fresh)
    failures = lookup_failures(cymru, greynoise)
    stats = upsert_enrichment(engine, updates, now=now, failures=failures)
    greynoise_status = pd.Series(dtype="string") if greynoise is None else greynoise["status"]
    return ChunkOutcome(
        plan=plan,
        cymru_failed=int((cymru["status"] == CYMRU_FAILED).sum()),
        greynoise_answered=int(greynoise_status.isin((OBSERVED, NOT_OBSERVED)).sum()),
        greynoise_failed=int((greynoise_status == GREYNOISE_FAILED).sum()),
        failures_recorded=stats.failures_recorded,
        failures_cleared=stats.failures_cleared,
    )
