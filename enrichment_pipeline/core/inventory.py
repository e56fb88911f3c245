"""The IP inventory database: SQLAlchemy models, engine setup, the per-day upsert and freshness queries.
Owns `ip_inventory` (one row per IP) and `ip_daily_activity` (what each ingest day contributed)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

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
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from enrichment_pipeline.core.ips import canonical_ip
from enrichment_pipeline.core.merge import SOURCES, merge_enrichment, summarize, summarize_greynoise

# Bound parameters per IN list: SQLite caps parameters per statement, and smaller lists plan well.
_IN_CHUNK = 500
# Seconds a SQLite writer waits for the lock held by another run before giving up.
_SQLITE_BUSY_TIMEOUT = 60
# Connection execution option marking a transaction that writes (SQLite: BEGIN IMMEDIATE).
_WRITE_OPTION = "enrichment_pipeline_write"
# pg_advisory_xact_lock key serialising concurrent create_schema calls on PostgreSQL.
_SCHEMA_LOCK_KEY = 0x1F_1A7E_5C4E


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


INVENTORY = cast(Table, IpInventory.__table__)
DAILY_ACTIVITY = cast(Table, IpDailyActivity.__table__)

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


@dataclass
class UpsertStats:
    inserted: int  # touched IPs that had no inventory row yet
    updated: int  # touched IPs that already had one (rewritten only if a value changed)
    activity_rows: int
    seconds: float


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
) -> UpsertStats:
    """Replace `day`'s activity, merge the source updates and recompute the totals, in one transaction.

    Re-running a day replaces its contribution instead of adding to it. Sources absent from an
    update keep their stored object and `<source>_updated_at`. Raises ValueError (before writing
    anything) for a non-canonical IP, an IP listed twice in `activity`, or a naive datetime.
    """
    started = time.perf_counter()
    _check_inputs(activity, updates, now)
    with _write_transaction(engine) as conn:
        _lock_inventory(conn)
        previous_ips = _replace_day_activity(conn, day, activity)
        touched = sorted({row.ip for row in activity} | {row.ip for row in updates} | previous_ips)
        stored = _read_stored_rows(conn, touched)
        totals = _activity_totals(conn, touched)
        rows = _merged_rows(touched, stored, totals, updates, now)
        _write_changes(conn, rows, stored)
    return UpsertStats(
        inserted=len(touched) - len(stored),
        updated=len(stored),
        activity_rows=len(activity),
        seconds=time.perf_counter() - started,
    )


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


def fresh_ips(engine: Engine, ips: Iterable[str], source: str, ttl: timedelta, *, now: datetime) -> set[str]:
    """The IPs among `ips` whose `<source>` answer is younger than `ttl` (updated after `now - ttl`)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")
    if now.utcoffset() is None:
        raise ValueError(f"naive `now` {now.isoformat()}: pass a timezone-aware datetime")
    updated_at = INVENTORY.c[f"{source}_updated_at"]
    cutoff = now - ttl
    fresh: set[str] = set()
    with engine.connect() as conn:
        for chunk in _chunks(sorted(set(ips))):
            in_chunk = INVENTORY.c.ip_address.in_(chunk)
            fresh.update(conn.scalars(select(INVENTORY.c.ip_address).where(in_chunk, updated_at > cutoff)))
    return fresh


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


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start : start + _IN_CHUNK]


def _check_inputs(activity: Sequence[DayActivity], updates: Sequence[SourceUpdate], now: datetime) -> None:
    if now.utcoffset() is None:
        raise ValueError(f"naive `now` {now.isoformat()}: pass a timezone-aware datetime")
    seen: set[str] = set()
    for row in activity:
        if row.ip in seen:
            raise ValueError(f"IP {row.ip!r} appears twice in one day's activity")
        seen.add(row.ip)
        for moment in (row.first_seen, row.last_seen):
            if moment is not None and moment.utcoffset() is None:
                raise ValueError(f"naive first_seen/last_seen for {row.ip}: pass timezone-aware datetimes")
    for ip in seen.union(row.ip for row in updates):
        if canonical_ip(ip) != ip:
            raise ValueError(f"not a canonical IP address: {ip!r}")


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


def _upsert_statement(dialect_name: str, columns: Sequence[str]) -> Insert:
    dialect_insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect_name)
    if dialect_insert is None:
        raise NotImplementedError(f"the inventory supports SQLite and PostgreSQL, not {dialect_name}")
    statement = dialect_insert(INVENTORY)
    # RETURNING lets SQLAlchemy batch the rows into multi-row INSERTs (insertmanyvalues): without
    # it, an ON CONFLICT executemany is one round trip per row on psycopg2.
    return statement.on_conflict_do_update(
        index_elements=[INVENTORY.c.ip_address],
        set_={name: statement.excluded[name] for name in columns},
    ).returning(INVENTORY.c.ip_address)
