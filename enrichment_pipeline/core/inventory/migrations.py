"""`create_schema`: every table and index of `schema` that is missing, then the in-place upgrades a database
made by an earlier release still needs, each applied once and recorded in `schema_version`.

Safe under concurrent first runs: it is one write transaction that first takes PostgreSQL's advisory lock
(SQLite: BEGIN IMMEDIATE), so a second run waits and then finds the upgrade recorded. An upgrade that fails
leaves the database as it was.

Versions: 1 is the release before `schema_version` existed (`ip_inventory`, `ip_daily_activity`,
`enrichment_failures`, `greynoise_daily_usage`); 2 adds the ASN inventory and the IP→ASN history, built
once from the rows already there; 3 adds `ip_inventory.event_count`, each IP's events summed over its days.
To add version 4: a function below and its entry in `_UPGRADES`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Connection, Engine, func, insert, inspect, select, text, update

from enrichment_pipeline.core import freshness
from enrichment_pipeline.core.inventory.asns import seed_history, sync_asn_inventory
from enrichment_pipeline.core.inventory.engine import lock_inventory, write_transaction
from enrichment_pipeline.core.inventory.schema import DAILY_ACTIVITY, INVENTORY, SCHEMA_VERSION, Base

# pg_advisory_xact_lock key serialising concurrent create_schema calls on PostgreSQL.
_SCHEMA_LOCK_KEY = 0x1F_1A7E_5C4E
# The ASN inventory recomputes ASNs from their IPs (`asns.recompute_asn_rows`), found by this index. Created
# here rather than declared on the table, so copies of the table (`Table.to_metadata`) bring no index along
# whose name would clash with it.
_INVENTORY_ASN_INDEX = text("CREATE INDEX IF NOT EXISTS ix_ip_inventory_current_asn ON ip_inventory (current_asn)")


def create_schema(engine: Engine) -> None:
    """Create every table and index that is missing and upgrade an older database in place; safe to call
    from concurrent runs, and cheap once done (one query for the applied versions)."""
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            # Two first runs would otherwise race to CREATE the same tables.
            conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
        Base.metadata.create_all(conn)
        applied = set(conn.scalars(select(SCHEMA_VERSION.c.version)))
        for version, upgrade in _UPGRADES:
            if version not in applied:
                now = freshness.utc_now()
                upgrade(conn, now)
                conn.execute(insert(SCHEMA_VERSION).values(version=version, applied_at=now))


def schema_versions(engine: Engine) -> list[int]:
    """The upgrades recorded in this database, in order."""
    with engine.connect() as conn:
        return sorted(conn.scalars(select(SCHEMA_VERSION.c.version)))


def _asn_inventory_and_history(conn: Connection, now: datetime) -> None:
    """Version 2: the index on `ip_inventory.current_asn`, `asn_inventory` computed from the existing rows and a
    first `ip_asn_history` row per IP with an ASN."""
    lock_inventory(conn)  # no upsert of a run that skipped create_schema slips in between
    _add_event_totals(conn)  # the ASN rows are summed from them (version 3, applied here first)
    conn.execute(_INVENTORY_ASN_INDEX)
    sync_asn_inventory(conn, None, now)
    seed_history(conn, now)


def _inventory_event_totals(conn: Connection, _now: datetime) -> None:
    """Version 3: `ip_inventory.event_count`, the sum of each IP's daily event counts (as `session_count` is of
    its sessions). The ASN rows of version 2 already hold these sums: they stay as they are."""
    lock_inventory(conn)
    _add_event_totals(conn)


def _add_event_totals(conn: Connection) -> None:
    """Add and fill `ip_inventory.event_count` unless the table has it (a new table is created with it)."""
    if "event_count" in {column["name"] for column in inspect(conn).get_columns("ip_inventory")}:
        return
    conn.execute(text("ALTER TABLE ip_inventory ADD COLUMN event_count BIGINT NOT NULL DEFAULT 0"))
    daily = DAILY_ACTIVITY.c
    events = (
        select(func.coalesce(func.sum(daily.event_count), 0))
        .where(daily.ip_address == INVENTORY.c.ip_address)
        .scalar_subquery()
    )
    conn.execute(update(INVENTORY).values(event_count=events))


_Upgrade = Callable[[Connection, datetime], None]
_UPGRADES: tuple[tuple[int, _Upgrade], ...] = ((2, _asn_inventory_and_history), (3, _inventory_event_totals))
CURRENT_VERSION = _UPGRADES[-1][0]

__all__ = ["CURRENT_VERSION", "create_schema", "schema_versions"]
