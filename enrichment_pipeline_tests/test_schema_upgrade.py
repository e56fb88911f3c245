"""The in-place upgrades: a database created by the release before the ASN inventory (its four tables, frozen in
support.schema_release_1), with rows in it, goes through today's `create_schema` -- once, also when several
runs start at the same time -- and keeps every row, gains `asn_inventory` equal to a recomputation, a first
`ip_asn_history` row per IP with an ASN and each IP's event total, and then upserts as a new database does.
A database of the release with the ASN inventory (version 2) gains the event totals alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, insert, inspect, select, text

from enrichment_pipeline.core.inventory import (
    INVENTORY,
    SCHEMA_VERSION,
    Base,
    DayActivity,
    SourceUpdate,
    create_schema,
    make_engine,
    schema_versions,
    upsert_day,
)
from enrichment_pipeline.core.inventory.migrations import CURRENT_VERSION
from enrichment_pipeline_tests.support.asn_state import assert_asn_inventory_exact, history, stored_asn_rows
from enrichment_pipeline_tests.support.schema_release_1 import (
    DAILY_ACTIVITY_V1,
    FAILURES_V1,
    INVENTORY_V1,
    RELEASE_1,
)
from enrichment_pipeline_tests.support.synthetic_days import database_state

DAY1, DAY2 = date(2018, 5, 6), date(2018, 5, 7)
T_MAXMIND = datetime(2018, 5, 8, 1, tzinfo=UTC)
T_CYMRU = datetime(2018, 5, 8, 2, tzinfo=UTC)
LATER = datetime(2018, 6, 1, tzinfo=UTC)


def inventory_row(ip: str, **values) -> dict:
    row = {
        "ip_address": ip,
        "current_asn": None,
        "asn_org": None,
        "country_code": None,
        "first_seen": None,
        "last_seen": None,
        "session_count": 0,
        "enrichment": {},
        "enrichment_updated_at": None,
        "maxmind_updated_at": None,
        "cymru_updated_at": None,
        "greynoise_updated_at": None,
        "greynoise_classification": None,
        "greynoise_noise": None,
        "greynoise_riot": None,
    }
    return {**row, **values}


def day_row(ip: str, day: date, sessions: int, events: int, hour: int) -> dict:
    at = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
    return {
        "ip_address": ip,
        "day": day,
        "session_count": sessions,
        "event_count": events,
        "first_seen": at,
        "last_seen": at,
    }


def t(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


MAXMIND = {"asn": 64500, "asn_org": "OLD-RELEASE-AS", "country_code": "DE"}
CYMRU = {"status": "routed", "asn": 23028, "as_name": "CYMRU, US", "country_code": "US", "registry": "arin"}
INVENTORY_ROWS = [
    inventory_row(
        "198.51.100.1",
        current_asn=64500,
        asn_org="OLD-RELEASE-AS",
        country_code="DE",
        first_seen=t(DAY1, 3),
        last_seen=t(DAY2, 5),
        session_count=5,
        enrichment={"maxmind": MAXMIND},
        enrichment_updated_at=T_MAXMIND,
        maxmind_updated_at=T_MAXMIND,
    ),
    inventory_row(
        "2001:db8::7",
        current_asn=23028,
        asn_org="CYMRU, US",
        country_code="US",
        first_seen=t(DAY1, 4),
        last_seen=t(DAY1, 4),
        session_count=1,
        enrichment={"maxmind": {"asn": None}, "cymru": CYMRU},
        enrichment_updated_at=T_CYMRU,
        maxmind_updated_at=T_MAXMIND,
        cymru_updated_at=T_CYMRU,
    ),
    inventory_row("203.0.113.9", first_seen=t(DAY2, 6), last_seen=t(DAY2, 6), session_count=2),  # no ASN
]
DAILY_ROWS = [
    day_row("198.51.100.1", DAY1, 3, 30, 3),
    day_row("198.51.100.1", DAY2, 2, 20, 5),
    day_row("2001:db8::7", DAY1, 1, 9, 4),
    day_row("203.0.113.9", DAY2, 2, 2, 6),
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def release_1_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database exactly as the release before the ASN inventory left it, with rows in every table."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'release-1.sqlite'}")
    else:
        engine = make_engine(request.getfixturevalue("postgres_url"))
        Base.metadata.drop_all(engine)
    RELEASE_1.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(INVENTORY_V1), INVENTORY_ROWS)
        conn.execute(insert(DAILY_ACTIVITY_V1), DAILY_ROWS)
        conn.execute(
            insert(FAILURES_V1),
            [
                {
                    "ip_address": "203.0.113.9",
                    "source": "cymru",
                    "error": "timed out",
                    "attempts": 1,
                    "first_failed_at": T_CYMRU,
                    "last_failed_at": T_CYMRU,
                    "next_retry_at": T_CYMRU + timedelta(minutes=15),
                }
            ],
        )
    yield engine
    engine.dispose()


def old_tables(engine: Engine) -> dict[str, list[tuple]]:
    """Every row of the release's four tables, sorted."""
    with engine.connect() as conn:
        return {
            table.name: sorted((tuple(row) for row in conn.execute(select(table))), key=repr)
            for table in RELEASE_1.sorted_tables
        }


def test_an_existing_inventory_is_upgraded_in_place_once(release_1_database: Engine) -> None:
    engine = release_1_database
    assert "asn_inventory" not in inspect(engine).get_table_names()
    before = old_tables(engine)

    create_schema(engine)

    assert old_tables(engine) == before  # every existing row kept as it was
    assert schema_versions(engine) == [2, CURRENT_VERSION] == [2, 3]
    assert event_totals(engine) == {"198.51.100.1": 50, "2001:db8::7": 9, "203.0.113.9": 2}
    rows = assert_asn_inventory_exact(engine)
    assert {asn: (row["ip_count"], row["session_count"], row["event_count"]) for asn, row in rows.items()} == {
        64500: (1, 5, 50),
        23028: (1, 1, 9),
    }
    assert (rows[23028]["registry"], rows[64500]["asn_org"]) == ("arin", "OLD-RELEASE-AS")
    assert history(engine) == {
        "198.51.100.1": [
            {
                "seq": 1,
                "asn": 64500,
                "asn_org": "OLD-RELEASE-AS",
                "source": "maxmind",
                "first_observed_at": T_MAXMIND,  # when the answer that gave the ASN was stored
                "last_observed_at": T_MAXMIND,
            }
        ],
        "2001:db8::7": [
            {
                "seq": 1,
                "asn": 23028,
                "asn_org": "CYMRU, US",
                "source": "cymru",
                "first_observed_at": T_CYMRU,
                "last_observed_at": T_CYMRU,
            }
        ],
    }
    indexes = {index["name"] for index in inspect(engine).get_indexes("ip_inventory")}
    assert "ix_ip_inventory_current_asn" in indexes

    # Idempotent: the next run's create_schema finds the upgrade recorded and changes nothing.
    upgraded = database_state(engine)
    create_schema(engine)
    assert database_state(engine) == upgraded

    # And the upgraded database is kept like a new one: a moved IP, a new IP.
    upsert_day(
        engine,
        DAY2,
        [DayActivity("198.51.100.1", 4, 40, t(DAY2, 1), t(DAY2, 9)), DayActivity("192.0.2.1", 1, 1, None, None)],
        [
            SourceUpdate("198.51.100.1", maxmind={**MAXMIND, "asn": 64501, "asn_org": "NEW-AS"}),
            SourceUpdate("192.0.2.1", maxmind=MAXMIND),
        ],
        now=LATER,
    )
    rows = assert_asn_inventory_exact(engine)
    assert {asn: row["ip_count"] for asn, row in rows.items()} == {64500: 1, 64501: 1, 23028: 1}
    assert rows[64501]["session_count"] == 3 + 4  # DAY1 from the old release, DAY2 just now
    assert [entry["asn"] for entry in history(engine)["198.51.100.1"]] == [64500, 64501]


def test_concurrent_first_runs_upgrade_the_database_exactly_once(release_1_database: Engine) -> None:
    engine = release_1_database
    runs = 4 if engine.dialect.name == "postgresql" else 2
    start = threading.Barrier(runs, timeout=30)
    url = engine.url.render_as_string(hide_password=False)

    def first_run() -> None:
        own = make_engine(url)  # each run its own engine and connections, as separate processes would have
        try:
            start.wait()
            create_schema(own)
        finally:
            own.dispose()

    with ThreadPoolExecutor(max_workers=runs) as pool:
        for future in [pool.submit(first_run) for _ in range(runs)]:
            future.result(timeout=120)

    assert schema_versions(engine) == [2, 3]
    assert {ip: len(rows) for ip, rows in history(engine).items()} == {"198.51.100.1": 1, "2001:db8::7": 1}
    assert_asn_inventory_exact(engine)


def test_a_version_2_database_gains_each_ips_event_total_and_keeps_its_asn_rows(release_1_database: Engine) -> None:
    engine = release_1_database
    create_schema(engine)
    # Back to what the release with the ASN inventory left: no event totals, version 3 not applied.
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE ip_inventory DROP COLUMN event_count"))
        conn.execute(delete(SCHEMA_VERSION).where(SCHEMA_VERSION.c.version == 3))
    assert "event_count" not in {column["name"] for column in inspect(engine).get_columns("ip_inventory")}
    asn_rows = stored_asn_rows(engine)

    create_schema(engine)

    assert schema_versions(engine) == [2, 3]
    assert event_totals(engine) == {"198.51.100.1": 50, "2001:db8::7": 9, "203.0.113.9": 2}
    assert stored_asn_rows(engine) == asn_rows  # version 2 had summed the same events from the days
    assert_asn_inventory_exact(engine)


def event_totals(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(INVENTORY.c.ip_address, INVENTORY.c.event_count)).all())


def test_a_new_database_records_the_current_version_and_builds_nothing(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'new.sqlite'}")
    create_schema(engine)
    assert schema_versions(engine) == [2, CURRENT_VERSION]
    with engine.connect() as conn:
        assert conn.execute(select(Base.metadata.tables["ip_asn_history"])).all() == []
    engine.dispose()
