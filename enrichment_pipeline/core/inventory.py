"""The IP inventory database: SQLAlchemy models, engine setup, the per-day upsert and freshness queries.
Owns `ip_inventory` (one row per IP), `ip_daily_activity` (what each day contributed) and `enrichment_failures`."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar
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
    not_,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

from enrichment_pipeline.core import bulk_sql
from enrichment_pipeline.core.freshness import (
    ASN_BUILD_KEY,
    CITY_BUILD_KEY,
    FreshnessPolicy,
    MaxMindBuilds,
    expires_at,
    retry_delay,
)
from enrichment_pipeline.core.gc_pause import cyclic_gc_paused
from enrichment_pipeline.core.ips import canonical_ip
from enrichment_pipeline.core.merge import SOURCES, merge_enrichment, needs_cymru, summarize, summarize_greynoise

# Rows a streamed query fetches at a time.
_STREAM_ROWS = 500
# Seconds a SQLite writer waits for the lock held by another run before giving up.
_SQLITE_BUSY_TIMEOUT = 60
# Connection execution option marking a transaction that writes (SQLite: BEGIN IMMEDIATE).
_WRITE_OPTION = "enrichment_pipeline_write"
# pg_advisory_xact_lock key serialising concurrent create_schema calls on PostgreSQL.
_SCHEMA_LOCK_KEY = 0x1F_1A7E_5C4E
# A failure's error text is a short reason; anything longer is cut (it may quote a peer's reply).
_MAX_ERROR_CHARS = 500
# IPs merged and written per step of an upsert's one transaction: the stored rows, merged rows and bound
# values of a 100k-IP day would otherwise all be in memory at once (~500 MB).
MERGE_CHUNK_IPS = 10_000


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored as UTC; always read back tz-aware in UTC, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _as_utc(value)
        # SQLite has no offset column type: store the UTC wall time, re-attach UTC on read.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return _utc_from_driver(value)

    # For bulk_sql: the same conversions straight to and from the driver's value, in one call per value
    # (composing the methods above with SQLAlchemy's own SQLite text format costs three).
    def bulk_store(self, dialect: Dialect) -> Callable[[datetime | None], Any]:
        return _sqlite_utc_text if dialect.name == "sqlite" else _utc_or_none

    def bulk_load(self, dialect: Dialect) -> Callable[[Any], datetime | None]:
        return _from_sqlite_utc_text if dialect.name == "sqlite" else _utc_from_driver


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is UTC:
        return value
    if value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()}: pass a timezone-aware datetime")
    return value.astimezone(UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo is UTC else _as_utc(value)


def _utc_from_driver(value: datetime | None) -> datetime | None:
    """A stored moment as UTC-aware: naive ones are UTC wall time (SQLite), aware ones are converted."""
    if value is None or value.tzinfo is UTC:  # what psycopg2 returns in a UTC session: nothing to do
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Cached: a bulk write repeats the same few timestamps (`now`) thousands of times.
@lru_cache(maxsize=4096)
def _sqlite_utc_text(value: datetime | None) -> str | None:
    if value is None:
        return None
    value = _as_utc(value)
    # SQLAlchemy's SQLite DATETIME text of the UTC wall time; %-formatting is the cheapest way to build it.
    return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond
    )


@lru_cache(maxsize=4096)
def _from_sqlite_utc_text(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text + "+00:00")  # the stored form: the fast, common case
    except ValueError:  # text that carries an offset of its own
        return _utc_from_driver(datetime.fromisoformat(text))


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

# Rows are computed whole in Python, under the write lock, and written with every column...
_COLUMNS: tuple[str, ...] = tuple(column.name for column in INVENTORY.columns)
_EMPTY_ROW: dict[str, Any] = dict.fromkeys(_COLUMNS)
# ...or, when the enrichment object is unchanged, without it: the JSON is most of a row's bytes.
_NARROW_COLUMNS: tuple[str, ...] = tuple(name for name in _COLUMNS if name != "enrichment")
# Built once: the merge looks these names up for every IP and source.
_STAMP_COLUMNS: dict[str, str] = {source: f"{source}_updated_at" for source in SOURCES}
_ACTIVITY_COLUMNS: tuple[str, ...] = tuple(column.name for column in DAILY_ACTIVITY.columns)
_FAILURE_COLUMNS: tuple[str, ...] = tuple(column.name for column in FAILURES.columns)
_FAILURE_UPDATE_COLUMNS: tuple[str, ...] = ("error", "attempts", "first_failed_at", "last_failed_at", "next_retry_at")


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
        parsed, pool_pre_ping=True, json_serializer=bulk_sql.dump_json, json_deserializer=orjson.loads
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
    with cyclic_gc_paused(), _write_transaction(engine) as conn:
        _lock_inventory(conn)
        previous_ips = _replace_day_activity(conn, day, activity)
        touched = {row.ip for row in activity} | previous_ips
        stats = _merge_and_write(conn, touched, updates, failures, now, day=day, activity=activity)
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
    with cyclic_gc_paused(), _write_transaction(engine) as conn:
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
        among = bulk_sql.among(conn.dialect.name, INVENTORY.c.ip_address, set(ips))
        result = conn.execute(select(INVENTORY).where(among).order_by(INVENTORY.c.ip_address))
        return [dict(row) for row in result.mappings()]


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
    with engine.connect() as conn:
        among = bulk_sql.among(conn.dialect.name, failures.ip_address, set(ips))
        query = select(failures.ip_address).where(among, failures.source == source, failures.next_retry_at > now)
        return set(conn.scalars(query))


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
        json_serializer=bulk_sql.dump_json,
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


def _merge_and_write(
    conn: Connection,
    touched: set[str],
    updates: Sequence[SourceUpdate],
    failures: Sequence[LookupFailure],
    now: datetime,
    *,
    day: date | None = None,
    activity: Sequence[DayActivity] = (),
) -> UpsertStats:
    """Merge and write every touched IP, a chunk of IPs at a time within the caller's transaction."""
    ips = sorted(touched | {row.ip for row in updates} | {failure.ip for failure in failures})
    chunks = [ips[start : start + MERGE_CHUNK_IPS] for start in range(0, len(ips), MERGE_CHUNK_IPS)]
    chunk_of = {ip: number for number, chunk in enumerate(chunks) for ip in chunk}
    updates_in, failures_in, activity_in = (
        _split(items, chunk_of, len(chunks)) for items in (updates, failures, activity)
    )
    stats = UpsertStats(inserted=0, updated=0, activity_rows=0, seconds=0.0)
    for number, chunk in enumerate(chunks):
        stored = _read_stored_rows(conn, chunk)
        totals = _activity_totals(conn, chunk, day, activity_in[number])
        rows = _merged_rows(chunk, stored, totals, updates_in[number], now)
        _write_changes(conn, rows, stored)
        recorded, cleared = _write_failures(conn, rows, updates_in[number], failures_in[number], now)
        stats.inserted += len(chunk) - len(stored)
        stats.updated += len(stored)
        stats.failures_recorded += recorded
        stats.failures_cleared += cleared
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
    first_seen: datetime | None
    last_seen: datetime | None


def _activity_totals(
    conn: Connection, ips: Sequence[str], day: date | None, activity: Sequence[DayActivity]
) -> dict[str, _Totals]:
    """SUM/MIN/MAX over all days of each IP's activity; IPs without any daily row are absent.

    `day`'s rows were just written from `activity`: they are added from there instead of read back.
    """
    daily = DAILY_ACTIVITY.c
    query = (
        select(daily.ip_address, func.sum(daily.session_count), func.min(daily.first_seen), func.max(daily.last_seen))
        .where(bulk_sql.among(conn.dialect.name, daily.ip_address, ips))
        .group_by(daily.ip_address)
    )
    if day is not None:
        query = query.where(daily.day != day)
    totals = {
        ip: _Totals(int(session_count), first_seen, last_seen)
        for ip, session_count, first_seen, last_seen in bulk_sql.fetch(conn, query)
    }
    for row in activity:
        other_days = totals.get(row.ip)
        if other_days is None:
            totals[row.ip] = _Totals(row.session_count, row.first_seen, row.last_seen)
        else:
            totals[row.ip] = _Totals(
                other_days.session_count + row.session_count,
                _earliest(other_days.first_seen, row.first_seen),
                _latest(other_days.last_seen, row.last_seen),
            )
    return totals


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)  # NULLs ignored, as SQL's MIN does


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


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
            first_seen=activity.first_seen,
            last_seen=activity.last_seen,
        )
        rows.append(row)
    return rows


def _write_changes(
    conn: Connection, rows: Sequence[dict[str, Any]], stored: Mapping[str, Mapping[str, Any]]
) -> None:
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
        (row["ip_address"], "cymru")
        for row in rows
        if row["ip_address"] in ips and not needs_cymru(row["enrichment"])
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
