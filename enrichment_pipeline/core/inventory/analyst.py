"""The analyst's reads: everything stored about an IP (`show`), the ASN inventory (`asns`), the streamed
IP export (`export`), and the daily report's new ASNs and ASN changes. Every value is a bound parameter."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Engine, and_, exists, or_, select
from sqlalchemy.orm import aliased
from sqlalchemy.sql import Select

from enrichment_pipeline.core.inventory import bulk_sql
from enrichment_pipeline.core.inventory.schema import (
    ASN_HISTORY,
    ASN_INVENTORY,
    DAILY_ACTIVITY,
    FAILURES,
    INVENTORY,
)
from enrichment_pipeline.core.records import SOURCES

# Rows the export fetches from the server at a time (PostgreSQL: a server-side cursor).
_EXPORT_BATCH_ROWS = 2_000
# One row per IP: its summary columns, its totals over every day, and GreyNoise's verdict.
EXPORT_COLUMNS: tuple[str, ...] = (
    "ip_address",
    "asn",
    "asn_org",
    "country_code",
    "first_seen",
    "last_seen",
    "session_count",
    "event_count",
    "classification",
)
ASN_ORDERS = {"ips": "ip_count", "sessions": "session_count"}
CLASSIFICATIONS = ("malicious", "benign", "unknown")


def day_start(day: date) -> datetime:
    """Midnight UTC at the start of `day`: days are UTC days everywhere in the pipeline."""
    return datetime.combine(day, time(), tzinfo=UTC)


# --- show -------------------------------------------------------------------------------------------------


def ip_records(engine: Engine, ips: Sequence[str]) -> dict[str, dict[str, Any]]:
    """For each of `ips` (canonical text) that has an inventory row: the row, each source's answer and when it
    was stored, the activity per day, the ASN history and the retry-list entries. Unknown IPs are absent."""
    wanted = list(dict.fromkeys(ips))
    records: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        dialect = conn.dialect.name
        rows = conn.execute(select(INVENTORY).where(bulk_sql.among(dialect, INVENTORY.c.ip_address, wanted)))
        for row in rows.mappings():
            enrichment = row["enrichment"] if isinstance(row["enrichment"], dict) else {}
            records[row["ip_address"]] = {
                "ip": row["ip_address"],
                "inventory": {name: value for name, value in row.items() if name != "enrichment"},
                "sources": {
                    source: {"updated_at": row[f"{source}_updated_at"], "answer": enrichment.get(source)}
                    for source in SOURCES
                },
                "activity": [],
                "asn_history": [],
                "retry_list": [],
            }
        known = sorted(records)
        if not known:
            return {}
        parts = (
            ("activity", DAILY_ACTIVITY, (DAILY_ACTIVITY.c.day,)),
            ("asn_history", ASN_HISTORY, (ASN_HISTORY.c.seq,)),
            ("retry_list", FAILURES, (FAILURES.c.source,)),
        )
        for part, table, order in parts:
            query = select(table).where(bulk_sql.among(dialect, table.c.ip_address, known)).order_by(*order)
            for row in conn.execute(query).mappings():
                records[row["ip_address"]][part].append({k: v for k, v in row.items() if k != "ip_address"})
    for record in records.values():
        record["inventory"]["event_count"] = sum(day["event_count"] for day in record["activity"])
    return {ip: records[ip] for ip in wanted if ip in records}


# --- asns -------------------------------------------------------------------------------------------------


def list_asns(
    engine: Engine, *, by: str = "ips", since: date | None = None, top: int | None = None
) -> list[dict[str, Any]]:
    """`asn_inventory` rows, most IPs (or sessions) first, ties by ASN; `since`: last seen on that day or later."""
    if by not in ASN_ORDERS:
        raise ValueError(f"order by one of {sorted(ASN_ORDERS)}, not {by!r}")
    table = ASN_INVENTORY.c
    query = select(ASN_INVENTORY).order_by(table[ASN_ORDERS[by]].desc(), table.asn)
    if since is not None:
        query = query.where(table.last_seen >= day_start(since))
    if top is not None:
        query = query.limit(top)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


# --- export -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFilters:
    """Which IPs an export holds: every kind given must match (AND), any value of a kind may (OR)."""

    since: date | None = None  # active on this day or later (an ip_daily_activity row)...
    until: date | None = None  # ...and on this day or earlier (both: a row in between)
    asns: tuple[int, ...] = ()
    countries: tuple[str, ...] = ()  # upper-case two-letter codes
    classifications: tuple[str, ...] = ()  # GreyNoise's verdict: malicious, benign, unknown


def export_rows(engine: Engine, filters: ExportFilters = ExportFilters()) -> Iterator[tuple[Any, ...]]:
    """The matching IPs as tuples of `EXPORT_COLUMNS`, ordered by IP text, streamed: rows come from the
    server a batch at a time (PostgreSQL: a server-side cursor), so memory stays flat for any number of rows.
    The connection is held until the iterator is exhausted or closed."""
    with engine.connect() as conn:
        streaming = conn.execution_options(stream_results=True, yield_per=_EXPORT_BATCH_ROWS)
        result = streaming.execute(_export_query(filters, conn.dialect.name))
        try:
            for batch in result.partitions():
                yield from (tuple(row) for row in batch)
        finally:
            result.close()


def _export_query(filters: ExportFilters, dialect: str) -> Select[Any]:
    inv, daily = INVENTORY.c, DAILY_ACTIVITY.c
    query = select(
        inv.ip_address,
        inv.current_asn,
        inv.asn_org,
        inv.country_code,
        inv.first_seen,
        inv.last_seen,
        inv.session_count,
        inv.event_count,
        inv.greynoise_classification,
    ).order_by(inv.ip_address)
    conditions = []
    if filters.since is not None or filters.until is not None:
        in_window = [daily.ip_address == inv.ip_address]
        if filters.since is not None:
            in_window.append(daily.day >= filters.since)
        if filters.until is not None:
            in_window.append(daily.day <= filters.until)
        conditions.append(exists().where(*in_window))
    if filters.asns:
        conditions.append(bulk_sql.among_integers(dialect, inv.current_asn, filters.asns))
    if filters.countries:
        conditions.append(or_(*(inv.country_code == country for country in sorted(set(filters.countries)))))
    if filters.classifications:
        wanted = sorted(set(filters.classifications))
        conditions.append(or_(*(inv.greynoise_classification == name for name in wanted)))
    return query.where(and_(*conditions)) if conditions else query


# --- the daily report -------------------------------------------------------------------------------------


def asns_first_seen_on(engine: Engine, day: date) -> list[dict[str, Any]]:
    """The ASNs whose first activity (over their current IPs) is on `day`: new that day. Most IPs first."""
    table = ASN_INVENTORY.c
    query = (
        select(ASN_INVENTORY)
        .where(table.first_seen >= day_start(day), table.first_seen < day_start(day + timedelta(days=1)))
        .order_by(table.ip_count.desc(), table.asn)
    )
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def asn_changes_since(engine: Engine, ips: Iterable[str], since: datetime) -> list[dict[str, Any]]:
    """For each of `ips` whose ASN changed at or after `since` (a history row after its first, first
    observed then): its latest such change, as ip, previous_asn, asn, asn_org, observed_at. Ordered by IP."""
    current = ASN_HISTORY.c
    previous = aliased(ASN_HISTORY, name="previous")
    query = (
        select(current.ip_address, previous.c.asn, current.asn, current.asn_org, current.first_observed_at, current.seq)
        .join(previous, and_(previous.c.ip_address == current.ip_address, previous.c.seq == current.seq - 1))
        .where(current.seq > 1, current.first_observed_at >= since)
        .order_by(current.ip_address, current.seq)
    )
    with engine.connect() as conn:
        query = query.where(bulk_sql.among(conn.dialect.name, current.ip_address, set(ips)))
        latest: dict[str, dict[str, Any]] = {}
        for ip, previous_asn, asn, org, observed_at, _ in conn.execute(query):
            latest[ip] = {
                "ip": ip,
                "previous_asn": previous_asn,
                "asn": asn,
                "asn_org": org,
                "observed_at": observed_at,
            }
    return list(latest.values())
