"""The inventory's writes: a day's upsert (its activity replaced, the source answers merged, the totals
recomputed) and the refresh's enrichment-only upsert, each with its retry-list changes, its IPs' ASN history
and the rows of the ASNs it touched (`asns`) in one transaction."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, delete, func, select

from enrichment_pipeline.core.eligibility import needs_cymru
from enrichment_pipeline.core.freshness import retry_delay
from enrichment_pipeline.core.gc_pause import cyclic_gc_paused
from enrichment_pipeline.core.inventory import asns, bulk_sql
from enrichment_pipeline.core.inventory.engine import lock_inventory, write_transaction
from enrichment_pipeline.core.inventory.schema import (
    DAILY_ACTIVITY,
    FAILURES,
    INVENTORY,
    SENSOR_ACTIVITY,
)
from enrichment_pipeline.core.inventory.validation import check_inputs
from enrichment_pipeline.core.merge import (
    merge_enrichment,
    summarize,
    summarize_greynoise,
)
from enrichment_pipeline.core.moments import earliest, latest
from enrichment_pipeline.core.records import (
    SOURCES,
    DayActivity,
    LookupFailure,
    SensorActivity,
    SourceUpdate,
)

# A failure's error text is a short reason; anything longer is cut (it may quote a peer's reply).
_MAX_ERROR_CHARS = 500
# IPs merged and written per step of an upsert's one transaction: the stored rows, merged rows and bound
# values of a 100k-IP day would otherwise all be in memory at once (~500 MB).
MERGE_CHUNK_IPS = 10_000

# Rows are computed whole in Python, under the write lock, and written with every column...
_COLUMNS: tuple[str, ...] = tuple(column.name for column in INVENTORY.columns)
_EMPTY_ROW: dict[str, Any] = dict.fromkeys(_COLUMNS)
# ...or, when the enrichment object is unchanged, without it: the JSON is most of a row's bytes.
_NARROW_COLUMNS: tuple[str, ...] = tuple(name for name in _COLUMNS if name != "enrichment")
# Built once: the merge looks these names up for every IP and source.
_STAMP_COLUMNS: dict[str, str] = {source: f"{source}_updated_at" for source in SOURCES}
_ACTIVITY_COLUMNS: tuple[str, ...] = tuple(column.name for column in DAILY_ACTIVITY.columns)
_SENSOR_COLUMNS: tuple[str, ...] = tuple(column.name for column in SENSOR_ACTIVITY.columns)
_FAILURE_COLUMNS: tuple[str, ...] = tuple(column.name for column in FAILURES.columns)
_FAILURE_UPDATE_COLUMNS: tuple[str, ...] = ("error", "attempts", "first_failed_at", "last_failed_at", "next_retry_at")


@dataclass
class UpsertStats:
    inserted: int  # touched IPs that had no inventory row yet
    updated: int  # touched IPs that already had one (rewritten only if a value changed)
    activity_rows: int
    seconds: float
    failures_recorded: int = 0  # rows written to the retry list
    failures_cleared: int = 0  # retry-list rows removed: the source answered, or is no longer needed
    asn_changes: int = 0  # IPs whose ASN changed (a new ip_asn_history row after their first)
    asn_rows_written: int = 0  # asn_inventory rows rewritten or deleted


def upsert_day(
    engine: Engine,
    day: date,
    activity: Sequence[DayActivity],
    updates: Sequence[SourceUpdate],
    *,
    now: datetime,
    failures: Sequence[LookupFailure] = (),
) -> UpsertStats:
    """`upsert_days` for one day."""
    return upsert_days(engine, {day: activity}, updates, now=now, failures=failures)


def upsert_days(
    engine: Engine,
    activity: Mapping[date, Sequence[DayActivity]],
    updates: Sequence[SourceUpdate],
    *,
    now: datetime,
    failures: Sequence[LookupFailure] = (),
    sensor_activity: Mapping[date, Sequence[SensorActivity]] | None = None,
) -> UpsertStats:
    """Replace each day's activity (and, given, its per-sensor activity), merge the source updates,
    recompute the totals and update the retry list, all in one transaction: a failure leaves every day as
    it was.

    Re-running a day replaces its contribution instead of adding to it, so the days of a range give the
    same rows as one upsert per day. Sources absent from an update keep their stored object and
    `<source>_updated_at`. Raises ValueError (before writing anything) for a non-canonical IP, an IP listed
    twice in one day's activity, or a naive datetime.
    """
    started = time.perf_counter()
    check_inputs((), updates, failures, now)
    for rows in activity.values():
        check_inputs(rows, (), (), now)
    with cyclic_gc_paused(), write_transaction(engine) as conn:
        _lock_inventory(conn)
        touched: set[str] = set()
        for day in sorted(activity):
            touched |= _replace_day_activity(conn, day, activity[day])
            touched.update(row.ip for row in activity[day])
            if sensor_activity is not None:
                _replace_sensor_activity(conn, day, sensor_activity.get(day, ()))
        stats = _merge_and_write(conn, touched, updates, failures, now, activity=activity)
    stats.activity_rows = sum(len(rows) for rows in activity.values())
    stats.seconds = time.perf_counter() - started
    return stats


def upsert_enrichment(
    engine: Engine, updates: Sequence[SourceUpdate], *, now: datetime, failures: Sequence[LookupFailure] = ()
) -> UpsertStats:
    """Merge source answers and update the retry list without touching any day's activity (the refresh
    path), in one transaction. An IP not yet in the inventory gets a row with no sessions."""
    started = time.perf_counter()
    check_inputs((), updates, failures, now)
    with cyclic_gc_paused(), write_transaction(engine) as conn:
        _lock_inventory(conn)
        stats = _merge_and_write(conn, set(), updates, failures, now)
    stats.seconds = time.perf_counter() - started
    return stats


def _lock_inventory(conn: Connection) -> None:
    lock_inventory(conn)


def _replace_day_activity(conn: Connection, day: date, activity: Sequence[DayActivity]) -> set[str]:
    """Swap the day's activity rows for `activity`; return the IPs the day had before."""
    daily = DAILY_ACTIVITY.c
    previous = set(conn.scalars(delete(DAILY_ACTIVITY).where(daily.day == day).returning(daily.ip_address)))
    rows = [
        {
            "ip_address": row.ip,
            "day": day,
            "session_count": row.session_count,
            "event_count": row.event_count,
            "first_seen": row.first_seen,
            "last_seen": row.last_seen,
        }
        for row in activity
    ]
    bulk_sql.insert(conn, DAILY_ACTIVITY, rows, _ACTIVITY_COLUMNS)
    return previous


def _replace_sensor_activity(conn: Connection, day: date, rows: Sequence[SensorActivity]) -> None:
    """Swap the day's per-sensor rows: a late sensor's file re-run with the others gives the all-at-once rows."""
    conn.execute(delete(SENSOR_ACTIVITY).where(SENSOR_ACTIVITY.c.day == day))
    values = [
        {
            "ip_address": row.ip,
            "day": day,
            "sensor": row.sensor,
            "session_count": row.session_count,
            "event_count": row.event_count,
            "first_seen": row.first_seen,
            "last_seen": row.last_seen,
        }
        for row in rows
    ]
    bulk_sql.insert(conn, SENSOR_ACTIVITY, values, _SENSOR_COLUMNS)


def _merge_and_write(
    conn: Connection,
    touched: set[str],
    updates: Sequence[SourceUpdate],
    failures: Sequence[LookupFailure],
    now: datetime,
    *,
    activity: Mapping[date, Sequence[DayActivity]] | None = None,
) -> UpsertStats:
    """Merge and write every touched IP, a chunk of IPs at a time within the caller's transaction.
    `activity` holds the days whose rows were just written (added from memory instead of read back)."""
    days = set(activity or ())
    written = [row for rows in (activity or {}).values() for row in rows]
    ips = sorted(touched | {row.ip for row in updates} | {failure.ip for failure in failures})
    chunks = [ips[start : start + MERGE_CHUNK_IPS] for start in range(0, len(ips), MERGE_CHUNK_IPS)]
    chunk_of = {ip: number for number, chunk in enumerate(chunks) for ip in chunk}
    updates_in, failures_in, activity_in = (
        _split(items, chunk_of, len(chunks)) for items in (updates, failures, written)
    )
    stats = UpsertStats(inserted=0, updated=0, activity_rows=0, seconds=0.0)
    touched_asns: set[int] = set()
    for number, chunk in enumerate(chunks):
        stored = _read_stored_rows(conn, chunk)
        totals = _activity_totals(conn, chunk, days, activity_in[number])
        rows = _merged_rows(chunk, stored, totals, updates_in[number], now)
        _write_changes(conn, rows, stored)
        stats.asn_changes += asns.record_history(conn, rows, stored, updates_in[number], now)
        touched_asns |= asns.touched_asns(rows, stored)
        recorded, cleared = _write_failures(conn, rows, updates_in[number], failures_in[number], now)
        stats.inserted += len(chunk) - len(stored)
        stats.updated += len(stored)
        stats.failures_recorded += recorded
        stats.failures_cleared += cleared
    # Once every chunk is written: an ASN's IPs may be in several chunks.
    stats.asn_rows_written = asns.sync_asn_inventory(conn, touched_asns, now)
    return stats


_PerIp = TypeVar("_PerIp", DayActivity, SourceUpdate, LookupFailure)


def _split(items: Iterable[_PerIp], chunk_of: Mapping[str, int], count: int) -> list[list[_PerIp]]:
    """`items` in `count` lists, each item in the list of its IP's chunk."""
    parts: list[list[_PerIp]] = [[] for _ in range(count)]
    for item in items:
        parts[chunk_of[item.ip]].append(item)
    return parts


def _read_stored_rows(conn: Connection, ips: Sequence[str]) -> dict[str, dict[str, Any]]:
    query = select(INVENTORY).where(bulk_sql.among(conn.dialect.name, INVENTORY.c.ip_address, ips))
    return {values[0]: dict(zip(_COLUMNS, values, strict=True)) for values in bulk_sql.fetch(conn, query)}


@dataclass(frozen=True)
class _Totals:
    session_count: int
    event_count: int
    first_seen: datetime | None
    last_seen: datetime | None


def _activity_totals(
    conn: Connection, ips: Sequence[str], days: Collection[date], activity: Sequence[DayActivity]
) -> dict[str, _Totals]:
    """SUM/MIN/MAX over all days of each IP's activity; IPs without any daily row are absent.

    The rows of `days` were just written from `activity`: they are added from there instead of read back.
    """
    daily = DAILY_ACTIVITY.c
    query = (
        select(
            daily.ip_address,
            func.sum(daily.session_count),
            func.sum(daily.event_count),
            func.min(daily.first_seen),
            func.max(daily.last_seen),
        )
        .where(bulk_sql.among(conn.dialect.name, daily.ip_address, ips))
        .group_by(daily.ip_address)
    )
    if days:
        query = query.where(daily.day.not_in(sorted(days)))
    totals = {
        ip: _Totals(int(session_count), int(event_count), first_seen, last_seen)
        for ip, session_count, event_count, first_seen, last_seen in bulk_sql.fetch(conn, query)
    }
    for row in activity:
        other_days = totals.get(row.ip)
        if other_days is None:
            totals[row.ip] = _Totals(row.session_count, row.event_count, row.first_seen, row.last_seen)
        else:
            totals[row.ip] = _Totals(
                other_days.session_count + row.session_count,
                other_days.event_count + row.event_count,
                earliest(other_days.first_seen, row.first_seen),
                latest(other_days.last_seen, row.last_seen),
            )
    return totals


def _merged_rows(
    ips: Sequence[str],
    stored: Mapping[str, Mapping[str, Any]],
    totals: Mapping[str, _Totals],
    updates: Sequence[SourceUpdate],
    now: datetime,
) -> list[dict[str, Any]]:
    """The new full row of each IP: stored enrichment merged with its updates, plus fresh totals."""
    updates_by_ip: dict[str, list[SourceUpdate]] = {}
    for source_update in updates:
        updates_by_ip.setdefault(source_update.ip, []).append(source_update)
    no_activity = _Totals(0, 0, None, None)  # a day re-materialised without this IP may leave none

    rows: list[dict[str, Any]] = []
    for ip in ips:
        before = stored.get(ip)
        row = dict(before) if before is not None else {**_EMPTY_ROW, "ip_address": ip, "enrichment": {}}
        for source_update in updates_by_ip.get(ip, ()):
            row["enrichment"] = merge_enrichment(row["enrichment"], source_update)
            for source, stamp in _STAMP_COLUMNS.items():
                if getattr(source_update, source) is not None:
                    row[stamp] = row["enrichment_updated_at"] = now
        summary = summarize(row["enrichment"])
        greynoise = summarize_greynoise(row["enrichment"])
        activity = totals.get(ip, no_activity)
        row.update(
            current_asn=summary.asn,
            asn_org=summary.asn_org,
            country_code=summary.country_code,
            greynoise_classification=greynoise.classification,
            greynoise_noise=greynoise.noise,
            greynoise_riot=greynoise.riot,
            session_count=activity.session_count,
            event_count=activity.event_count,
            first_seen=activity.first_seen,
            last_seen=activity.last_seen,
        )
        rows.append(row)
    return rows


def _write_changes(conn: Connection, rows: Sequence[dict[str, Any]], stored: Mapping[str, Mapping[str, Any]]) -> None:
    """Insert the new rows and update each stored row that changed, leaving out its enrichment when that
    is unchanged. The write lock taken first makes `stored` exact: no upsert is needed."""
    new_rows: list[dict[str, Any]] = []
    whole_rows: list[dict[str, Any]] = []
    narrow_rows: list[dict[str, Any]] = []
    for row in rows:
        before = stored.get(row["ip_address"])
        if before is None:
            new_rows.append(row)
        elif row["enrichment"] != before["enrichment"]:
            whole_rows.append(row)
        elif row != before:
            # The common re-run: same answers, new timestamps or totals. Without the JSON, which is
            # most of a row's bytes, these rows are much cheaper to send and write.
            narrow_rows.append(row)
    written = bulk_sql.insert(conn, INVENTORY, new_rows, _COLUMNS)
    written += bulk_sql.update(conn, INVENTORY, whole_rows, _COLUMNS)
    written += bulk_sql.update(conn, INVENTORY, narrow_rows, _NARROW_COLUMNS)
    expected = len(new_rows) + len(whole_rows) + len(narrow_rows)
    if written != expected:
        raise RuntimeError(f"inventory write changed {written} rows instead of {expected}")


def _write_failures(
    conn: Connection,
    rows: Sequence[Mapping[str, Any]],
    updates: Sequence[SourceUpdate],
    failures: Sequence[LookupFailure],
    now: datetime,
) -> tuple[int, int]:
    """Record the new failures (attempts + 1, backoff) and drop those that are settled; return both counts.

    A failure is settled when its source answered, or for Cymru when MaxMind now gives an ASN (Cymru
    will not be asked again, so the entry could never clear itself).
    """
    existing = _read_failures(conn, [row["ip_address"] for row in rows])
    if not existing and not failures:
        return 0, 0  # the usual day: nothing failed, before or now
    settled = _settled(existing.keys() | {(failure.ip, failure.source) for failure in failures}, rows, updates)

    cleared = 0
    for source in SOURCES:
        gone = sorted(ip for ip, pair_source in existing if pair_source == source and (ip, source) in settled)
        if gone:
            among_gone = bulk_sql.among(conn.dialect.name, FAILURES.c.ip_address, gone)
            cleared += conn.execute(delete(FAILURES).where(FAILURES.c.source == source, among_gone)).rowcount

    records: list[dict[str, Any]] = []
    for failure in failures:
        if (failure.ip, failure.source) in settled:
            continue
        attempts, first_failed_at = existing.get((failure.ip, failure.source), (0, now))
        records.append(
            {
                "ip_address": failure.ip,
                "source": failure.source,
                "error": failure.error[:_MAX_ERROR_CHARS] or "unknown error",
                "attempts": attempts + 1,
                "first_failed_at": first_failed_at,
                "last_failed_at": now,
                "next_retry_at": now + retry_delay(attempts + 1),
            }
        )
    bulk_sql.insert(conn, FAILURES, records, _FAILURE_COLUMNS, update=_FAILURE_UPDATE_COLUMNS)
    return len(records), cleared


def _settled(
    pairs: Collection[tuple[str, str]], rows: Sequence[Mapping[str, Any]], updates: Sequence[SourceUpdate]
) -> set[tuple[str, str]]:
    """The (ip, source) pairs among `pairs` that no longer belong on the retry list (see `_write_failures`)."""
    ips = {ip for ip, _ in pairs}
    settled = {
        (update.ip, source)
        for update in updates
        if update.ip in ips
        for source in SOURCES
        if getattr(update, source) is not None
    }
    settled.update(
        (row["ip_address"], "cymru") for row in rows if row["ip_address"] in ips and not needs_cymru(row["enrichment"])
    )
    return settled & set(pairs)


def _read_failures(conn: Connection, ips: Sequence[str]) -> dict[tuple[str, str], tuple[int, datetime]]:
    """(ip, source) -> (attempts, first_failed_at) of the stored failures of `ips`."""
    failures = FAILURES.c
    query = select(failures.ip_address, failures.source, failures.attempts, failures.first_failed_at).where(
        bulk_sql.among(conn.dialect.name, failures.ip_address, ips)
    )
    rows = bulk_sql.fetch(conn, query)
    return {(ip, source): (attempts, first_failed_at) for ip, source, attempts, first_failed_at in rows}
