"""Read-only questions to the inventory: rows by IP, which stored answers are fresh, which IPs are most
overdue for a lookup, the retry list. The rules themselves live in `freshness` and `eligibility`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, exists, not_, select
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement

from enrichment_pipeline.core.eligibility import (
    greynoise_candidates_sql,
    needs_cymru_sql,
)
from enrichment_pipeline.core.freshness import (
    FreshnessPolicy,
    MaxMindBuilds,
    expires_at,
    fresh_sql,
)
from enrichment_pipeline.core.inventory import bulk_sql
from enrichment_pipeline.core.inventory.schema import (
    DAILY_ACTIVITY,
    FAILURES,
    INVENTORY,
    SENSOR_ACTIVITY,
)
from enrichment_pipeline.core.inventory.validation import check_aware, check_source
from enrichment_pipeline.core.records import SOURCES

# Rows a streamed query fetches at a time.
_STREAM_ROWS = 500


def fetch_inventory(
    engine: Engine, ips: Iterable[str] | None = None, columns: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Inventory rows (all, or those of `ips`) as dicts keyed by column name (every column, or `columns`),
    ordered by IP text."""
    selected = INVENTORY.columns if columns is None else [INVENTORY.c[name] for name in columns]
    query = select(*selected).order_by(INVENTORY.c.ip_address)
    with engine.connect() as conn:
        if ips is not None:
            query = query.where(bulk_sql.among(conn.dialect.name, INVENTORY.c.ip_address, set(ips)))
        result = conn.execute(query)
        names = list(result.keys())  # once: a RowMapping per row looks its keys up again
        return [dict(zip(names, row, strict=True)) for row in result]


def fresh_ips(
    engine: Engine,
    ips: Iterable[str],
    source: str,
    ttl: timedelta,
    *,
    now: datetime,
    maxmind_builds: MaxMindBuilds | None = None,
) -> set[str]:
    """The IPs among `ips` whose `<source>` answer is younger than `ttl` (updated after `now - ttl`).

    With `maxmind_builds`, a MaxMind answer is fresh only if those database builds gave it.
    """
    check_source(source)
    check_aware(now)
    fresh_now = _fresh(source, ttl, now, maxmind_builds if source == "maxmind" else None)
    with engine.connect() as conn:
        among = bulk_sql.among(conn.dialect.name, INVENTORY.c.ip_address, set(ips))
        return set(conn.scalars(select(INVENTORY.c.ip_address).where(among, fresh_now)))


def stalest_ips(
    engine: Engine,
    limit: int,
    policy: FreshnessPolicy,
    *,
    now: datetime,
    sources: Sequence[str] = SOURCES,
    askable: Callable[[str, str], bool] | None = None,
) -> list[str]:
    """Up to `limit` inventory IPs most in need of a lookup by one of `sources`, most urgent first.

    First the failed lookups whose retry time has come (earliest first), then the IPs whose answer
    expired longest ago: a MaxMind answer older than its TTL or from other database builds, a Cymru
    answer while MaxMind has no ASN, a GreyNoise answer for IPv4. A failed source still backing off
    does not make its IP due, nor does a source that `askable(source, ip)` says cannot answer.
    """
    check_aware(now)
    for source in sources:
        check_source(source)
    if limit <= 0 or not sources:
        return []
    can_ask = askable or (lambda _source, _ip: True)
    failures = FAILURES.c
    due_retry = (
        select(failures.ip_address, failures.source)
        .where(failures.source.in_(sources), failures.next_retry_at <= now)
        .order_by(failures.next_retry_at, failures.ip_address)
    )
    expiring: list[tuple[datetime, str]] = []
    with engine.connect() as conn:
        retries = _first(conn, due_retry, limit, lambda row: can_ask(row.source, row.ip_address))
        chosen = dict.fromkeys(row.ip_address for row in retries)
        for source in sources:
            stamp = INVENTORY.c[f"{source}_updated_at"]
            ttl = policy.ttl(source)
            query = (
                select(INVENTORY.c.ip_address, stamp)
                .where(_due(source, ttl, now, policy.maxmind_builds))
                .order_by(stamp.asc().nulls_first(), INVENTORY.c.ip_address)
            )
            rows = _first(conn, query, limit, lambda row, source=source: can_ask(source, row[0]))
            expiring.extend((expires_at(updated_at, ttl), ip) for ip, updated_at in rows)
    for _, ip in sorted(expiring):
        chosen.setdefault(ip)
    return list(chosen)[:limit]


def backing_off_ips(engine: Engine, ips: Iterable[str], source: str, *, now: datetime) -> set[str]:
    """The IPs among `ips` whose failed `source` lookup must not be retried before a later time."""
    check_source(source)
    check_aware(now)
    failures = FAILURES.c
    with engine.connect() as conn:
        among = bulk_sql.among(conn.dialect.name, failures.ip_address, set(ips))
        query = select(failures.ip_address).where(among, failures.source == source, failures.next_retry_at > now)
        return set(conn.scalars(query))


def fetch_failures(engine: Engine) -> list[dict[str, Any]]:
    """The whole retry list as dicts keyed by column name, ordered by IP and source."""
    with engine.connect() as conn:
        query = select(FAILURES).order_by(FAILURES.c.ip_address, FAILURES.c.source)
        return [dict(row) for row in conn.execute(query).mappings()]


def sensor_activity_on(engine: Engine, day: date) -> list[tuple[str, str, int]]:
    """(sensor, ip, sessions) of every `ip_sensor_activity` row of `day`."""
    sensors = SENSOR_ACTIVITY.c
    query = select(sensors.sensor, sensors.ip_address, sensors.session_count).where(sensors.day == day)
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


def ips_seen_on(engine: Engine, day: date) -> set[str]:
    """The IPs that have an `ip_daily_activity` row for `day`."""
    with engine.connect() as conn:
        return set(conn.scalars(select(DAILY_ACTIVITY.c.ip_address).where(DAILY_ACTIVITY.c.day == day)))


def _first(conn: Connection, query: Select[Any], limit: int, keep: Callable[[Any], bool]) -> list[Any]:
    """The first `limit` rows of `query` that `keep` accepts, streamed so a long tail is never fetched."""
    kept: list[Any] = []
    result = conn.execute(query, execution_options={"yield_per": _STREAM_ROWS})
    try:
        for row in result:
            if keep(row):
                kept.append(row)
                if len(kept) == limit:
                    break
    finally:
        result.close()
    return kept


def _fresh(source: str, ttl: timedelta, now: datetime, builds: MaxMindBuilds | None) -> ColumnElement[bool]:
    """SQL for "the stored `source` answer is fresh"; never NULL, so its negation is safe too."""
    fresh = fresh_sql(INVENTORY.c[f"{source}_updated_at"], ttl, now)
    return fresh if builds is None else and_(fresh, builds.gave_sql(INVENTORY.c.enrichment))


def _due(source: str, ttl: timedelta, now: datetime, builds: MaxMindBuilds | None) -> ColumnElement[bool]:
    """SQL for "this source should be asked about the row's IP now" (see `stalest_ips`)."""
    failures = FAILURES.c
    backing_off = exists().where(
        failures.ip_address == INVENTORY.c.ip_address, failures.source == source, failures.next_retry_at > now
    )
    conditions = [not_(_fresh(source, ttl, now, builds if source == "maxmind" else None)), ~backing_off]
    if source == "cymru":
        conditions.append(needs_cymru_sql(INVENTORY.c.enrichment))
    if source == "greynoise":
        conditions.append(greynoise_candidates_sql(INVENTORY.c.ip_address))
    return and_(*conditions)
