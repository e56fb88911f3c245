"""Tests for core.bulk_sql on real SQLite files and a real PostgreSQL server: rows written by the bulk path
read back through SQLAlchemy exactly as SQLAlchemy itself would have stored them, hostile text survives the
JSON-document path, key sets of any size, and a 10k-IP history comes out the same on both backends."""

from __future__ import annotations

import ipaddress
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, insert, select
from sqlalchemy.exc import DBAPIError, StatementError

from enrichment_pipeline.core.inventory import (
    DAILY_ACTIVITY,
    INVENTORY,
    DayActivity,
    LookupFailure,
    SourceUpdate,
    bulk_sql,
    fetch_failures,
    fetch_inventory,
    upsert_day,
    upsert_enrichment,
)

DAY1, DAY2 = date(2018, 5, 6), date(2018, 5, 7)
NOW = datetime(2018, 5, 9, 3, 0, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))

HOSTILE = (
    "'); DROP TABLE ip_inventory;--",
    'quote " and \\" escaped \\\\ backslashes \\u0041 \\n',
    "%s %(rows)s :rows $1 ? {} [] ,",
    "ünïcødé — 中文 🐝 \u202eevil \ufeff",
    "line one\nline two\r\n\ttabbed",
    "x" * 5000,
)


def inventory_rows() -> list[dict[str, Any]]:
    """Rows with every kind of value the columns take: NULLs, offsets, whole seconds, extremes, hostile text."""
    rows = []
    for i, text in enumerate(HOSTILE):
        rows.append(
            {
                "ip_address": f"192.0.2.{i + 1}",
                "current_asn": [None, 1, 2**32 - 1, 64500, 0, 23028][i],
                "asn_org": text,
                "country_code": [None, "DE", "", "US", "zz", "CN"][i],
                "first_seen": [
                    None,
                    datetime(2018, 5, 6, 10, 30, 15, 123456, tzinfo=PLUS_TWO),
                    datetime(1, 1, 1, tzinfo=UTC),
                    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                    datetime(2018, 5, 6, tzinfo=UTC),
                    NOW,
                ][i],
                "last_seen": NOW + timedelta(microseconds=i),
                "session_count": i,
                "event_count": 10 * i,
                "enrichment": [
                    {},
                    {"maxmind": {"asn": 1, text: [text, 1.5, None, True]}},
                    {"nested": {"deep": [{"k": text}]}, "n": 2**62, "f": 126.97409999999999},
                    {"cymru": None},
                    {"": ""},
                    {"greynoise": {"name": text, "noise": False}},
                ][i],
                "enrichment_updated_at": NOW,
                "maxmind_updated_at": None if i % 2 else NOW.astimezone(PLUS_TWO),
                "cymru_updated_at": NOW,
                "greynoise_updated_at": None,
                "greynoise_classification": text,
                "greynoise_noise": [None, True, False][i % 3],
                "greynoise_riot": [True, None, False][i % 3],
            }
        )
    return rows


def columns() -> tuple[str, ...]:
    return tuple(column.name for column in INVENTORY.columns)


def in_utc(row: dict[str, Any]) -> dict[str, Any]:
    return {name: value.astimezone(UTC) if isinstance(value, datetime) else value for name, value in row.items()}


def test_rows_written_by_the_bulk_path_read_back_equal_through_sqlalchemy_and_bulk_fetch(engine: Engine) -> None:
    rows = inventory_rows()
    with engine.begin() as conn:
        assert bulk_sql.insert(conn, INVENTORY, rows, columns()) == len(rows)

    through_sqlalchemy = fetch_inventory(engine)
    assert through_sqlalchemy == sorted((in_utc(row) for row in rows), key=lambda row: row["ip_address"])
    stamps = [value for row in through_sqlalchemy for value in row.values() if isinstance(value, datetime)]
    assert stamps and all(value.tzinfo is UTC for value in stamps)
    with engine.connect() as conn:
        fetched = bulk_sql.fetch(conn, select(INVENTORY).order_by(INVENTORY.c.ip_address))
    assert [dict(zip(columns(), values, strict=True)) for values in fetched] == through_sqlalchemy
    assert all(value.tzinfo is UTC for values in fetched for value in values if isinstance(value, datetime))


def test_bulk_update_rewrites_only_the_named_columns(engine: Engine) -> None:
    rows = inventory_rows()
    with engine.begin() as conn:
        bulk_sql.insert(conn, INVENTORY, rows, columns())
    changed = [{**row, "session_count": 99, "asn_org": "new", "enrichment": {"ignored": True}} for row in rows[:3]]
    with engine.begin() as conn:
        assert bulk_sql.update(conn, INVENTORY, changed, ("ip_address", "session_count", "asn_org")) == 3

    after = {row["ip_address"]: row for row in fetch_inventory(engine)}
    for row in rows[:3]:
        assert after[row["ip_address"]] == {**in_utc(row), "session_count": 99, "asn_org": "new"}
    for row in rows[3:]:
        assert after[row["ip_address"]] == in_utc(row)


def test_sqlite_bulk_values_are_stored_exactly_as_sqlalchemy_stores_them(sqlite_engine: Engine) -> None:
    rows = inventory_rows()
    twin = INVENTORY.to_metadata(MetaData(), name="sqlalchemy_written")
    twin.create(sqlite_engine)
    with sqlite_engine.begin() as conn:
        conn.execute(insert(twin), rows)
        bulk_sql.insert(conn, INVENTORY, rows, columns())
    with sqlite_engine.connect() as conn:
        # The raw stored text and numbers, no type processing at all.
        by_sqlalchemy = conn.exec_driver_sql("SELECT * FROM sqlalchemy_written ORDER BY ip_address").all()
        by_bulk_path = conn.exec_driver_sql("SELECT * FROM ip_inventory ORDER BY ip_address").all()
    assert by_bulk_path == by_sqlalchemy


def test_hostile_text_and_nul_in_enrichment_json_survive_new_and_rewritten_rows(engine: Engine) -> None:
    ips = [f"198.51.100.{i + 1}" for i in range(len(HOSTILE))]
    nul = "NUL \x00 inside"

    def updates(suffix: str) -> list[SourceUpdate]:
        return [
            SourceUpdate(
                ip,
                maxmind={"asn": 64500, "asn_org": text + suffix, text: [text, nul], nul: nul},
                greynoise={"name": text, "classification": text, "noise": True},
            )
            for ip, text in zip(ips, HOSTILE, strict=True)
        ]

    activity = [DayActivity(ip, 1, 1, NOW, NOW) for ip in ips]
    upsert_day(engine, DAY1, activity, updates(""), now=NOW)
    upsert_day(engine, DAY1, activity, updates(" v2"), now=NOW + timedelta(hours=1))  # whole-row update
    upsert_day(engine, DAY1, activity, updates(" v2"), now=NOW + timedelta(hours=2))  # narrow update

    rows = {row["ip_address"]: row for row in fetch_inventory(engine)}
    for ip, text in zip(ips, HOSTILE, strict=True):
        maxmind = rows[ip]["enrichment"]["maxmind"]
        assert maxmind == {"asn": 64500, "asn_org": text + " v2", text: [text, nul], nul: nul}
        assert rows[ip]["asn_org"] == text + " v2"
        assert rows[ip]["greynoise_classification"] == text
        assert rows[ip]["maxmind_updated_at"] == NOW + timedelta(hours=2)


def test_nul_in_a_text_column_is_kept_by_sqlite_and_rejected_by_postgresql_without_writing(engine: Engine) -> None:
    update = SourceUpdate("203.0.113.9", maxmind={"asn": 64500, "asn_org": "evil\x00org"})
    activity = [DayActivity("203.0.113.9", 1, 1, NOW, NOW)]
    if engine.dialect.name == "sqlite":
        upsert_day(engine, DAY1, activity, [update], now=NOW)
        assert fetch_inventory(engine)[0]["asn_org"] == "evil\x00org"
        return
    with pytest.raises(DBAPIError, match="cannot be converted to text"):
        upsert_day(engine, DAY1, activity, [update], now=NOW)
    assert fetch_inventory(engine) == []
    with engine.connect() as conn:
        assert conn.execute(select(DAILY_ACTIVITY)).all() == []


def test_unencodable_text_and_naive_datetimes_are_refused_before_reaching_the_database(engine: Engine) -> None:
    row = inventory_rows()[1]
    with engine.begin() as conn:
        with pytest.raises(StatementError, match="surrogates not allowed"):
            bulk_sql.insert(conn, INVENTORY, [{**row, "enrichment": {"k": "\udc80"}}], columns())
        with pytest.raises(ValueError, match="naive datetime"):
            bulk_sql.insert(conn, INVENTORY, [{**row, "last_seen": datetime(2018, 5, 6)}], columns())
    assert fetch_inventory(engine) == []


def test_a_key_set_of_any_size_is_one_bound_parameter(engine: Engine) -> None:
    rows = inventory_rows()
    with engine.begin() as conn:
        bulk_sql.insert(conn, INVENTORY, rows, columns())
    # More keys than SQLite allows bound parameters in one statement (32766), hostile ones among them.
    keys = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(40_000)] + list(HOSTILE)
    keys += [rows[0]["ip_address"], rows[4]["ip_address"]]
    query = select(INVENTORY.c.ip_address).where(bulk_sql.among(engine.dialect.name, INVENTORY.c.ip_address, keys))
    with engine.connect() as conn:
        assert sorted(ip for (ip,) in bulk_sql.fetch(conn, query)) == [rows[0]["ip_address"], rows[4]["ip_address"]]
        assert bulk_sql.fetch(conn, query.where(bulk_sql.among(engine.dialect.name, INVENTORY.c.ip_address, []))) == []


def ten_thousand_day_history(engine: Engine) -> list[Any]:
    """Two overlapping 10k-IP days with failures, the first re-run later, then a refresh: every write path."""
    v4 = [str(ipaddress.IPv4Address(0x0A000000 + i)) for i in range(8_000)]
    v6 = [str(ipaddress.IPv6Address(0x20010DB8 << 96 | i)) for i in range(2_000)]
    ips = v4 + v6
    index = {ip: i for i, ip in enumerate(ips)}

    def day(which: date, chosen: list[str], offset: int) -> list[DayActivity]:
        start = datetime(which.year, which.month, which.day, tzinfo=UTC)
        return [
            DayActivity(
                ip,
                (i + offset) % 5,
                (i + offset) % 5 + 3,
                start + timedelta(seconds=i, microseconds=i),
                start + timedelta(seconds=2 * i + 7),
            )
            for i, ip in enumerate(chosen)
        ]

    def updates(chosen: list[str], tag: str, cymru_answers: bool) -> list[SourceUpdate]:
        """MaxMind gives every third IP no ASN; Cymru answers those at even positions (or all, when told)."""
        result = []
        for ip in chosen:
            i = index[ip]
            answered = cymru_answers or i % 6 == 0
            cymru = {"status": "routed", "asn": 23028 + i, "as_name": f"{tag} AS '{i}\"", "country_code": "US"}
            result.append(
                SourceUpdate(
                    ip,
                    maxmind={"asn": 64512 + i if i % 3 else None, "asn_org": f"{tag} org {i}", "country_code": "se"},
                    cymru=cymru if answered else None,
                )
            )
        return result

    cymru_failures = [LookupFailure(ip, "cymru", f"batch {i}: timed out") for i, ip in enumerate(ips[3:3000:6])]
    greynoise_failures = [LookupFailure(ip, "greynoise", "HTTP 503") for ip in ips[:500]]
    stats = [
        upsert_day(
            engine,
            DAY1,
            day(DAY1, ips, 0),
            updates(ips, "one", False),
            now=NOW,
            failures=cymru_failures + greynoise_failures,
        ),
        upsert_day(
            engine,
            DAY2,
            day(DAY2, ips[5000:], 1),
            updates(ips[9000:], "two", False),
            now=NOW + timedelta(hours=1),
            failures=cymru_failures[:100],
        ),
        upsert_day(engine, DAY1, day(DAY1, ips[:7000], 2), [], now=NOW + timedelta(hours=2)),
        upsert_enrichment(engine, updates(ips[:300], "refresh", True), now=NOW + timedelta(hours=3)),
    ]
    return [
        [(s.inserted, s.updated, s.activity_rows, s.failures_recorded, s.failures_cleared) for s in stats],
        fetch_inventory(engine),
        fetch_failures(engine),
    ]


@pytest.mark.postgres
def test_a_ten_thousand_ip_history_is_identical_on_sqlite_and_postgresql_and_adds_up(
    sqlite_engine: Engine, pg_engine: Engine
) -> None:
    sqlite_history, pg_history = ten_thousand_day_history(sqlite_engine), ten_thousand_day_history(pg_engine)
    assert sqlite_history == pg_history

    stats, rows, failures = sqlite_history
    assert stats == [
        (10_000, 0, 10_000, 1_000, 0),
        (0, 5_100, 5_000, 100, 0),  # day 2's 5k IPs and the 100 that failed again
        (0, 10_000, 7_000, 0, 0),  # day 1 shrinks to 7k IPs: the 3k that left are touched too
        (0, 300, 0, 0, 50),  # Cymru answers the 50 of its failed IPs among the 300 refreshed
    ]
    by_ip = {row["ip_address"]: row for row in rows}
    assert len(by_ip) == 10_000
    # Totals: day 1 as re-run (offset 2, the first 7k IPs) plus day 2 (offset 1, IPs 5000 and up).
    expected_sessions = sum((i + 2) % 5 for i in range(7_000)) + sum((i + 1) % 5 for i in range(5_000))
    assert sum(row["session_count"] for row in rows) == expected_sessions
    only_day2 = by_ip[str(ipaddress.IPv6Address(0x20010DB8 << 96))]  # IP 8000: left day 1 on its re-run
    start = datetime(2018, 5, 7, tzinfo=UTC)
    assert (only_day2["first_seen"], only_day2["last_seen"]) == (
        start + timedelta(seconds=3000, microseconds=3000),
        start + timedelta(seconds=6007),
    )
    assert only_day2["session_count"] == 3001 % 5
    both_days = by_ip[ips_at(6000)]
    assert both_days["first_seen"] == datetime(2018, 5, 6, tzinfo=UTC) + timedelta(seconds=6000, microseconds=6000)
    assert both_days["last_seen"] == start + timedelta(seconds=2007)
    assert by_ip["10.0.0.1"]["enrichment"]["maxmind"]["asn_org"] == "refresh org 1"
    assert by_ip["10.0.0.3"]["current_asn"] == 23028 + 3  # no MaxMind ASN: Cymru's, from the refresh
    attempts = sorted((row["source"], row["attempts"]) for row in failures)
    assert attempts == [("cymru", 1)] * 400 + [("cymru", 2)] * 50 + [("greynoise", 1)] * 500


def ips_at(i: int) -> str:
    return str(ipaddress.IPv4Address(0x0A000000 + i))
