"""The IP inventory database: SQLAlchemy models, engine setup, the per-day upsert and freshness queries.
Owns `ip_inventory` (one row per IP), `ip_daily_activity` (what each day contributed) and `enrichment_failures`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from typing import cast as typing_cast

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Connection,
    Date,
    DateTime,
    Dialect,
    Engine,
    Index,
    Insert,
    Integer,
    String,
    Table,
    and_,
    cast,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    not_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

from enrichment_pipeline.core.freshness import (
    ASN_BUILD_KEY,
    CITY_BUILD_KEY,
    FreshnessPolicy,
    MaxMindBuilds,
    expires_at,
    retry_delay,
)
from enrichment_pipeline.core.ips import canonical_ip
from enrichment_pipeline.core.merge import SOURCES, merge_enrichment, needs_cymru, summarize, summarize_greynoise

# Bound parameters per IN list: SQLite caps parameters per statement, and smaller lists plan well.
_IN_CHUNK = 500
# Seconds a SQLite writer waits for the lock held by another run before giving up.
_SQLITE_BUSY_TIMEOUT = 60
# Connection execution option marking a transaction that writes (SQLite: BEGIN IMMEDIATE).
_WRITE_OPTION = "enrichment_pipeline_write"
# pg_advisory_xact_lock key serialising concurrent create_schema calls on PostgreSQL.
_SCHEMA_LOCK_KEY = 0x1F_1A7E_5C4E
# A failure's error text is a short reason; anything longer is cut (it may quote a peer's reply).
_MAX_ERROR_CHARS = 500


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored as UTC; always read back tz-aware in UTC, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not UTC:
            if value.utcoffset() is None:
                raise ValueError(f"naive datetime {value.isoformat()}: pass a timezone-aware datetime")
            value = value.astimezone(UTC)
        # SQLite has no offset column type: store the UTC wall time, re-attach UTC on read.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class IpInventory(Base):
    """One row per source IP: merged enrichment plus totals derived from `ip_daily_activity`."""

    __tablename__ = "ip_inventory"

    ip_address: Mapped[str] = mapped_column(String(45), primary_key=True)
    current_asn: Mapped[int | None] = mapped_column(BigInteger)
    asn_org: Mapped[str | None] = mapped_column(String)
    country_code: Mapped[str | None] = mapped_column(String(2))
    first_seen: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_seen: Mapped[datetime | None] = mapped_column(UtcDateTime)
    session_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    enrichment: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    enrichment_updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    maxmind_updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    cymru_updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    greynoise_updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    greynoise_classification: Mapped[str | None] = mapped_column(String)
    greynoise_noise: Mapped[bool | None] = mapped_column(Boolean)
    greynoise_riot: Mapped[bool | None] = mapped_column(Boolean)


class IpDailyActivity(Base):
    """What one ingest day contributed for one IP; the inventory totals are SUM/MIN/MAX over these."""

    __tablename__ = "ip_daily_activity"
    __table_args__ = (
        CheckConstraint("session_count >= 0", name="ck_ip_daily_activity_session_count"),
        CheckConstraint("event_count >= 0", name="ck_ip_daily_activity_event_count"),
        Index("ix_ip_daily_activity_day", "day"),
    )

    ip_address: Mapped[str] = mapped_column(String(45), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    session_count: Mapped[int] = mapped_column(Integer, nullable=False)
    event_count: Mapped[int] = mapped_column(Integer, nullable=False)
    first_seen: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_seen: Mapped[datetime | None] = mapped_column(UtcDateTime)


class EnrichmentFailure(Base):
    """The retry list: one row per IP and source whose last lookup failed, until that source answers."""

    __tablename__ = "enrichment_failures"
    __table_args__ = (
        CheckConstraint("attempts >= 1", name="ck_enrichment_failures_attempts"),
        Index("ix_enrichment_failures_next_retry_at", "next_retry_at"),
    )

    ip_address: Mapped[str] = mapped_column(String(45), primary_key=True)
    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    error: Mapped[str] = mapped_column(String, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False)
    first_failed_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    last_failed_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    next_retry_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


INVENTORY = typing_cast(Table, IpInventory.__table__)
DAILY_ACTIVITY = typing_cast(Table, IpDailyActivity.__table__)
FAILURES = typing_cast(Table, EnrichmentFailure.__table__)

# Every column but the key: rows are computed whole in Python, under the write lock.
_VALUE_COLUMNS: tuple[str, ...] = tuple(column.name for column in INVENTORY.columns if not column.primary_key)
# The columns derived from ip_daily_activity: a day without new enrichment changes only these.
_TOTAL_COLUMNS: tuple[str, ...] = ("session_count", "first_seen", "last_seen")


@dataclass(frozen=True)
class DayActivity:
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


@dataclass
class UpsertStats:
    inserted: int  # touched IPs that had no inventory row yet
    updated: int  # touched IPs that already had one (rewritten only if a value changed)
    activity_rows: int
    seconds: float
    failures_recorded: int = 0  # rows written to the retry list
    failures_cleared: int = 0  # retry-list rows removed: the source answered, or is no longer needed


def make_engine(url: str) -> Engine:
    """Engine for a `sqlite:///path` or `postgresql+psycopg2://...` URL, set up for concurrent runs."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _make_sqlite_engine(parsed)
    return create_engine(
        parsed, pool_pre_ping=True, json_serializer=_dump_json, json_deserializer=orjson.loads
    )


def create_schema(engine: Engine) -> None:
    """Create both tables and their indexes if missing; safe to call from concurrent runs."""
    with _write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            # Two first runs would otherwise race to CREATE the same tables.
            conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
        Base.metadata.create_all(conn)


def upsert_day(
    engine: Engine,
    day: date,
    activity: Sequence[DayActivity],
    updates: Sequence[SourceUpdate],
    *,
    now: datetime,
    failures: Sequence[LookupFailure] = (),
) -> UpsertStats:
    """Replace `day`'s activity, merge the source updates, recompute the totals and update the retry
    list, in one transaction.

    Re-running a day replaces its contribution instead of adding to it. Sources absent from an
    update keep their stored object and `<source>_updated_at`. Raises ValueError (before writing
    anything) for a non-canonical IP, an IP listed twice in `activity`, or a naive datetime.
    """
    started = time.perf_counter()
    _check_inputs(activity, updates, failures, now)
    with _write_transaction(engine) as conn:
        _lock_inventory(conn)
        previous_ips = _replace_day_activity(conn, day, activity)
        touched = {row.ip for row in activity} | previous_ips
        stats = _merge_and_write(conn, touched, updates, failures, now)
    stats.activity_rows = len(activity)
    stats.seconds = time.perf_counter() - started
    return stats


def upsert_enrichment(
    engine: Engine, updates: Sequence[SourceUpdate], *, now: datetime, failures: Sequence[LookupFailure] = ()
) -> UpsertStats:
    """Merge source answers and update the retry list without touching any day's activity (the refresh
    path), in one transaction. An IP not yet in the inventory gets a row with no sessions."""
    started = time.perf_counter()
    _check_inputs((), updates, failures, now)
    with _write_transaction(engine) as conn:
        _lock_inventory(conn)
        stats = _merge_and_write(conn, set(), updates, failures, now)
    stats.seconds = time.perf_counter() - started
    return stats


def fetch_inventory(engine: Engine, ips: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Inventory rows (all, or those of `ips`) as dicts keyed by column name, ordered by IP text."""
    with engine.connect() as conn:
        if ips is None:
            result = conn.execute(select(INVENTORY).order_by(INVENTORY.c.ip_address))
            return [dict(row) for row in result.mappings()]
        rows: list[dict[str, Any]] = []
        for chunk in _chunks(sorted(set(ips))):
            result = conn.execute(select(INVENTORY).where(INVENTORY.c.ip_address.in_(chunk)))
            rows.extend(dict(row) for row in result.mappings())
    return sorted(rows, key=lambda row: row["ip_address"])


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
    _check_source(source)
    _check_aware(now)
    fresh_now = _fresh(source, ttl, now, maxmind_builds if source == "maxmind" else None)
    fresh: set[str] = set()
    with engine.connect() as conn:
        for chunk in _chunks(sorted(set(ips))):
            in_chunk = INVENTORY.c.ip_address.in_(chunk)
            fresh.update(conn.scalars(select(INVENTORY.c.ip_address).where(in_chunk, fresh_now)))
    return fresh


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
    _check_aware(now)
    for source in sources:
        _check_source(source)
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
    _check_source(source)
    _check_aware(now)
    failures = FAILURES.c
    waiting: set[str] = set()
    with engine.connect() as conn:
        for chunk in _chunks(sorted(set(ips))):
            query = select(failures.ip_address).where(
                failures.ip_address.in_(chunk), failures.source == source, failures.next_retry_at > now
            )
            waiting.update(conn.scalars(query))
    return waiting


def fetch_failures(engine: Engine) -> list[dict[str, Any]]:
    """The whole retry list as dicts keyed by column name, ordered by IP and source."""
    with engine.connect() as conn:
        query = select(FAILURES).order_by(FAILURES.c.ip_address, FAILURES.c.source)
        return [dict(row) for row in conn.execute(query).mappings()]


def ips_seen_on(engine: Engine, day: date) -> set[str]:
    """The IPs that have an `ip_daily_activity` row for `day`."""
    with engine.connect() as conn:
        return set(conn.scalars(select(DAILY_ACTIVITY.c.ip_address).where(DAILY_ACTIVITY.c.day == day)))


def _make_sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # pysqlite's `timeout` is SQLite's busy timeout: a locked database is waited for, not an error.
    engine = create_engine(
        url,
        connect_args={"timeout": _SQLITE_BUSY_TIMEOUT},
        json_serializer=_dump_json,
        json_deserializer=orjson.loads,
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Stop pysqlite from emitting its own BEGIN, so the "begin" hook below decides the kind.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
        cursor.execute("PRAGMA synchronous = NORMAL")  # durable enough under WAL, much faster
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A writer takes the write lock up front: a deferred transaction that upgrades to a
        # writer later fails with "database is locked" instead of waiting its turn.
        writes = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

    return engine


@contextmanager
def _write_transaction(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE_OPTION: True})
        with conn.begin():
            yield conn


def _dump_json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _first(conn: Connection, query: Select[Any], limit: int, keep: Callable[[Any], bool]) -> list[Any]:
    """The first `limit` rows of `query` that `keep` accepts, streamed so a long tail is never fetched."""
    kept: list[Any] = []
    result = conn.execute(query, execution_options={"yield_per": _IN_CHUNK})
    try:
        for row in result:
            if keep(row):
                kept.append(row)
                if len(kept) == limit:
                    break
    finally:
        result.close()
    return kept


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start : start + _IN_CHUNK]


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")


def _check_aware(now: datetime) -> None:
    if now.utcoffset() is None:
        raise ValueError(f"naive `now` {now.isoformat()}: pass a timezone-aware datetime")


def _check_inputs(
    activity: Sequence[DayActivity],
    updates: Sequence[SourceUpdate],
    failures: Sequence[LookupFailure],
    now: datetime,
) -> None:
    _check_aware(now)
    failed_pairs: set[tuple[str, str]] = set()
    for failure in failures:
        _check_source(failure.source)
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


def _maxmind_build(key: str) -> ColumnElement[Any]:
    # A BIGINT cast keeps the comparison numeric on both backends (epochs outgrow INTEGER in 2038).
    return cast(INVENTORY.c.enrichment[("maxmind", key)].as_string(), BigInteger)


def _fresh(source: str, ttl: timedelta, now: datetime, builds: MaxMindBuilds | None) -> ColumnElement[bool]:
    """SQL for "the stored `source` answer is fresh"; never NULL, so its negation is safe too."""
    stamp = INVENTORY.c[f"{source}_updated_at"]
    conditions = [stamp.is_not(None), stamp > now - ttl]
    if builds is not None:
        conditions.append(_maxmind_build(CITY_BUILD_KEY).is_not_distinct_from(builds.city))
        conditions.append(_maxmind_build(ASN_BUILD_KEY).is_not_distinct_from(builds.asn))
    return and_(*conditions)


def _due(source: str, ttl: timedelta, now: datetime, builds: MaxMindBuilds | None) -> ColumnElement[bool]:
    """SQL for "this source should be asked about the row's IP now" (see `stalest_ips`)."""
    failures = FAILURES.c
    backing_off = exists().where(
        failures.ip_address == INVENTORY.c.ip_address, failures.source == source, failures.next_retry_at > now
    )
    conditions = [not_(_fresh(source, ttl, now, builds if source == "maxmind" else None)), ~backing_off]
    if source == "cymru":
        # Cymru is the fallback for IPs MaxMind gave no ASN (an unknown, JSON null or missing key).
        conditions.append(INVENTORY.c.enrichment[("maxmind", "asn")].as_string().is_(None))
    if source == "greynoise":
        conditions.append(not_(INVENTORY.c.ip_address.contains(":")))  # IPv4 only
    return and_(*conditions)


def _lock_inventory(conn: Connection) -> None:
    # SQLite writers are already serialised by BEGIN IMMEDIATE. On PostgreSQL this mode conflicts
    # with itself (one writer at a time) but not with plain readers.
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE ip_inventory IN SHARE ROW EXCLUSIVE MODE"))


def _replace_day_activity(conn: Connection, day: date, activity: Sequence[DayActivity]) -> set[str]:
    """Swap the day's activity rows for `activity`; return the IPs the day had before."""
    day_rows = DAILY_ACTIVITY.c.day == day
    previous = set(conn.scalars(select(DAILY_ACTIVITY.c.ip_address).where(day_rows)))
    conn.execute(delete(DAILY_ACTIVITY).where(day_rows))
    if activity:
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
        conn.execute(insert(DAILY_ACTIVITY), rows)
    return previous


def _merge_and_write(
    conn: Connection,
    touched: set[str],
    updates: Sequence[SourceUpdate],
    failures: Sequence[LookupFailure],
    now: datetime,
) -> UpsertStats:
    ips = sorted(touched | {row.ip for row in updates} | {failure.ip for failure in failures})
    stored = _read_stored_rows(conn, ips)
    totals = _activity_totals(conn, ips)
    rows = _merged_rows(ips, stored, totals, updates, now)
    _write_changes(conn, rows, stored)
    recorded, cleared = _write_failures(conn, rows, updates, failures, now)
    return UpsertStats(
        inserted=len(ips) - len(stored),
        updated=len(stored),
        activity_rows=0,
        seconds=0.0,
        failures_recorded=recorded,
        failures_cleared=cleared,
    )


def _read_stored_rows(conn: Connection, ips: Sequence[str]) -> dict[str, dict[str, Any]]:
    stored: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(ips):
        for row in conn.execute(select(INVENTORY).where(INVENTORY.c.ip_address.in_(chunk))).mappings():
            stored[row["ip_address"]] = dict(row)
    return stored


@dataclass(frozen=True)
class _Totals:
    session_count: int
    first_seen: datetime | None
    last_seen: datetime | None


def _activity_totals(conn: Connection, ips: Sequence[str]) -> dict[str, _Totals]:
    """SUM/MIN/MAX over all days of each IP's activity; IPs without any daily row are absent."""
    daily = DAILY_ACTIVITY.c
    totals: dict[str, _Totals] = {}
    for chunk in _chunks(ips):
        query = (
            select(daily.ip_address, func.sum(daily.session_count), func.min(daily.first_seen),
                   func.max(daily.last_seen))
            .where(daily.ip_address.in_(chunk))
            .group_by(daily.ip_address)
        )
        for ip, session_count, first_seen, last_seen in conn.execute(query):
            totals[ip] = _Totals(int(session_count), first_seen, last_seen)
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
    no_activity = _Totals(0, None, None)  # a day re-materialised without this IP may leave none

    rows: list[dict[str, Any]] = []
    for ip in ips:
        row = dict(stored.get(ip) or {"ip_address": ip, "enrichment": {}})
        row.update({f"{source}_updated_at": row.get(f"{source}_updated_at") for source in SOURCES})
        row.setdefault("enrichment_updated_at", None)
        for source_update in updates_by_ip.get(ip, ()):
            row["enrichment"] = merge_enrichment(row["enrichment"], source_update)
            for source in SOURCES:
                if getattr(source_update, source) is not None:
                    row[f"{source}_updated_at"] = now
                    row["enrichment_updated_at"] = now
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
            first_seen=activity.first_seen,
            last_seen=activity.last_seen,
        )
        rows.append(row)
    return rows


def _write_changes(
    conn: Connection, rows: Sequence[dict[str, Any]], stored: Mapping[str, Mapping[str, Any]]
) -> None:
    """Write each row that differs from its stored version, touching only the totals when possible."""
    whole_rows: list[dict[str, Any]] = []
    totals_only: list[dict[str, Any]] = []
    for row in rows:
        before = stored.get(row["ip_address"])
        if before is None:
            whole_rows.append(row)
        elif row != before:
            # Narrow rows are much cheaper to send and write: the common case of a day that only
            # adds activity to IPs whose enrichment is still fresh.
            if any(row[name] != before[name] for name in _VALUE_COLUMNS if name not in _TOTAL_COLUMNS):
                whole_rows.append(row)
            else:
                totals_only.append({name: row[name] for name in ("ip_address", *_TOTAL_COLUMNS)})
    _write_rows(conn, whole_rows, _VALUE_COLUMNS)
    _write_rows(conn, totals_only, _TOTAL_COLUMNS)


def _write_rows(conn: Connection, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        return
    written = conn.execute(_upsert_statement(conn.dialect.name, columns), rows).scalars().all()
    if len(written) != len(rows):
        raise RuntimeError(f"inventory upsert wrote {len(written)} rows instead of {len(rows)}")


def _dialect_insert(dialect_name: str) -> Any:
    dialect_insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect_name)
    if dialect_insert is None:
        raise NotImplementedError(f"the inventory supports SQLite and PostgreSQL, not {dialect_name}")
    return dialect_insert


def _upsert_statement(dialect_name: str, columns: Sequence[str]) -> Insert:
    statement = _dialect_insert(dialect_name)(INVENTORY)
    # RETURNING lets SQLAlchemy batch the rows into multi-row INSERTs (insertmanyvalues): without
    # it, an ON CONFLICT executemany is one round trip per row on psycopg2.
    return statement.on_conflict_do_update(
        index_elements=[INVENTORY.c.ip_address],
        set_={name: statement.excluded[name] for name in columns},
    ).returning(INVENTORY.c.ip_address)


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
    settled = {(update.ip, source) for update in updates for source in SOURCES if getattr(update, source) is not None}
    settled |= {(row["ip_address"], "cymru") for row in rows if not needs_cymru(row["enrichment"])}
    existing = _read_failures(conn, [row["ip_address"] for row in rows])

    cleared = 0
    for source in SOURCES:
        gone = sorted(ip for ip, pair_source in existing if pair_source == source and (ip, source) in settled)
        for chunk in _chunks(gone):
            cleared += conn.execute(
                delete(FAILURES).where(FAILURES.c.source == source, FAILURES.c.ip_address.in_(chunk))
            ).rowcount

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
    if records:
        statement = _dialect_insert(conn.dialect.name)(FAILURES)
        columns = ("error", "attempts", "first_failed_at", "last_failed_at", "next_retry_at")
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=[FAILURES.c.ip_address, FAILURES.c.source],
                set_={name: statement.excluded[name] for name in columns},
            ),
            records,
        )
    return len(records), cleared


def _read_failures(conn: Connection, ips: Sequence[str]) -> dict[tuple[str, str], tuple[int, datetime]]:
    """(ip, source) -> (attempts, first_failed_at) of the stored failures of `ips`."""
    failures = FAILURES.c
    found: dict[tuple[str, str], tuple[int, datetime]] = {}
    for chunk in _chunks(ips):
        query = select(failures.ip_address, failures.source, failures.attempts, failures.first_failed_at).where(
            failures.ip_address.in_(chunk)
        )
        for ip, source, attempts, first_failed_at in conn.execute(query):
            found[(ip, source)] = (attempts, first_failed_at)
    return found
