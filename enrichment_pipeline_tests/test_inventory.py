"""Tests for core.inventory on real SQLite files and a real PostgreSQL server: per-day upserts,
per-source merges, rollback, hostile text, 10k-IP batches, concurrent writers and freshness."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from enrichment_pipeline.core.inventory import (
    DAILY_ACTIVITY,
    DayActivity,
    LookupFailure,
    SourceUpdate,
    UpsertStats,
    create_schema,
    fetch_failures,
    fetch_inventory,
    fresh_ips,
    ips_seen_on,
    make_engine,
    upsert,
    upsert_day,
    upsert_days,
)

DAY1, DAY2, DAY3 = date(2018, 5, 6), date(2018, 5, 7), date(2018, 5, 8)
NOW = datetime(2018, 5, 9, 3, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=1)
STAMPS = ("enrichment_updated_at", "maxmind_updated_at", "cymru_updated_at", "greynoise_updated_at")
A, B, C, D = "198.51.100.1", "198.51.100.2", "2001:db8::c", "203.0.113.4"

MAXMIND = {"asn": 64500, "asn_org": "Example Transit", "country_code": "DE"}
CYMRU = {"status": "routed", "asn": 23028, "as_name": "TEAMCYMRU - SAUNET, US", "country_code": "US"}
UNROUTED = {"status": "unrouted", "asn": None, "as_name": None, "country_code": ""}

HOSTILE_TEXTS = (
    "'); DROP TABLE ip_inventory;--",
    'Robert"); DELETE FROM ip_daily_activity; --',
    'O\'Brien "quoted" `ticks` \\ backslash %s %(name)s ? :param $1',
    "ünïcødé — 中文 🐝 \u202eevil",
    "line one\nline two\r\n\ttabbed",
    "x" * 5000,
)


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def seen(ip: str, day: date, sessions: int, first_hour: int, last_hour: int) -> DayActivity:
    return DayActivity(ip, sessions, sessions * 10, at(day, first_hour), at(day, last_hour))


def rows_by_ip(engine: Engine) -> dict[str, dict[str, Any]]:
    return {row["ip_address"]: row for row in fetch_inventory(engine)}


def daily_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return sorted(tuple(row) for row in conn.execute(select(DAILY_ACTIVITY)))


def totals(row: dict[str, Any]) -> tuple[int, datetime | None, datetime | None]:
    return row["session_count"], row["first_seen"], row["last_seen"]


def without_stamps(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {ip: {k: v for k, v in row.items() if k not in STAMPS} for ip, row in rows.items()}


def test_first_upsert_stores_totals_enrichment_summary_and_stamps(engine: Engine) -> None:
    stats = upsert_day(
        engine,
        DAY1,
        [seen(A, DAY1, 3, 8, 10), seen(B, DAY1, 1, 9, 9)],
        [SourceUpdate(A, maxmind=MAXMIND, cymru=CYMRU)],
        now=NOW,
    )

    assert (stats.inserted, stats.updated, stats.activity_rows) == (2, 0, 2)
    rows = rows_by_ip(engine)
    assert rows[A] == {
        "ip_address": A,
        "current_asn": 64500,
        "asn_org": "Example Transit",
        "country_code": "DE",
        "first_seen": at(DAY1, 8),
        "last_seen": at(DAY1, 10),
        "session_count": 3,
        "event_count": 30,
        "enrichment": {"maxmind": MAXMIND, "cymru": CYMRU},
        "enrichment_updated_at": NOW,
        "maxmind_updated_at": NOW,
        "cymru_updated_at": NOW,
        "greynoise_updated_at": None,
        "greynoise_classification": None,
        "greynoise_noise": None,
        "greynoise_riot": None,
    }
    assert rows[B]["enrichment"] == {}
    assert [rows[B][stamp] for stamp in STAMPS] == [None] * 4
    assert (rows[B]["session_count"], rows[B]["event_count"], rows[B]["current_asn"]) == (1, 10, None)
    assert rows[A]["first_seen"].tzinfo is UTC and rows[A]["maxmind_updated_at"].tzinfo is UTC


def test_reupserting_the_same_day_leaves_rows_identical(engine: Engine) -> None:
    activity = [seen(A, DAY1, 3, 8, 10), seen(B, DAY1, 1, 9, 9), seen(C, DAY1, 7, 0, 23)]
    updates = [SourceUpdate(A, maxmind=MAXMIND), SourceUpdate(C, cymru=CYMRU, greynoise={"noise": True})]
    upsert_day(engine, DAY1, activity, updates, now=NOW)
    before, daily_before = rows_by_ip(engine), daily_rows(engine)

    stats = upsert_day(engine, DAY1, activity, updates, now=LATER)

    assert (stats.inserted, stats.updated) == (0, 3)
    after = rows_by_ip(engine)
    assert without_stamps(after) == without_stamps(before)
    assert daily_rows(engine) == daily_before
    assert (after[A]["maxmind_updated_at"], after[A]["cymru_updated_at"]) == (LATER, None)
    assert (after[C]["cymru_updated_at"], after[C]["greynoise_updated_at"]) == (LATER, LATER)
    assert after[B] == before[B]  # no source asked: nothing about B changed at all


def test_overlapping_days_sum_sessions_and_keep_earliest_first_and_latest_last_seen(engine: Engine) -> None:
    # Day 2 lands first: the totals must not depend on the order days are materialised in.
    upsert_day(engine, DAY2, [seen(A, DAY2, 2, 1, 23), seen(B, DAY2, 4, 5, 6)], [], now=NOW)
    upsert_day(engine, DAY1, [seen(A, DAY1, 3, 8, 10)], [], now=NOW)

    rows = rows_by_ip(engine)
    assert totals(rows[A]) == (5, at(DAY1, 8), at(DAY2, 23))
    assert totals(rows[B]) == (4, at(DAY2, 5), at(DAY2, 6))


def test_rematerialising_a_day_replaces_only_that_days_contribution(engine: Engine) -> None:
    day1 = [seen(A, DAY1, 3, 8, 10), seen(C, DAY1, 4, 2, 3)]
    upsert_day(engine, DAY1, day1, [SourceUpdate(C, cymru=CYMRU)], now=NOW)
    upsert_day(engine, DAY2, [seen(A, DAY2, 2, 1, 23)], [], now=NOW)

    stats = upsert_day(engine, DAY1, [seen(A, DAY1, 1, 9, 9), seen(D, DAY1, 6, 4, 5)], [], now=LATER)

    assert (stats.inserted, stats.updated, stats.activity_rows) == (1, 2, 2)  # D new; A and C recomputed
    rows = rows_by_ip(engine)
    assert totals(rows[A]) == (3, at(DAY1, 9), at(DAY2, 23))
    assert totals(rows[D]) == (6, at(DAY1, 4), at(DAY1, 5))
    # C is no longer seen on any day, but its row and enrichment stay.
    assert totals(rows[C]) == (0, None, None)
    assert rows[C]["enrichment"] == {"cymru": CYMRU}
    assert ips_seen_on(engine, DAY1) == {A, D}
    assert ips_seen_on(engine, DAY2) == {A}
    assert ips_seen_on(engine, DAY3) == set()


def test_maxmind_only_update_keeps_stored_cymru_object_and_its_timestamp(engine: Engine) -> None:
    upsert_day(engine, DAY1, [seen(A, DAY1, 1, 1, 1)], [SourceUpdate(A, maxmind=MAXMIND, cymru=CYMRU)], now=NOW)
    new_maxmind = {"asn": 65001, "asn_org": "Renumbered", "country_code": "FR"}

    upsert_day(engine, DAY2, [seen(A, DAY2, 1, 1, 1)], [SourceUpdate(A, maxmind=new_maxmind)], now=LATER)

    row = rows_by_ip(engine)[A]
    assert row["enrichment"] == {"maxmind": new_maxmind, "cymru": CYMRU}
    assert (row["maxmind_updated_at"], row["cymru_updated_at"]) == (LATER, NOW)
    assert row["enrichment_updated_at"] == LATER
    assert (row["current_asn"], row["asn_org"], row["country_code"]) == (65001, "Renumbered", "FR")


def test_run_without_source_updates_keeps_every_enrichment_timestamp(engine: Engine) -> None:
    upsert_day(engine, DAY1, [seen(A, DAY1, 1, 1, 1)], [SourceUpdate(A, greynoise={"noise": False})], now=NOW)

    upsert_day(engine, DAY2, [seen(A, DAY2, 1, 1, 1)], [], now=LATER)

    row = rows_by_ip(engine)[A]
    assert [row[stamp] for stamp in STAMPS] == [NOW, None, None, NOW]
    assert (row["enrichment"], row["session_count"]) == ({"greynoise": {"noise": False}}, 2)


def test_asn_comes_from_maxmind_first_then_routed_cymru_and_never_from_unrouted(engine: Engine) -> None:
    no_asn = {"asn": None, "asn_org": None, "country_code": "NL"}
    updates = [
        SourceUpdate(A, maxmind=MAXMIND, cymru=CYMRU),
        SourceUpdate(B, maxmind=no_asn, cymru=CYMRU),
        SourceUpdate(C, cymru=UNROUTED),
    ]
    upsert_day(engine, DAY1, [], updates, now=NOW)

    rows = rows_by_ip(engine)
    summary = {ip: (row["current_asn"], row["asn_org"], row["country_code"]) for ip, row in rows.items()}
    assert summary == {
        A: (64500, "Example Transit", "DE"),
        B: (23028, "TEAMCYMRU - SAUNET, US", "NL"),
        C: (None, None, None),
    }

    # A later MaxMind answer without an ASN falls back to the Cymru answer stored by the first run.
    upsert_day(engine, DAY2, [], [SourceUpdate(A, maxmind=no_asn)], now=LATER)
    row = rows_by_ip(engine)[A]
    assert (row["current_asn"], row["asn_org"], row["country_code"]) == (23028, "TEAMCYMRU - SAUNET, US", "NL")


def test_greynoise_answer_fills_the_greynoise_columns(engine: Engine) -> None:
    answer = {"ip": A, "noise": False, "riot": True, "classification": "benign", "name": "Example CDN"}

    upsert_day(engine, DAY1, [], [SourceUpdate(A, greynoise=answer)], now=NOW)

    row = rows_by_ip(engine)[A]
    assert row["greynoise_classification"] == "benign"
    assert (row["greynoise_noise"], row["greynoise_riot"]) == (False, True)
    assert (row["greynoise_updated_at"], row["maxmind_updated_at"]) == (NOW, None)


def seed_two_days(engine: Engine) -> tuple[dict[str, dict[str, Any]], list[tuple[Any, ...]]]:
    day1 = [seen(A, DAY1, 3, 8, 10), seen(B, DAY1, 1, 9, 9)]
    upsert_day(engine, DAY1, day1, [SourceUpdate(A, maxmind=MAXMIND)], now=NOW)
    upsert_day(engine, DAY2, [seen(A, DAY2, 2, 1, 2)], [SourceUpdate(B, cymru=CYMRU)], now=NOW)
    return rows_by_ip(engine), daily_rows(engine)


def test_constraint_violation_midway_leaves_both_tables_as_before(engine: Engine) -> None:
    inventory_before, daily_before = seed_two_days(engine)
    # The day's old rows are deleted first; the negative count then fails the insert.
    broken_day = [seen(A, DAY1, 5, 1, 2), DayActivity(C, -1, 0, None, None)]

    with pytest.raises(IntegrityError):
        upsert_day(engine, DAY1, broken_day, [SourceUpdate(A, cymru=CYMRU)], now=LATER)

    assert rows_by_ip(engine) == inventory_before
    assert daily_rows(engine) == daily_before


def test_failure_after_the_last_write_rolls_back_both_tables(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory_before, daily_before = seed_two_days(engine)
    write_changes = upsert._write_changes

    def write_then_fail(conn: Any, rows: Any, stored: Any) -> None:
        write_changes(conn, rows, stored)
        raise RuntimeError("crash after writing")

    monkeypatch.setattr(upsert, "_write_changes", write_then_fail)
    with pytest.raises(RuntimeError, match="crash after writing"):
        upsert_day(engine, DAY1, [seen(D, DAY1, 9, 1, 2)], [SourceUpdate(A, cymru=CYMRU)], now=LATER)

    assert rows_by_ip(engine) == inventory_before
    assert daily_rows(engine) == daily_before


def test_a_range_of_days_in_one_upsert_equals_one_upsert_per_day_in_order(engine: Engine, tmp_path: Path) -> None:
    # Day 2 re-runs a day the inventory already has; C is seen on every day, D only on the last.
    upsert_day(engine, DAY2, [seen(A, DAY2, 7, 3, 4), seen(B, DAY2, 2, 5, 6)], [SourceUpdate(B, cymru=CYMRU)], now=NOW)
    by_day = {
        DAY1: [seen(A, DAY1, 3, 8, 10), seen(C, DAY1, 1, 9, 9)],
        DAY2: [seen(A, DAY2, 2, 1, 2), seen(C, DAY2, 4, 7, 8)],
        DAY3: [seen(C, DAY3, 5, 1, 1), seen(D, DAY3, 1, 23, 23)],
    }
    answers = [SourceUpdate(A, maxmind=MAXMIND), SourceUpdate(C, cymru=UNROUTED), SourceUpdate(D, maxmind=MAXMIND)]
    failures = [LookupFailure(D, "cymru", "timeout")]
    one_by_one = make_engine(f"sqlite:///{tmp_path / 'one_by_one.sqlite'}")
    create_schema(one_by_one)
    upsert_day(
        one_by_one, DAY2, [seen(A, DAY2, 7, 3, 4), seen(B, DAY2, 2, 5, 6)], [SourceUpdate(B, cymru=CYMRU)], now=NOW
    )
    for day, rows in by_day.items():
        # A day's run carries the answers of its own IPs; the retry entry comes from the day D was seen.
        ips = {row.ip for row in rows}
        day_answers = [update for update in answers if update.ip in ips]
        day_failures = [failure for failure in failures if failure.ip in ips]
        upsert_day(one_by_one, day, rows, day_answers, now=LATER, failures=day_failures)

    stats = upsert_days(engine, by_day, answers, now=LATER, failures=failures)

    assert stats.activity_rows == 6 and stats.inserted == 2 and stats.updated == 2  # C, D new; A, B stored
    assert rows_by_ip(engine) == rows_by_ip(one_by_one)
    assert daily_rows(engine) == daily_rows(one_by_one)
    assert fetch_failures(engine) == fetch_failures(one_by_one)
    assert totals(rows_by_ip(engine)[C]) == (10, at(DAY1, 9), at(DAY3, 1))


def test_a_range_upsert_that_fails_leaves_every_day_of_it_as_before(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory_before, daily_before = seed_two_days(engine)
    write_changes = upsert._write_changes

    def write_then_fail(conn: Any, rows: Any, stored: Any) -> None:
        write_changes(conn, rows, stored)
        raise RuntimeError("crash after writing")

    monkeypatch.setattr(upsert, "_write_changes", write_then_fail)
    by_day = {DAY1: [seen(D, DAY1, 9, 1, 2)], DAY2: [seen(C, DAY2, 1, 1, 1)], DAY3: [seen(A, DAY3, 1, 1, 1)]}
    with pytest.raises(RuntimeError, match="crash after writing"):
        upsert_days(engine, by_day, [SourceUpdate(A, cymru=CYMRU)], now=LATER)

    assert rows_by_ip(engine) == inventory_before
    assert daily_rows(engine) == daily_before


def test_unserialisable_enrichment_fails_cleanly_without_writing(engine: Engine) -> None:
    inventory_before, daily_before = seed_two_days(engine)

    with pytest.raises(StatementError, match="not JSON serializable"):
        upsert_day(engine, DAY1, [seen(A, DAY1, 1, 1, 1)], [SourceUpdate(A, maxmind={"asn": {1, 2}})], now=LATER)

    assert rows_by_ip(engine) == inventory_before
    assert daily_rows(engine) == daily_before


def test_sql_looking_quoted_and_unicode_text_round_trips_verbatim(engine: Engine) -> None:
    ips = [f"192.0.2.{i + 1}" for i in range(len(HOSTILE_TEXTS))]
    updates = [
        SourceUpdate(
            ip,
            maxmind={"asn": 64500 + i, "asn_org": hostile, "country_code": "DE", hostile: [hostile]},
            greynoise={"classification": hostile, "noise": True, "riot": False, "name": hostile},
        )
        for i, (ip, hostile) in enumerate(zip(ips, HOSTILE_TEXTS, strict=True))
    ]

    upsert_day(engine, DAY1, [seen(ip, DAY1, 1, 1, 2) for ip in ips], updates, now=NOW)

    rows = rows_by_ip(engine)
    for ip, hostile in zip(ips, HOSTILE_TEXTS, strict=True):
        assert rows[ip]["asn_org"] == hostile
        assert rows[ip]["greynoise_classification"] == hostile
        assert rows[ip]["enrichment"]["maxmind"][hostile] == [hostile]
        assert rows[ip]["enrichment"]["greynoise"]["name"] == hostile
    assert {"ip_inventory", "ip_daily_activity"} <= set(inspect(engine).get_table_names())
    assert len(daily_rows(engine)) == len(ips)
    # Hostile text where an IP is expected finds nothing and breaks nothing.
    assert fetch_inventory(engine, HOSTILE_TEXTS) == []
    assert fresh_ips(engine, HOSTILE_TEXTS, "maxmind", timedelta(days=1), now=NOW) == set()


@pytest.mark.parametrize(
    ("activity", "updates", "now", "message"),
    [
        ([DayActivity("1.2.3.4\n", 1, 1, None, None)], [], NOW, "not a canonical IP"),
        ([DayActivity("::ffff:1.2.3.4", 1, 1, None, None)], [], NOW, "not a canonical IP"),
        ([], [SourceUpdate("2001:DB8::1", maxmind=MAXMIND)], NOW, "not a canonical IP"),
        ([], [SourceUpdate("'); DROP TABLE ip_inventory;--", maxmind=MAXMIND)], NOW, "not a canonical IP"),
        ([DayActivity(A, 1, 1, None, None), DayActivity(A, 2, 2, None, None)], [], NOW, "appears twice"),
        ([DayActivity(A, 1, 1, datetime(2018, 5, 6), None)], [], NOW, "naive first_seen"),
        ([DayActivity(A, 1, 1, None, None)], [], datetime(2018, 5, 9), "naive `now`"),
    ],
    ids=["newline", "v4-mapped", "upper-case-v6", "sql-text", "duplicate", "naive-first-seen", "naive-now"],
)
def test_invalid_inputs_are_rejected_before_anything_is_written(
    sqlite_engine: Engine, activity: list[DayActivity], updates: list[SourceUpdate], now: datetime, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        upsert_day(sqlite_engine, DAY1, activity, updates, now=now)

    assert fetch_inventory(sqlite_engine) == []
    assert daily_rows(sqlite_engine) == []


def test_datetimes_with_any_offset_come_back_as_the_same_instant_in_utc(engine: Engine) -> None:
    plus_two = timezone(timedelta(hours=2))
    first = datetime(2018, 5, 6, 10, 30, 15, 123456, tzinfo=plus_two)
    now_in_new_york = datetime(2018, 5, 8, 22, 0, tzinfo=timezone(timedelta(hours=-5)))

    activity = [DayActivity(A, 1, 1, first, first)]
    upsert_day(engine, DAY1, activity, [SourceUpdate(A, cymru=CYMRU)], now=now_in_new_york)

    row = rows_by_ip(engine)[A]
    assert row["first_seen"] == datetime(2018, 5, 6, 8, 30, 15, 123456, tzinfo=UTC)
    assert row["first_seen"].utcoffset() == timedelta(0)
    assert row["cymru_updated_at"] == datetime(2018, 5, 9, 3, 0, tzinfo=UTC)
    assert row["cymru_updated_at"].utcoffset() == timedelta(0)


def test_fresh_ips_are_those_answered_less_than_ttl_ago(engine: Engine) -> None:
    updates = [SourceUpdate(A, maxmind=MAXMIND), SourceUpdate(B, cymru=CYMRU)]
    upsert_day(engine, DAY1, [seen(C, DAY1, 1, 1, 1)], updates, now=NOW)
    ttl = timedelta(days=7)
    asked = [A, B, C, D]

    assert fresh_ips(engine, asked, "maxmind", ttl, now=NOW) == {A}
    assert fresh_ips(engine, asked, "maxmind", ttl, now=NOW + ttl - timedelta(microseconds=1)) == {A}
    assert fresh_ips(engine, asked, "maxmind", ttl, now=NOW + ttl) == set()  # exactly ttl old: stale
    assert fresh_ips(engine, asked, "cymru", ttl, now=NOW + timedelta(days=6)) == {B}
    assert fresh_ips(engine, asked, "greynoise", ttl, now=NOW) == set()
    assert fresh_ips(engine, [], "maxmind", ttl, now=NOW) == set()
    with pytest.raises(ValueError, match="unknown source"):
        fresh_ips(engine, asked, "shodan", ttl, now=NOW)
    with pytest.raises(ValueError, match="naive"):
        fresh_ips(engine, asked, "maxmind", ttl, now=datetime(2018, 5, 9))


def synthetic_ips(count: int) -> list[str]:
    """Half IPv4, half IPv6, all canonical and distinct."""
    v4 = [str(ipaddress.IPv4Address(0x0A000000 + i)) for i in range(count // 2)]
    v6 = [str(ipaddress.IPv6Address(0x20010DB8 << 96 | i)) for i in range(count - count // 2)]
    return v4 + v6


def test_ten_thousand_ip_upsert_counts_and_sums_are_exact(engine: Engine) -> None:
    ips = synthetic_ips(10_000)
    activity = [DayActivity(ip, i % 7 + 1, i % 7 + 5, at(DAY1, i % 24), at(DAY1, 23)) for i, ip in enumerate(ips)]
    updates = [
        SourceUpdate(ip, maxmind={"asn": 64512 + i, "asn_org": f"Org {i}", "country_code": "SE"})
        for i, ip in enumerate(ips)
        if i % 2 == 0
    ]

    first = upsert_day(engine, DAY1, activity, updates, now=NOW)
    day2 = [DayActivity(ip, 1, 1, at(DAY2, 0), at(DAY2, 1)) for ip in ips]
    again = upsert_day(engine, DAY2, day2, [], now=NOW)

    assert (first.inserted, first.updated, first.activity_rows) == (10_000, 0, 10_000)
    assert (again.inserted, again.updated, again.activity_rows) == (0, 10_000, 10_000)
    rows = fetch_inventory(engine)
    assert len(rows) == 10_000
    assert sum(row["session_count"] for row in rows) == sum(i % 7 + 1 for i in range(10_000)) + 10_000
    assert sum(row["current_asn"] is not None for row in rows) == 5_000
    by_ip = {row["ip_address"]: row for row in rows}
    last_v6 = ips[-1]
    assert (by_ip[last_v6]["current_asn"], by_ip[last_v6]["last_seen"]) == (None, at(DAY2, 1))
    assert (by_ip[ips[4998]]["current_asn"], by_ip[ips[4998]]["asn_org"]) == (64512 + 4998, "Org 4998")
    # Chunked look-ups (> 500 IPs per call) see every row.
    assert fresh_ips(engine, ips, "maxmind", timedelta(days=1), now=NOW) == set(ips[::2])
    assert len(fetch_inventory(engine, ips[1000:2700])) == 1700
    assert len(ips_seen_on(engine, DAY2)) == 10_000


def upsert_history(engine: Engine) -> list[UpsertStats]:
    """Three runs over 20 IPs: activity on two days (one of them re-run), every source, failures recorded,
    retried and cleared."""
    ips = synthetic_ips(20)
    day1 = [seen(ip, DAY1, i % 3 + 1, 1, 2 + i % 20) for i, ip in enumerate(ips[:15])]
    updates1 = [
        SourceUpdate(
            ip,
            maxmind=MAXMIND if i % 2 else None,
            cymru=CYMRU if i % 3 == 0 else None,
            greynoise={"observed": True, "classification": "malicious"} if i % 5 == 0 else None,
        )
        for i, ip in enumerate(ips[:15])
    ]
    failures1 = [LookupFailure(ip, "cymru", f"batch {i}/3: timed out") for i, ip in enumerate(ips[15:])]
    day2 = [seen(ip, DAY2, 2, 3, 4) for ip in ips[5:]]
    updates2 = [SourceUpdate(ips[15], cymru=UNROUTED), SourceUpdate(ips[16], maxmind=MAXMIND)]
    failures2 = [LookupFailure(ip, "cymru", "connection reset by server") for ip in ips[17:]]
    return [
        upsert_day(engine, DAY1, day1, updates1, now=NOW, failures=failures1),
        upsert_day(engine, DAY2, day2, updates2, now=LATER, failures=failures2),
        upsert_day(engine, DAY1, day1[::2], [], now=LATER + timedelta(hours=1)),
    ]


def test_an_upsert_in_chunks_of_ips_writes_exactly_what_one_chunk_writes(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = make_engine(f"sqlite:///{tmp_path / 'one-chunk.sqlite'}")
    create_schema(reference)
    expected_stats = upsert_history(reference)
    monkeypatch.setattr(upsert, "MERGE_CHUNK_IPS", 3)  # 20 IPs: 7 chunks, IPv4 and IPv6 in one of them
    chunked_stats = upsert_history(engine)

    def normalised(stats: UpsertStats) -> tuple[int, ...]:
        return stats.inserted, stats.updated, stats.activity_rows, stats.failures_recorded, stats.failures_cleared

    assert [normalised(stats) for stats in chunked_stats] == [normalised(stats) for stats in expected_stats]
    assert [normalised(stats) for stats in expected_stats][1][3:] == (3, 2)  # failures did move
    assert rows_by_ip(engine) == rows_by_ip(reference)
    assert len(rows_by_ip(engine)) == 20
    failures = {(row["ip_address"], row["source"]): row for row in fetch_failures(engine)}
    assert failures == {(row["ip_address"], row["source"]): row for row in fetch_failures(reference)}
    assert {ip: row["attempts"] for (ip, _), row in failures.items()} == dict.fromkeys(synthetic_ips(20)[17:], 2)
    reference.dispose()


def run_concurrently(jobs: list[Callable[[], UpsertStats]]) -> list[UpsertStats]:
    start = threading.Barrier(len(jobs), timeout=30)

    def after_barrier(job: Callable[[], UpsertStats]) -> UpsertStats:
        start.wait()
        return job()

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(after_barrier, job) for job in jobs]
        return [future.result(timeout=120) for future in futures]


def test_concurrent_upserts_of_different_days_add_up_without_lock_errors(engine: Engine) -> None:
    writers = 4 if engine.dialect.name == "postgresql" else 2
    shared = synthetic_ips(400)
    days = [DAY1 + timedelta(days=k) for k in range(writers)]

    def day_job(k: int) -> Callable[[], UpsertStats]:
        own = [f"203.0.113.{k * 50 + n}" for n in range(50)]
        activity = [seen(ip, days[k], k + 1, k, k + 1) for ip in shared + own]
        answer = {"maxmind": MAXMIND} if k % 2 else {"cymru": CYMRU}
        updates = [SourceUpdate(ip, **answer) for ip in shared]

        def job() -> UpsertStats:
            upsert_day(engine, days[k], activity, updates, now=NOW)
            return upsert_day(engine, days[k], activity, updates, now=LATER)  # re-materialise under contention

        return job

    results = run_concurrently([day_job(k) for k in range(writers)])

    rows = rows_by_ip(engine)
    assert len(rows) == len(shared) + 50 * writers
    assert all(stats.inserted == 0 for stats in results)  # every second run found its rows
    for ip in shared:
        assert rows[ip]["session_count"] == sum(k + 1 for k in range(writers))
        assert (rows[ip]["first_seen"], rows[ip]["last_seen"]) == (at(DAY1, 0), at(days[-1], writers))
        assert rows[ip]["enrichment"] == {"maxmind": MAXMIND, "cymru": CYMRU}
    assert rows["203.0.113.51"]["session_count"] == 2  # writer 1's own IP, counted once despite re-runs
    assert sum(len(ips_seen_on(engine, day)) for day in days) == writers * (len(shared) + 50)


def test_sqlite_writer_waits_for_another_writers_lock_instead_of_failing(sqlite_engine: Engine) -> None:
    other_process = make_engine(sqlite_engine.url.render_as_string())
    finished = threading.Event()
    outcome: list[object] = []

    def write() -> None:
        try:
            outcome.append(upsert_day(sqlite_engine, DAY1, [seen(A, DAY1, 1, 1, 1)], [], now=NOW))
        except Exception as error:  # reported through `outcome`, asserted below
            outcome.append(error)
        finally:
            finished.set()

    with other_process.begin() as conn:
        conn.execute(insert(DAILY_ACTIVITY).values(ip_address=B, day=DAY2, session_count=1, event_count=1))
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        assert not finished.wait(0.3)  # blocked on the other writer's lock, not failed
    writer.join(timeout=30)
    other_process.dispose()

    assert isinstance(outcome[0], UpsertStats), outcome
    assert rows_by_ip(sqlite_engine)[A]["session_count"] == 1
    assert len(daily_rows(sqlite_engine)) == 2


def test_make_engine_creates_the_sqlite_directory_with_wal_and_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "deeper" / "inventory.sqlite"
    engine = make_engine(f"sqlite:///{path}")
    try:
        create_schema(engine)
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 60_000
    finally:
        engine.dispose()
    assert path.is_file()


def test_create_schema_is_idempotent_and_keeps_existing_rows(engine: Engine) -> None:
    upsert_day(engine, DAY1, [seen(A, DAY1, 2, 1, 2)], [SourceUpdate(A, maxmind=MAXMIND)], now=NOW)
    before = rows_by_ip(engine)

    create_schema(engine)
    create_schema(engine)

    assert rows_by_ip(engine) == before
