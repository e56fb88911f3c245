"""The inventory's schema: every table the project owns, its column types and `create_schema`.
`ip_inventory` (one row per IP), `ip_daily_activity` (what each day contributed), `enrichment_failures`
(the retry list) and `greynoise_daily_usage` (the GreyNoise request budget shared by all runs)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any
from typing import cast as typing_cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    Engine,
    Index,
    Integer,
    String,
    Table,
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from enrichment_pipeline.core.inventory.engine import write_transaction

# pg_advisory_xact_lock key serialising concurrent create_schema calls on PostgreSQL.
_SCHEMA_LOCK_KEY = 0x1F_1A7E_5C4E


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
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
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


class GreyNoiseDailyUsage(Base):
    """GreyNoise requests sent per UTC day, by every run and process together (see `greynoise_budget`)."""

    __tablename__ = "greynoise_daily_usage"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    requests: Mapped[int] = mapped_column(Integer, nullable=False)


INVENTORY = typing_cast(Table, IpInventory.__table__)
DAILY_ACTIVITY = typing_cast(Table, IpDailyActivity.__table__)
FAILURES = typing_cast(Table, EnrichmentFailure.__table__)
GREYNOISE_USAGE = typing_cast(Table, GreyNoiseDailyUsage.__table__)


def create_schema(engine: Engine) -> None:
    """Create every table and index that is missing; safe to call from concurrent runs."""
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            # Two first runs would otherwise race to CREATE the same tables.
            conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
        Base.metadata.create_all(conn)
