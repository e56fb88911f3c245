"""The retry list (`enrichment_failures`): recorded with the day's upsert in one transaction, backoff per
attempt, cleared when the source answers; and failed-then-recovered IPs in real materializations."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from dagster import DagsterInstance
from sqlalchemy import Engine

from enrichment_pipeline.core.greynoise import skip_reason
from enrichment_pipeline.core.inventory import (
    DayActivity,
    LookupFailure,
    SourceUpdate,
    backing_off_ips,
    fetch_failures,
    fetch_inventory,
    make_engine,
    upsert,
    upsert_day,
    upsert_enrichment,
)
from enrichment_pipeline_tests.support.expected_ips import distinct_valid_ips
from enrichment_pipeline_tests.support.graph_run import keyed_greynoise, run_day
from enrichment_pipeline_tests.support.greynoise_server import status

DAY = date(2018, 5, 6)
NOW = datetime(2018, 5, 7, 2, 0, tzinfo=UTC)
A, B = "198.51.100.1", "2001:db8::b"
NO_ASN = {"asn": None, "country_code": "DE"}
CYMRU = {"status": "routed", "asn": 23028, "as_name": "TEAMCYMRU", "country_code": "US"}


def failures_by_pair(engine: Engine) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["ip_address"], row["source"]): row for row in fetch_failures(engine)}


def fail_day(engine: Engine, now: datetime, *failures: LookupFailure) -> None:
    activity = [DayActivity(ip, 1, 1, None, None) for ip in sorted({f.ip for f in failures})]
    updates = [SourceUpdate(ip, maxmind=NO_ASN) for ip in sorted({f.ip for f in failures})]
    upsert_day(engine, DAY, activity, updates, now=now, failures=list(failures))


def test_failure_is_recorded_with_error_attempts_and_first_backoff(engine: Engine) -> None:
    fail_day(engine, NOW, LookupFailure(A, "cymru", "batch 1/1: timed out after 60.0 s"))

    (row,) = fetch_failures(engine)
    assert row == {
        "ip_address": A,
        "source": "cymru",
        "error": "batch 1/1: timed out after 60.0 s",
        "attempts": 1,
        "first_failed_at": NOW,
        "last_failed_at": NOW,
        "next_retry_at": NOW + timedelta(minutes=15),
    }
    # The failed source stored nothing, so the IP is not fresh for it.
    assert fetch_inventory(engine, [A])[0]["cymru_updated_at"] is None


def test_repeated_failures_count_attempts_keep_the_first_time_and_back_off_longer(engine: Engine) -> None:
    times = [NOW + timedelta(hours=k) for k in range(4)]
    for k, moment in enumerate(times):
        fail_day(engine, moment, LookupFailure(A, "cymru", f"failure {k}"), LookupFailure(B, "greynoise", "HTTP 429"))

    row = failures_by_pair(engine)[(A, "cymru")]
    assert (row["attempts"], row["error"]) == (4, "failure 3")
    assert (row["first_failed_at"], row["last_failed_at"]) == (times[0], times[3])
    assert row["next_retry_at"] == times[3] + timedelta(minutes=120)
    assert failures_by_pair(engine)[(B, "greynoise")]["attempts"] == 4
    assert backing_off_ips(engine, [A, B], "cymru", now=times[3] + timedelta(minutes=119)) == {A}
    assert backing_off_ips(engine, [A, B], "cymru", now=times[3] + timedelta(minutes=120)) == set()


def test_an_answer_clears_only_its_own_source(engine: Engine) -> None:
    fail_day(engine, NOW, LookupFailure(A, "cymru", "reset"), LookupFailure(A, "greynoise", "HTTP 503"))

    stats = upsert_day(engine, DAY, [DayActivity(A, 1, 1, None, None)], [SourceUpdate(A, cymru=CYMRU)], now=NOW)

    assert stats.failures_cleared == 1
    assert list(failures_by_pair(engine)) == [(A, "greynoise")]


def test_a_maxmind_asn_settles_a_cymru_failure_that_would_never_be_retried(engine: Engine) -> None:
    fail_day(engine, NOW, LookupFailure(A, "cymru", "reset"))

    upsert_enrichment(engine, [SourceUpdate(A, maxmind={"asn": 64500, "asn_org": "New build"})], now=NOW)

    assert fetch_failures(engine) == []


def test_failures_roll_back_with_the_rest_of_the_day(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_day(engine, NOW, LookupFailure(A, "cymru", "first"))
    before_failures, before_rows = fetch_failures(engine), fetch_inventory(engine)
    write_failures = upsert._write_failures

    def write_then_crash(*args: Any) -> Any:
        write_failures(*args)
        raise RuntimeError("crash after the retry list was written")

    monkeypatch.setattr(upsert, "_write_failures", write_then_crash)
    with pytest.raises(RuntimeError, match="crash"):
        fail_day(engine, NOW + timedelta(hours=1), LookupFailure(A, "cymru", "second"), LookupFailure(B, "cymru", "x"))

    assert fetch_failures(engine) == before_failures
    assert fetch_inventory(engine) == before_rows


def test_bad_failure_entries_are_rejected_before_writing(sqlite_engine: Engine) -> None:
    bad = [
        ([LookupFailure(A, "shodan", "x")], "unknown source"),
        ([LookupFailure("1.2.3.4\n", "cymru", "x")], "not a canonical IP"),
        ([LookupFailure(A, "cymru", "x"), LookupFailure(A, "cymru", "y")], "listed twice"),
    ]
    for failures, message in bad:
        with pytest.raises(ValueError, match=message):
            upsert_day(sqlite_engine, DAY, [], [], now=NOW, failures=failures)
    assert fetch_failures(sqlite_engine) == [] and fetch_inventory(sqlite_engine) == []


def test_long_or_hostile_error_text_is_stored_verbatim_but_cut_short(engine: Engine) -> None:
    hostile = "'); DROP TABLE enrichment_failures;-- \u202e" + "x" * 2000
    fail_day(engine, NOW, LookupFailure(A, "greynoise", hostile))

    (row,) = fetch_failures(engine)
    assert row["error"] == hostile[:500]


def test_failed_batch_then_recovery_through_real_materializations(
    tmp_path, sample_log_dir, standin, asn_db_covering_one_ip
):
    """A dead Cymru batch fails its IPs onto the retry list; the next run retries exactly them and clears it."""
    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    day = "2018-05-06"
    asked = distinct_valid_ips(sample_log_dir / f"cowrie.json.{day}") - asn_db_covering_one_ip[1]
    doomed = sorted(asked)[:10]  # the first batch of 10
    standin.set_fault("close_immediately", trigger_ips=doomed[:1])

    with DagsterInstance.ephemeral() as instance:
        meta = run_day(day, sample_log_dir, db_url, standin.address[1], asn_db_covering_one_ip[0], instance)
        engine = make_engine(db_url)
        failed = failures_by_pair(engine)
        assert meta["merged_inventory"]["failures_recorded"].value == len(failed) == 10
        assert {ip for ip, source in failed} == set(doomed) and {s for _, s in failed} == {"cymru"}
        assert all(row["attempts"] == 1 and "closed the connection" in row["error"] for row in failed.values())
        rows = {row["ip_address"]: row for row in fetch_inventory(engine, asked)}
        assert all(rows[ip]["cymru_updated_at"] is None for ip in doomed)
        assert all(rows[ip]["cymru_updated_at"] is not None for ip in asked - set(doomed))

        standin.set_fault(None)
        sent = len(standin.requests)
        meta = run_day(day, sample_log_dir, db_url, standin.address[1], asn_db_covering_one_ip[0], instance)

    assert sorted(ip for request in standin.requests[sent:] for ip in request) == doomed
    assert meta["ips_needing_cymru"]["skipped_fresh"].value == len(asked) - 10
    assert meta["merged_inventory"]["failures_cleared"].value == 10
    assert fetch_failures(engine) == []
    assert all(
        row["enrichment"]["cymru"]["status"] in ("routed", "unrouted") for row in fetch_inventory(engine, doomed)
    )


def test_failed_greynoise_lookup_is_kept_and_retried_by_the_next_run(
    tmp_path, sample_log_dir, standin, asn_db_covering_one_ip, graph_greynoise
):
    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    day = "2018-05-06"
    askable = sorted(ip for ip in distinct_valid_ips(sample_log_dir / f"cowrie.json.{day}") if skip_reason(ip) is None)
    unlucky = askable[:2]
    for ip in unlucky:
        graph_greynoise.script(ip, status(503))

    with DagsterInstance.ephemeral() as instance:
        meta = run_day(
            day,
            sample_log_dir,
            db_url,
            standin.address[1],
            asn_db_covering_one_ip[0],
            instance,
            keyed_greynoise(graph_greynoise),
        )
        engine = make_engine(db_url)
        failed = failures_by_pair(engine)
        assert set(failed) == {(ip, "greynoise") for ip in unlucky}
        assert all(row["error"] == "HTTP 503" and row["attempts"] == 1 for row in failed.values())
        assert meta["merged_inventory"]["failures_recorded"].value == 2

        asked_before = len(graph_greynoise.requests)
        meta = run_day(
            day,
            sample_log_dir,
            db_url,
            standin.address[1],
            asn_db_covering_one_ip[0],
            instance,
            keyed_greynoise(graph_greynoise),
        )

    assert sorted(graph_greynoise.asked()[asked_before:]) == unlucky  # only the failed ones, now answered
    assert meta["merged_inventory"]["failures_cleared"].value == 2
    assert fetch_failures(engine) == []
    assert all(row["greynoise_noise"] is True for row in fetch_inventory(engine, unlucky))
