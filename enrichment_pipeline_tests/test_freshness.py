"""Freshness: the TTL and backoff rules, the inventory's freshness and staleness queries (SQLite and
PostgreSQL), and real materializations that never ask Team Cymru twice until an answer expires."""

from __future__ import annotations

import ipaddress
from datetime import UTC, date, datetime, timedelta

import pytest
from dagster import DagsterInstance
from sqlalchemy import Engine

from enrichment_pipeline.core import freshness
from enrichment_pipeline.core.freshness import (
    ASN_BUILD_KEY,
    CITY_BUILD_KEY,
    FreshnessPolicy,
    MaxMindBuilds,
    expires_at,
    is_fresh,
    retry_delay,
)
from enrichment_pipeline.core.greynoise import skip_reason
from enrichment_pipeline.core.inventory import (
    LookupFailure,
    SourceUpdate,
    backing_off_ips,
    fetch_inventory,
    fresh_ips,
    make_engine,
    stalest_ips,
    upsert_day,
)
from enrichment_pipeline.core.maxmind import MaxMindLookup
from enrichment_pipeline_tests.support.expected_ips import distinct_valid_ips
from enrichment_pipeline_tests.support.graph_run import keyed_greynoise, run_day

NOW = datetime(2018, 5, 9, 3, 0, tzinfo=UTC)
DAY = date(2018, 5, 8)
BUILDS = MaxMindBuilds(city=1530653216, asn=1700000000)
POLICY = FreshnessPolicy.from_days(7, 30, 7, BUILDS)


def maxmind(asn: int | None, builds: MaxMindBuilds = BUILDS) -> dict:
    return {"asn": asn, "asn_org": "Org" if asn else None, "country_code": "DE", **builds.as_dict()}


CYMRU = {"status": "routed", "asn": 23028, "as_name": "TEAMCYMRU", "country_code": "US"}
UNROUTED = {"status": "unrouted", "asn": None, "as_name": None, "country_code": None}


# --- the rules ---------------------------------------------------------------------------------------


def test_an_answer_is_fresh_strictly_less_than_ttl_after_it_was_given() -> None:
    ttl = timedelta(days=30)

    assert is_fresh(NOW, ttl, NOW + ttl - timedelta(microseconds=1))
    assert not is_fresh(NOW, ttl, NOW + ttl)
    assert not is_fresh(None, ttl, NOW)
    assert expires_at(NOW, ttl) == NOW + ttl
    assert expires_at(None, ttl) < expires_at(datetime(1970, 1, 1, tzinfo=UTC), ttl)


def test_retry_backoff_doubles_from_fifteen_minutes_and_stops_at_a_day() -> None:
    delays = [retry_delay(n) for n in range(1, 9)]

    assert delays[:4] == [timedelta(minutes=m) for m in (15, 30, 60, 120)]
    assert delays[-1] == timedelta(days=1) and max(delays) == timedelta(days=1)
    assert retry_delay(10_000) == timedelta(days=1)  # months of failures: no huge power of two
    with pytest.raises(ValueError):
        retry_delay(0)


def test_maxmind_builds_match_only_the_exact_city_and_asn_builds() -> None:
    assert BUILDS.gave(maxmind(1))
    assert not BUILDS.gave(maxmind(1, MaxMindBuilds(BUILDS.city + 1, BUILDS.asn)))
    assert not BUILDS.gave(maxmind(1, MaxMindBuilds(BUILDS.city, None)))  # ASN database added since
    assert not BUILDS.gave({"asn": 1})  # stored before builds were recorded


def test_policy_rejects_negative_or_nan_ttls_and_unknown_sources() -> None:
    with pytest.raises(ValueError, match="cymru"):
        FreshnessPolicy.from_days(7, -1, 7)
    with pytest.raises(ValueError, match="greynoise"):
        FreshnessPolicy.from_days(7, 30, float("nan"))
    with pytest.raises(ValueError, match="unknown source"):
        POLICY.ttl("shodan")
    assert POLICY.ttl("cymru") == timedelta(days=30)


# --- the inventory's freshness queries ----------------------------------------------------------------


def test_unrouted_cymru_answer_is_as_fresh_as_a_routed_one(engine: Engine) -> None:
    upsert_day(
        engine, DAY, [], [SourceUpdate("192.0.2.1", cymru=CYMRU), SourceUpdate("10.1.2.3", cymru=UNROUTED)], now=NOW
    )

    ttl = timedelta(days=30)
    assert fresh_ips(engine, ["192.0.2.1", "10.1.2.3", "192.0.2.9"], "cymru", ttl, now=NOW) == {"192.0.2.1", "10.1.2.3"}
    assert fresh_ips(engine, ["192.0.2.1", "10.1.2.3"], "cymru", ttl, now=NOW + ttl) == set()


def test_freshness_and_backoff_queries_take_any_number_of_ips_in_one_call(engine: Engine) -> None:
    # More IPs than SQLite binds in one statement (32,766): the set travels as one JSON array.
    answered = [f"198.51.{n // 256}.{n % 256}" for n in range(200)]
    asked = [str(ipaddress.IPv4Address(0x0B000000 + n)) for n in range(40_000)] + answered
    failed = [LookupFailure(ip, "cymru", "timed out") for ip in answered[:50]]
    upsert_day(engine, DAY, [], [SourceUpdate(ip, cymru=CYMRU) for ip in answered[50:]], now=NOW, failures=failed)

    assert fresh_ips(engine, asked, "cymru", timedelta(days=30), now=NOW) == set(answered[50:])
    assert backing_off_ips(engine, asked, "cymru", now=NOW) == set(answered[:50])
    assert [row["ip_address"] for row in fetch_inventory(engine, asked)] == sorted(answered)


def test_maxmind_answer_goes_stale_with_age_or_with_other_database_builds(engine: Engine) -> None:
    updates = [
        SourceUpdate("192.0.2.1", maxmind=maxmind(64500)),
        SourceUpdate("192.0.2.2", maxmind=maxmind(64500, MaxMindBuilds(BUILDS.city, None))),
        SourceUpdate("192.0.2.3", maxmind=maxmind(None, MaxMindBuilds(BUILDS.city - 86400, BUILDS.asn))),
        SourceUpdate("192.0.2.4", maxmind={"asn": 64500}),  # no builds recorded
    ]
    upsert_day(engine, DAY, [], updates, now=NOW)
    ips = [update.ip for update in updates]
    ttl = timedelta(days=7)

    assert fresh_ips(engine, ips, "maxmind", ttl, now=NOW, maxmind_builds=BUILDS) == {"192.0.2.1"}
    assert fresh_ips(engine, ips, "maxmind", ttl, now=NOW) == set(ips)  # by age alone
    assert fresh_ips(engine, ips, "maxmind", ttl, now=NOW + ttl, maxmind_builds=BUILDS) == set()
    no_asn_db = MaxMindBuilds(BUILDS.city, None)
    assert fresh_ips(engine, ips, "maxmind", ttl, now=NOW, maxmind_builds=no_asn_db) == {"192.0.2.2"}


def test_stalest_puts_due_retries_first_then_the_longest_expired(engine: Engine) -> None:
    day = [SourceUpdate(f"192.0.2.{n}", maxmind=maxmind(64500)) for n in range(1, 6)]
    upsert_day(engine, DAY, [], day, now=NOW - timedelta(days=20))  # expired 13 days ago
    upsert_day(engine, DAY, [], [SourceUpdate("192.0.2.3", maxmind=maxmind(64500))], now=NOW - timedelta(days=8))
    upsert_day(engine, DAY, [], [SourceUpdate("192.0.2.4", maxmind=maxmind(64500))], now=NOW)  # fresh
    # 192.0.2.5: MaxMind no ASN and Cymru failed an hour ago (first attempt: retry after 15 min).
    upsert_day(
        engine,
        DAY,
        [],
        [SourceUpdate("192.0.2.5", maxmind=maxmind(None))],
        now=NOW - timedelta(hours=1),
        failures=[LookupFailure("192.0.2.5", "cymru", "timed out")],
    )

    order = stalest_ips(engine, 10, POLICY, now=NOW, sources=("maxmind", "cymru"))

    assert order == ["192.0.2.5", "192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert stalest_ips(engine, 2, POLICY, now=NOW, sources=("maxmind", "cymru")) == order[:2]
    assert stalest_ips(engine, 0, POLICY, now=NOW) == []


def test_stalest_asks_cymru_only_without_a_maxmind_asn_and_greynoise_only_for_ipv4(engine: Engine) -> None:
    fresh_maxmind = {"maxmind": maxmind(None)}
    updates = [
        SourceUpdate("192.0.2.1", maxmind=maxmind(64500)),  # MaxMind ASN: Cymru not needed
        SourceUpdate("192.0.2.2", **fresh_maxmind),  # no ASN, never asked Cymru
        SourceUpdate("192.0.2.3", **fresh_maxmind, cymru=UNROUTED),  # fresh unrouted answer
        SourceUpdate("2001:db8::1", **fresh_maxmind, cymru=CYMRU),
    ]
    upsert_day(engine, DAY, [], updates, now=NOW)

    assert stalest_ips(engine, 10, POLICY, now=NOW, sources=("maxmind", "cymru")) == ["192.0.2.2"]
    greynoise_due = stalest_ips(engine, 10, POLICY, now=NOW, sources=("greynoise",))
    assert greynoise_due == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]  # the IPv6 address is never due
    later = NOW + timedelta(days=30)
    assert stalest_ips(engine, 10, POLICY, now=later, sources=("cymru",)) == ["192.0.2.2", "192.0.2.3", "2001:db8::1"]


def test_a_new_maxmind_database_makes_every_maxmind_answer_due(engine: Engine) -> None:
    upsert_day(engine, DAY, [], [SourceUpdate(f"192.0.2.{n}", maxmind=maxmind(64500)) for n in range(1, 4)], now=NOW)
    new_build = FreshnessPolicy.from_days(7, 30, 7, MaxMindBuilds(BUILDS.city, BUILDS.asn + 3600))

    assert stalest_ips(engine, 10, POLICY, now=NOW, sources=("maxmind",)) == []
    assert stalest_ips(engine, 10, new_build, now=NOW, sources=("maxmind",)) == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]


# --- real materializations: never ask twice -------------------------------------------------------------


def cymru_ips(standin, since: int = 0) -> list[str]:
    return sorted(ip for request in standin.requests[since:] for ip in request)


def test_two_days_sharing_ips_ask_cymru_only_for_new_ips_and_repeats_ask_nothing(
    tmp_path, sample_log_dir, standin, asn_db_covering_one_ip
):
    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    day1, day2 = "2018-05-06", "2018-05-07"
    ips1 = distinct_valid_ips(sample_log_dir / f"cowrie.json.{day1}")
    ips2 = distinct_valid_ips(sample_log_dir / f"cowrie.json.{day2}")
    covered = asn_db_covering_one_ip[1]  # MaxMind gives these an ASN: never sent to Cymru
    assert ips1 & ips2 - covered, "the sample days must share IPs for this test to mean anything"

    with DagsterInstance.ephemeral() as instance:
        run_day(day1, sample_log_dir, db_url, standin.address[1], asn_db_covering_one_ip[0], instance)
        after_day1 = len(standin.requests)
        assert cymru_ips(standin) == sorted(ips1 - covered)

        meta = run_day(day2, sample_log_dir, db_url, standin.address[1], asn_db_covering_one_ip[0], instance)
        assert cymru_ips(standin, after_day1) == sorted(ips2 - ips1 - covered)
        assert meta["ips_needing_cymru"]["skipped_fresh"].value == len(ips1 & ips2 - covered)

        before_repeats = len(standin.requests)
        stamps = {row["ip_address"]: row["maxmind_updated_at"] for row in fetch_inventory(make_engine(db_url))}
        repeat1 = run_day(day1, sample_log_dir, db_url, standin.address[1], asn_db_covering_one_ip[0], instance)
        repeat2 = run_day(day2, sample_log_dir, db_url, standin.address[1], asn_db_covering_one_ip[0], instance)
    assert standin.requests[before_repeats:] == []  # the stand-in's own log: not one connection
    assert repeat1["cymru_bulk_results"]["batches"].value == 0
    assert repeat2["ips_needing_cymru"]["skipped_fresh"].value == len(ips2 - covered)
    # Same MaxMind databases within the TTL: no MaxMind answer is rewritten either.
    assert repeat2["merged_inventory"]["maxmind_skipped_fresh"].value == len(ips2)
    assert {row["ip_address"]: row["maxmind_updated_at"] for row in fetch_inventory(make_engine(db_url))} == stamps


def test_with_greynoise_a_repeated_day_makes_zero_cymru_and_zero_greynoise_calls(
    tmp_path, sample_log_dir, standin, asn_db_covering_one_ip, graph_greynoise
):
    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    day = "2018-05-06"
    ips = distinct_valid_ips(sample_log_dir / f"cowrie.json.{day}")
    askable = sorted(ip for ip in ips if skip_reason(ip) is None)

    with DagsterInstance.ephemeral() as instance:
        first = run_day(
            day,
            sample_log_dir,
            db_url,
            standin.address[1],
            asn_db_covering_one_ip[0],
            instance,
            keyed_greynoise(graph_greynoise),
        )
        cymru_sent, greynoise_sent = len(standin.requests), len(graph_greynoise.requests)
        repeat = run_day(
            day,
            sample_log_dir,
            db_url,
            standin.address[1],
            asn_db_covering_one_ip[0],
            instance,
            keyed_greynoise(graph_greynoise),
        )

    assert sorted(graph_greynoise.asked()[:greynoise_sent]) == askable and cymru_sent > 0
    assert (
        standin.requests[cymru_sent:] == [] and graph_greynoise.requests[greynoise_sent:] == []
    )  # the servers' own logs
    assert first["merged_inventory"]["greynoise_stored"].value == len(askable)
    assert repeat["greynoise_results"]["fresh"].value == len(askable)
    assert repeat["merged_inventory"]["greynoise_stored"].value == 0
    rows = {row["ip_address"]: row for row in fetch_inventory(make_engine(db_url))}
    assert all(rows[ip]["greynoise_noise"] is True and rows[ip]["greynoise_classification"] for ip in askable)
    assert all(rows[ip]["greynoise_updated_at"] is None for ip in ips - set(askable))


def test_expired_answers_are_asked_again_on_the_next_run(
    tmp_path, sample_log_dir, standin, asn_db_covering_one_ip, monkeypatch
):
    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    day = "2018-05-06"
    start = datetime(2018, 5, 7, 1, 0, tzinfo=UTC)
    clock = [start]
    monkeypatch.setattr(freshness, "utc_now", lambda: clock[0])
    expected = sorted(distinct_valid_ips(sample_log_dir / f"cowrie.json.{day}") - asn_db_covering_one_ip[1])

    with DagsterInstance.ephemeral() as instance:
        run_day(day, sample_log_dir, db_url, standin.address[1], asn_db_covering_one_ip[0], instance)
        clock[0] = start + timedelta(days=29, hours=23)  # Cymru TTL 30 days: still fresh
        sent = len(standin.requests)
        meta = run_day(day, sample_log_dir, db_url, standin.address[1], asn_db_covering_one_ip[0], instance)
        assert standin.requests[sent:] == []
        assert meta["merged_inventory"]["maxmind_skipped_fresh"].value == 0  # MaxMind TTL 7 days: rewritten

        clock[0] = start + timedelta(days=30)
        run_day(day, sample_log_dir, db_url, standin.address[1], asn_db_covering_one_ip[0], instance)
    assert cymru_ips(standin, sent) == expected
    rows = fetch_inventory(make_engine(db_url), expected)
    assert {row["cymru_updated_at"] for row in rows} == {start + timedelta(days=30)}


def test_a_replaced_maxmind_database_rewrites_maxmind_answers_within_the_ttl(
    tmp_path, sample_log_dir, standin, asn_db_covering_one_ip
):
    from enrichment_pipeline.standins.asn_database import write_asn_database

    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    day = "2018-05-06"
    ips = distinct_valid_ips(sample_log_dir / f"cowrie.json.{day}")
    path = write_asn_database(tmp_path / "asn-v1.mmdb", [("203.0.113.0/24", 64496, "V1")], build_epoch=1_600_000_000)
    with DagsterInstance.ephemeral() as instance:
        run_day(day, sample_log_dir, db_url, standin.address[1], path, instance)
        write_asn_database(path, [("203.0.113.0/24", 64496, "V1")], build_epoch=1_600_086_400)
        meta = run_day(day, sample_log_dir, db_url, standin.address[1], path, instance)

    assert meta["merged_inventory"]["maxmind_skipped_fresh"].value == 0
    stored = {row["enrichment"]["maxmind"][ASN_BUILD_KEY] for row in fetch_inventory(make_engine(db_url), ips)}
    assert stored == {1_600_086_400}
    city_build = MaxMindLookup().city_info.build_epoch
    assert {row["enrichment"]["maxmind"][CITY_BUILD_KEY] for row in fetch_inventory(make_engine(db_url))} == {
        city_build
    }
