"""The ASN inventory (`asn_inventory`) and each IP's ASN history (`ip_asn_history`), written inside the
transaction of every inventory write (`upsert.upsert_days`, `upsert.upsert_enrichment`), under its lock.

`asn_inventory` is never maintained by increments. `recompute_asn_rows` is the one recomputation of its rows
from `ip_inventory` (whose per-IP totals each upsert recomputes from `ip_daily_activity`); an upsert rewrites
exactly the ASNs it may have changed (the old and the new `current_asn` of every IP it wrote) with it,
`rebuild_asn_inventory` every ASN. The writers hold the inventory's write lock, so each recomputation sees
every committed write and no other writer in between: re-runs of a day, backfills in any order and concurrent
runs leave what a full recomputation gives.

What an ASN row shows, deterministically: `asn_org` and `country_code` are the values most common among its
IPs (NULLs ignored; a tie goes to the smaller text, by code point), `registry` likewise among the registries
of its IPs' routed Cymru answers that name this same ASN (on PostgreSQL, not from an answer whose stored
JSON holds a NUL escape, which its JSON operators cannot read). `first_seen` / `last_seen` are the earliest and
latest activity of its IPs, `session_count` / `event_count` their sums over every day, `ip_count` the number
of inventory IPs whose `current_asn` it is. An ASN that no IP has any more loses its row; `updated_at` is
when a value of the row last changed.

The history rule (`record_history`): when an IP's merged `current_asn` differs from the ASN of its latest
history row (or it has none), a new row starts, observed now; when the source that gave the ASN answered
again with the same ASN, the latest row's `last_observed_at` moves to now. No ASN (unrouted, unknown) is
not an observation: it starts no row. A multi-origin Cymru answer records the ASN the merge chose.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, String, Text, and_, case, cast, delete, func, select

from enrichment_pipeline.core import freshness
from enrichment_pipeline.core.inventory import bulk_sql
from enrichment_pipeline.core.inventory.engine import lock_inventory, write_transaction
from enrichment_pipeline.core.inventory.schema import (
    ASN_HISTORY,
    ASN_INVENTORY,
    INVENTORY,
)
from enrichment_pipeline.core.merge import asn_source
from enrichment_pipeline.core.moments import earliest, latest
from enrichment_pipeline.core.records import SourceUpdate

ASN_COLUMNS: tuple[str, ...] = tuple(column.name for column in ASN_INVENTORY.columns)
_ASN_UPDATE_COLUMNS: tuple[str, ...] = tuple(name for name in ASN_COLUMNS if name != "asn")
_HISTORY_COLUMNS: tuple[str, ...] = tuple(column.name for column in ASN_HISTORY.columns)
_HISTORY_EXTEND_COLUMNS: tuple[str, ...] = ("ip_address", "seq", "asn_org", "source", "last_observed_at")
# Inventory rows read per step when the history is first built for an existing database.
_SEED_PAGE_IPS = 10_000


def recompute_asn_rows(conn: Connection, asns: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
    """The `asn_inventory` rows (without `updated_at`) that `ip_inventory` gives for `asns` (None: every ASN),
    keyed by ASN; an ASN no inventory IP has is absent. One aggregate query: its groups are (ASN, org, country,
    registry), folded here into one row per ASN."""
    inv = INVENTORY.c
    names_this_asn = and_(
        inv.enrichment[("cymru", "status")].as_string() == "routed",
        cast(inv.enrichment[("cymru", "asn")].as_string(), String) == cast(inv.current_asn, String),
    )
    registry_of_answer = cast(inv.enrichment[("cymru", "registry")].as_string(), String)
    if conn.dialect.name == "postgresql":
        # PostgreSQL's json operators refuse a document holding a \u0000 escape (its text type has no NUL);
        # such a row (hostile text) counts without a registry instead of failing the upsert.
        has_nul = func.strpos(cast(inv.enrichment, Text), "\\u0000") > 0
        registry = case((has_nul, None), (names_this_asn, registry_of_answer), else_=None)
    else:
        registry = case((names_this_asn, registry_of_answer), else_=None)
    labels = (inv.current_asn, inv.asn_org, inv.country_code, registry.label("registry"))
    # The IPs' own totals (sums, MIN and MAX over their days, kept by every upsert): no day rows are read.
    query = (
        select(
            *labels,
            func.count(inv.ip_address),
            func.sum(inv.session_count),
            func.sum(inv.event_count),
            func.min(inv.first_seen),
            func.max(inv.last_seen),
        )
        .where(inv.current_asn.is_not(None))
        .group_by(*labels)
    )
    if asns is not None:
        wanted = set(asns)
        if not wanted:
            return {}
        query = query.where(bulk_sql.among_integers(conn.dialect.name, inv.current_asn, wanted))
    rows: dict[int, dict[str, Any]] = {}
    counts: dict[int, tuple[Counter[str], Counter[str], Counter[str]]] = {}
    for asn, org, country, registry_name, ip_count, sessions, events, first, last in bulk_sql.fetch(conn, query):
        row = rows.get(asn)
        if row is None:
            row = rows[asn] = {
                "asn": asn,
                "ip_count": 0,
                "session_count": 0,
                "event_count": 0,
                "first_seen": None,
                "last_seen": None,
            }
            counts[asn] = (Counter(), Counter(), Counter())
        row["ip_count"] += ip_count
        # int(): PostgreSQL sums a BIGINT column as NUMERIC (a Decimal here).
        row["session_count"] += int(sessions or 0)
        row["event_count"] += int(events or 0)
        row["first_seen"] = earliest(row["first_seen"], first)
        row["last_seen"] = latest(row["last_seen"], last)
        for counter, value in zip(counts[asn], (org, country, registry_name), strict=True):
            if value:
                counter[value] += ip_count
    for asn, row in rows.items():
        orgs, countries, registries = counts[asn]
        row.update(asn_org=_most_common(orgs), country_code=_most_common(countries), registry=_most_common(registries))
    return rows


def _most_common(counter: Counter[str]) -> str | None:
    """The value with the highest count; a tie goes to the smaller text (Python's code point order)."""
    return min(counter.items(), key=lambda item: (-item[1], item[0]))[0] if counter else None


def sync_asn_inventory(conn: Connection, asns: Collection[int] | None, now: datetime) -> int:
    """Make the `asn_inventory` rows of `asns` (None: all) what `recompute_asn_rows` gives: rows that differ
    are written with `updated_at = now`, rows of ASNs without IPs deleted. Returns the rows written or
    deleted. Call it under the inventory's write lock, after the inventory rows are written."""
    if asns is not None and not asns:
        return 0
    fresh = recompute_asn_rows(conn, asns)
    query = select(ASN_INVENTORY)
    if asns is not None:
        query = query.where(bulk_sql.among_integers(conn.dialect.name, ASN_INVENTORY.c.asn, asns))
    stored = {values[0]: dict(zip(ASN_COLUMNS, values, strict=True)) for values in bulk_sql.fetch(conn, query)}
    changed = []
    for asn, row in fresh.items():
        before = stored.get(asn)
        if before is None or any(before[name] != value for name, value in row.items()):
            changed.append({**row, "updated_at": now})
    gone = sorted(set(stored) - set(fresh))
    if gone:
        conn.execute(delete(ASN_INVENTORY).where(bulk_sql.among_integers(conn.dialect.name, ASN_INVENTORY.c.asn, gone)))
    bulk_sql.insert(conn, ASN_INVENTORY, changed, ASN_COLUMNS, update=_ASN_UPDATE_COLUMNS)
    return len(changed) + len(gone)


def rebuild_asn_inventory(engine: Engine) -> int:
    """Recompute every `asn_inventory` row from the inventory (an admin repair; the upserts keep it exact),
    in one write transaction under the inventory's lock. Returns the rows written or deleted."""
    with write_transaction(engine) as conn:
        lock_inventory(conn)
        return sync_asn_inventory(conn, None, freshness.utc_now())


def touched_asns(rows: Iterable[Mapping[str, Any]], stored: Mapping[str, Mapping[str, Any]]) -> set[int]:
    """The ASNs whose rows writing `rows` over `stored` (the rows before, by IP) may change: the new and the
    stored `current_asn` of each IP whose part in an ASN row changed (its summary columns, totals or Cymru
    answer). An unchanged IP changes no ASN row: a re-run costs nothing."""
    asns: set[int] = set()
    for row in rows:
        before = stored.get(row["ip_address"])
        if before is None:
            asns.add(row["current_asn"])
        elif _part_in_asn_row(before) != _part_in_asn_row(row):
            asns.update((row["current_asn"], before["current_asn"]))
    asns.discard(None)
    return asns


def _part_in_asn_row(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """Every inventory value `recompute_asn_rows` reads from an IP's row (keep the two in step)."""
    enrichment = row["enrichment"]
    cymru = enrichment.get("cymru") if isinstance(enrichment, Mapping) else None
    return (
        row["current_asn"],
        row["asn_org"],
        row["country_code"],
        row["session_count"],
        row["event_count"],
        row["first_seen"],
        row["last_seen"],
        cymru,
    )


def record_history(
    conn: Connection,
    rows: Sequence[Mapping[str, Any]],
    stored: Mapping[str, Mapping[str, Any]],
    updates: Sequence[SourceUpdate],
    now: datetime,
) -> int:
    """Apply the history rule (module docstring) to merged inventory `rows` (`stored`: the rows before, by
    IP; `updates`: this write's answers). Returns the number of IPs whose ASN changed (a new row after one)."""
    answered: dict[str, set[str]] = {}
    for update in updates:
        sources = answered.setdefault(update.ip, set())
        for source in ("maxmind", "cymru"):
            if getattr(update, source) is not None:
                sources.add(source)
    # (ip, asn, org, source, answered again) of every IP that may need a history write.
    candidates: list[tuple[str, int, str | None, str, bool]] = []
    for row in rows:
        asn = row["current_asn"]
        if asn is None:
            continue
        ip = row["ip_address"]
        source = asn_source(row["enrichment"]) or "maxmind"  # never None: the merge gave this ASN
        again = source in answered.get(ip, ())
        before = stored.get(ip)
        if again or before is None or before["current_asn"] != asn:
            candidates.append((ip, asn, row["asn_org"], source, again))
    if not candidates:
        return 0
    newest = _latest_history(conn, [ip for ip, *_ in candidates])
    new_rows: list[dict[str, Any]] = []
    extended: list[dict[str, Any]] = []
    changes = 0
    for ip, asn, org, source, again in candidates:
        seq, latest_asn = newest.get(ip, (0, None))
        if latest_asn != asn:
            changes += seq > 0
            new_rows.append(
                {
                    "ip_address": ip,
                    "seq": seq + 1,
                    "asn": asn,
                    "asn_org": org,
                    "source": source,
                    "first_observed_at": now,
                    "last_observed_at": now,
                }
            )
        elif again:
            extended.append({"ip_address": ip, "seq": seq, "asn_org": org, "source": source, "last_observed_at": now})
    bulk_sql.insert(conn, ASN_HISTORY, new_rows, _HISTORY_COLUMNS)
    bulk_sql.update(conn, ASN_HISTORY, extended, _HISTORY_EXTEND_COLUMNS)
    return changes


def _latest_history(conn: Connection, ips: Sequence[str]) -> dict[str, tuple[int, int]]:
    """ip -> (seq, asn) of its latest history row, for the IPs among `ips` that have one."""
    history = ASN_HISTORY.c
    query = select(history.ip_address, history.seq, history.asn).where(
        bulk_sql.among(conn.dialect.name, history.ip_address, ips)
    )
    latest: dict[str, tuple[int, int]] = {}
    for ip, seq, asn in bulk_sql.fetch(conn, query):
        if seq > latest.get(ip, (0, 0))[0]:
            latest[ip] = (seq, asn)
    return latest


def seed_history(conn: Connection, now: datetime) -> int:
    """For a database from before the history: a first row for every inventory IP with an ASN and no history
    yet, its current ASN as observed when the source that gave it was last stored. Idempotent; returns the
    rows written. Reads the inventory a page of IPs at a time."""
    inv = INVENTORY.c
    columns = (inv.ip_address, inv.current_asn, inv.asn_org, inv.enrichment)
    stamps = (inv.maxmind_updated_at, inv.cymru_updated_at, inv.enrichment_updated_at)
    written = 0
    after = ""
    while True:
        query = (
            select(*columns, *stamps)
            .where(inv.ip_address > after, inv.current_asn.is_not(None))
            .order_by(inv.ip_address)
            .limit(_SEED_PAGE_IPS)
        )
        page = bulk_sql.fetch(conn, query)
        if not page:
            return written
        after = page[-1][0]
        known = set(_latest_history(conn, [values[0] for values in page]))
        rows = []
        for ip, asn, org, enrichment, maxmind_at, cymru_at, enriched_at in page:
            if ip in known:
                continue
            source = asn_source(enrichment) or "maxmind"  # None only for a row an older release wrote
            observed = (maxmind_at if source == "maxmind" else cymru_at) or enriched_at or now
            rows.append(
                {
                    "ip_address": ip,
                    "seq": 1,
                    "asn": asn,
                    "asn_org": org,
                    "source": source,
                    "first_observed_at": observed,
                    "last_observed_at": observed,
                }
            )
        written += bulk_sql.insert(conn, ASN_HISTORY, rows, _HISTORY_COLUMNS)
