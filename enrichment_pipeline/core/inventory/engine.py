"""Engines for the inventory database: SQLite (WAL, busy timeout, writers that take the lock up front) or
PostgreSQL, and the write transaction every upsert runs in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url

from enrichment_pipeline.core.inventory import bulk_sql

# Seconds a SQLite writer waits for the lock held by another run before giving up.
_SQLITE_BUSY_TIMEOUT = 60
# Connection execution option marking a transaction that writes (SQLite: BEGIN IMMEDIATE).
_WRITE_OPTION = "enrichment_pipeline_write"


def make_engine(url: str) -> Engine:
    """Engine for a `sqlite:///path` or `postgresql+psycopg2://...` URL, set up for concurrent runs."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _make_sqlite_engine(parsed)
    return create_engine(parsed, pool_pre_ping=True, json_serializer=bulk_sql.dump_json, json_deserializer=orjson.loads)


def lock_inventory(conn: Connection) -> None:
    """Inside a `write_transaction`: the inventory's write lock, taken before anything is read. SQLite writers
    are already serialised by BEGIN IMMEDIATE; on PostgreSQL this mode conflicts with itself (one writer at a
    time) but not with plain readers."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE ip_inventory IN SHARE ROW EXCLUSIVE MODE"))


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE_OPTION: True})
        with conn.begin():
            yield conn


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
