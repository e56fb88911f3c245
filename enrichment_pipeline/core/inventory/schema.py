"""The inventory's schema: every table the project owns and its column types
(`migrations.create_schema` creates them and upgrades older databases).
`ip_inventory` (one row per IP), `ip_daily_activity` (what each day contributed), `ip_sensor_activity` (the
same per sensor), `enrichment_failures`
(the retry list), `greynoise_daily_usage` (the GreyNoise request budget shared by all runs), `asn_inventory`
(one row per ASN), `ip_asn_history` (each IP's ASNs over time) and `schema_version` (the upgrades applied)."""

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
    Index,
    Integer,
    String,
    Table,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


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
    # The sum of its days' event counts, like session_count (schema version 3): the ASN rows sum these
    # instead of joining every day of every IP of an ASN.
    event_count: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0, server_default="0")
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


class IpSensorActivity(Base):
    """What one sensor contributed for one IP on one day; `ip_daily_activity` holds the sums over sensors."""

    __tablename__ = "ip_sensor_activity"
    __table_args__ = (
        CheckConstraint("session_count >= 0", name="ck_ip_sensor_activity_session_count"),
        CheckConstraint("event_count >= 0", name="ck_ip_sensor_activity_event_count"),
        Index("ix_ip_sensor_activity_day_sensor", "day", "sensor"),
    )

    ip_address: Mapped[str] = mapped_column(String(45), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    sensor: Mapped[str] = mapped_column(String(64), primary_key=True)  # log_layout.MAX_SENSOR_CHARS
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


class AsnInventory(Base):
    """One row per ASN that is some inventory IP's `current_asn`: always what `asns.recompute_asn_rows`
    computes from `ip_inventory` + `ip_daily_activity` (rewritten in the upserts' transactions)."""

    __tablename__ = "asn_inventory"
    __table_args__ = (
        CheckConstraint("ip_count >= 1", name="ck_asn_inventory_ip_count"),
        Index("ix_asn_inventory_last_seen", "last_seen"),
    )

    asn: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    asn_org: Mapped[str | None] = mapped_column(String)  # the most common among its IPs, ties by text
    country_code: Mapped[str | None] = mapped_column(String(2))  # likewise
    registry: Mapped[str | None] = mapped_column(String)  # likewise, from its IPs' Cymru answers naming it
    first_seen: Mapped[datetime | None] = mapped_column(UtcDateTime)  # over its IPs' activity
    last_seen: Mapped[datetime | None] = mapped_column(UtcDateTime)
    ip_count: Mapped[int] = mapped_column(Integer, nullable=False)  # IPs whose current_asn is this ASN
    session_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    event_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)  # when a value last changed


class IpAsnHistory(Base):
    """Each IP's ASNs over time: row `seq` 1 is its first ASN, each later row a change to another ASN; a
    repeated answer extends the latest row's `last_observed_at` (the rule: `asns.history_changes`)."""

    __tablename__ = "ip_asn_history"
    __table_args__ = (CheckConstraint("seq >= 1", name="ck_ip_asn_history_seq"),)

    ip_address: Mapped[str] = mapped_column(String(45), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    asn: Mapped[int] = mapped_column(BigInteger, nullable=False)
    asn_org: Mapped[str | None] = mapped_column(String)
    source: Mapped[str] = mapped_column(String(16), nullable=False)  # maxmind | cymru: what gave the ASN
    first_observed_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    last_observed_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


class SchemaVersion(Base):
    """The in-place upgrades applied to this database, one row each (see `migrations`)."""

    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    applied_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


INVENTORY = typing_cast(Table, IpInventory.__table__)
DAILY_ACTIVITY = typing_cast(Table, IpDailyActivity.__table__)
FAILURES = typing_cast(Table, EnrichmentFailure.__table__)
SENSOR_ACTIVITY = typing_cast(Table, IpSensorActivity.__table__)
GREYNOISE_USAGE = typing_cast(Table, GreyNoiseDailyUsage.__table__)
ASN_INVENTORY = typing_cast(Table, AsnInventory.__table__)
ASN_HISTORY = typing_cast(Table, IpAsnHistory.__table__)
SCHEMA_VERSION = typing_cast(Table, SchemaVersion.__table__)
