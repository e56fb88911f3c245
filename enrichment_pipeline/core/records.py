"""The per-IP records that flow from the passes into the inventory: a day's activity, a source's new
answers, a failed lookup. Plain data shared by `frames`, `merge` and `inventory` (no logic, no imports back)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Every enrichment source, in merge order; a source name is also a column prefix (`<source>_updated_at`).
SOURCES: tuple[str, ...] = ("maxmind", "cymru", "greynoise")


@dataclass(frozen=True)
class DayActivity:
    ip: str
    session_count: int
    event_count: int
    first_seen: datetime | None
    last_seen: datetime | None


@dataclass(frozen=True)
class SensorActivity:
    """What one sensor (honeypot) saw of one IP on one day; a day's IP totals are the sums over sensors."""

    sensor: str
    ip: str
    session_count: int
    event_count: int
    first_seen: datetime | None
    last_seen: datetime | None


@dataclass(frozen=True)
class SourceUpdate:
    ip: str
    maxmind: dict[str, Any] | None = None  # None = this source was not asked this run: keep what is stored
    cymru: dict[str, Any] | None = None
    greynoise: dict[str, Any] | None = None


@dataclass(frozen=True)
class LookupFailure:
    """A source that was asked about an IP and gave no answer (after its client's own retries)."""

    ip: str
    source: str
    error: str
