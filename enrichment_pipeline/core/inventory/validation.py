"""Input checks run before anything is written or asked: known sources, aware datetimes, canonical IPs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from enrichment_pipeline.core.ips import canonical_ip
from enrichment_pipeline.core.records import (
    SOURCES,
    DayActivity,
    LookupFailure,
    SourceUpdate,
)


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")


def check_aware(now: datetime) -> None:
    if now.utcoffset() is None:
        raise ValueError(f"naive `now` {now.isoformat()}: pass a timezone-aware datetime")


def check_inputs(
    activity: Sequence[DayActivity],
    updates: Sequence[SourceUpdate],
    failures: Sequence[LookupFailure],
    now: datetime,
) -> None:
    check_aware(now)
    failed_pairs: set[tuple[str, str]] = set()
    for failure in failures:
        check_source(failure.source)
        if (failure.ip, failure.source) in failed_pairs:
            raise ValueError(f"{failure.source} failure for {failure.ip!r} listed twice")
        failed_pairs.add((failure.ip, failure.source))
    seen: set[str] = set()
    for row in activity:
        if row.ip in seen:
            raise ValueError(f"IP {row.ip!r} appears twice in one day's activity")
        seen.add(row.ip)
        for moment in (row.first_seen, row.last_seen):
            if moment is not None and moment.utcoffset() is None:
                raise ValueError(f"naive first_seen/last_seen for {row.ip}: pass timezone-aware datetimes")
    for ip in seen.union(row.ip for row in updates).union(ip for ip, _ in failed_pairs):
        if canonical_ip(ip) != ip:
            raise ValueError(f"not a canonical IP address: {ip!r}")
