"""A frozen copy of the inventory schema of the release before `schema_version` (commit 9c59559,
`core/inventory/schema.py`): its four tables, their columns, constraints and indexes, and nothing newer. The
upgrade tests build a database with it, as that release's `create_schema` did, then run today's."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

from enrichment_pipeline.core.inventory.schema import UtcDateTime

RELEASE_1 = MetaData()

INVENTORY_V1 = Table(
    "ip_inventory",
    RELEASE_1,
    Column("ip_address", String(45), primary_key=True),
    Column("current_asn", BigInteger),
    Column("asn_org", String),
    Column("country_code", String(2)),
    Column("first_seen", UtcDateTime),
    Column("last_seen", UtcDateTime),
    Column("session_count", Integer, nullable=False, default=0, server_default="0"),
    Column("enrichment", JSON, nullable=False, default=dict),
    Column("enrichment_updated_at", UtcDateTime),
    Column("maxmind_updated_at", UtcDateTime),
    Column("cymru_updated_at", UtcDateTime),
    Column("greynoise_updated_at", UtcDateTime),
    Column("greynoise_classification", String),
    Column("greynoise_noise", Boolean),
    Column("greynoise_riot", Boolean),
)

DAILY_ACTIVITY_V1 = Table(
    "ip_daily_activity",
    RELEASE_1,
    Column("ip_address", String(45), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("session_count", Integer, nullable=False),
    Column("event_count", Integer, nullable=False),
    Column("first_seen", UtcDateTime),
    Column("last_seen", UtcDateTime),
    CheckConstraint("session_count >= 0", name="ck_ip_daily_activity_session_count"),
    CheckConstraint("event_count >= 0", name="ck_ip_daily_activity_event_count"),
    Index("ix_ip_daily_activity_day", "day"),
)

FAILURES_V1 = Table(
    "enrichment_failures",
    RELEASE_1,
    Column("ip_address", String(45), primary_key=True),
    Column("source", String(16), primary_key=True),
    Column("error", String, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("first_failed_at", UtcDateTime, nullable=False),
    Column("last_failed_at", UtcDateTime, nullable=False),
    Column("next_retry_at", UtcDateTime, nullable=False),
    CheckConstraint("attempts >= 1", name="ck_enrichment_failures_attempts"),
    Index("ix_enrichment_failures_next_retry_at", "next_retry_at"),
)

GREYNOISE_USAGE_V1 = Table(
    "greynoise_daily_usage",
    RELEASE_1,
    Column("day", Date, primary_key=True),
    Column("requests", Integer, nullable=False),
)
