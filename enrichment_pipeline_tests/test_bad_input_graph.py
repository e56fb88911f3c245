"""Hostile and broken Cowrie days through the real asset graph (real files, real Dagster runs, the loopback
Cymru stand-in, a real SQLite inventory): good lines always land, bad ones are counted, a dead day writes nothing."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from enrichment_pipeline.assets import enrichment_assets
from enrichment_pipeline.core.inventory import fetch_inventory, make_engine
from enrichment_pipeline.core.ips import canonical_ip
from enrichment_pipeline.resources import (
    CowrieLogDirectory,
    CymruResource,
    FreshnessResource,
    GreyNoiseResource,
    InventoryDatabase,
    MaxMindResource,
)
from enrichment_pipeline.standins.cymru_server import (
    CymruStandinServer,
    standin_origins,
)
from enrichment_pipeline_tests.support.synthetic_days import (
    UTC,
    database_state,
    day_file,
    event,
    public_ips,
    write_day,
)

DAY = datetime.date(2018, 5, 3)
GOOD_DAY = datetime.date(2018, 5, 2)
NOON = datetime.datetime(2018, 5, 3, 12, 0, tzinfo=UTC)
SMUGGLER = "1.2.3.4\nend\nbegin\n8.8.8.8"
MAX_LINE_BYTES = 16 * 1024 * 1024  # read_day_log's default limit, which the ingest asset uses


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'inventory.sqlite'}"


def run_day(day: datetime.date, log_dir: Path, db_url: str, standin: CymruStandinServer) -> ExecuteInProcessResult:
    """Materialize the whole graph for one day; no MaxMind ASN database, so every IP goes to Cymru (GreyNoise off)."""
    with DagsterInstance.ephemeral() as instance:
        return materialize(
            enrichment_assets,
            partition_key=day.isoformat(),
            instance=instance,
            raise_on_error=False,
            resources={
                "cowrie_logs": CowrieLogDirectory(log_dir=str(log_dir)),
                "maxmind": MaxMindResource(),
                "freshness": FreshnessResource(),
                "cymru": CymruResource(host="127.0.0.1", port=standin.address[1], timeout_s=10, batch_size=4),
                "inventory": InventoryDatabase(url=db_url),
                "greynoise": GreyNoiseResource(),
            },
        )


def ingest_metadata(result: ExecuteInProcessResult) -> dict[str, Any]:
    (materialization,) = [
        m
        for m in result.asset_materializations_for_node("cowrie_logs_ingest")
        if m.asset_key.path == ["cowrie_source_ips"]
    ]
    return {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}


def inventory_ips(db_url: str) -> set[str]:
    return {row["ip_address"] for row in fetch_inventory(make_engine(db_url))}


def sent_to_cymru(standin: CymruStandinServer) -> list[str]:
    return [line for query in standin.requests for line in query]


def failure_text(result: ExecuteInProcessResult) -> str:
    (failure,) = result.get_step_failure_events()
    data = failure.step_failure_data
    description = data.user_failure_data.description if data.user_failure_data else ""
    return f"{description} {data.error.message if data.error else ''}"


def populated_inventory(tmp_path: Path, db_url: str, standin: CymruStandinServer) -> dict:
    """An inventory holding one good earlier day, and its full state, to prove a failed day changes nothing."""
    good_logs = tmp_path / "good"
    yesterday = NOON - datetime.timedelta(days=1)
    write_day(good_logs, GOOD_DAY, [event(ip, f"g{n}", yesterday) for n, ip in enumerate(public_ips(5))])
    assert run_day(GOOD_DAY, good_logs, db_url, standin).success
    return database_state(make_engine(db_url))


def test_every_kind_of_bad_line_is_counted_and_every_good_ip_is_enriched(tmp_path, db_url, standin):
    good = ["45.33.10.1", "45.33.10.2", "45.33.10.3", "45.33.10.4", "45.33.10.5", "2a01:4f8::1"]
    lines: list[Any] = [
        event("45.33.10.1", "a", NOON),
        event("45.33.10.1", "b", NOON + datetime.timedelta(hours=1)),
        "this is not JSON at all\n",
        "[1, 2, 3]\n",  # JSON, but not an object
        {key: value for key, value in event("ignored", "c", NOON).items() if key != "src_ip"},  # missing src_ip
        event(12345, "d", NOON),
        event(["45.33.10.1"], "e", NOON),
        event("not-an-ip", "f", NOON),
        event(SMUGGLER, "g", NOON),
        event("45.33.10.1 ", "h", NOON),
        event("999.1.1.1", "i", NOON),
        event("fe80::1%eth0", "j", NOON),
        event("::ffff:45.33.10.2", "k", NOON),  # IPv4-mapped: the same host as 45.33.10.2
        {key: value for key, value in event("45.33.10.2", "-", NOON).items() if key != "session"},
        event("45.33.10.3", "l", NOON, timestamp="yesterday-ish"),
        event("2a01:4f8::1", "m", NOON),
        event("2a01:4f8:0:0::1", "q", NOON),  # another spelling of the same IPv6 address
        # Invalid UTF-8 in an attacker-typed password must not cost the event its src_ip.
        b'{"eventid": "cowrie.login.failed", "src_ip": "45.33.10.4", "session": "n", '
        b'"timestamp": "2018-05-03T13:00:00.000000Z", "password": "\xff\xfe\xfa"}\n',
        event("45.33.10.5", "o", NOON, input="A" * (5 * 1024 * 1024)),  # several MB, under the limit: kept
        event("45.33.10.66", "p", NOON, input="B" * MAX_LINE_BYTES),  # over the limit: skipped
        '{"eventid": "cowrie.session.connect", "src_ip": "45.33.10.77", "sess',  # writer died mid-line
    ]
    write_day(tmp_path, DAY, lines)

    result = run_day(DAY, tmp_path, db_url, standin)

    assert result.success
    assert inventory_ips(db_url) == set(good)
    counts = ingest_metadata(result)
    assert counts["lines"] == len(lines)
    assert counts["source_ips"] == len(good)
    assert counts["bad_json_lines"] == 2
    assert counts["missing_src_ip"] == 1
    assert counts["invalid_src_ip"] == 7
    assert counts["bad_timestamps"] == 1
    assert counts["invalid_utf8_lines"] == 1
    assert counts["oversized_lines"] == 1
    assert counts["truncated_last_line"] is True
    assert counts["read_error"] == ""

    rows = {row["ip_address"]: row for row in fetch_inventory(make_engine(db_url))}
    assert rows["45.33.10.1"]["session_count"] == 2
    assert rows["45.33.10.2"]["session_count"] == 1  # the session-less event counts no session
    assert rows["45.33.10.3"]["first_seen"] is None  # its only timestamp was unusable, the IP still counts
    assert rows["2a01:4f8::1"]["session_count"] == 2
    for ip in good:  # enriched with the stand-in's answer for exactly that IP
        assert rows[ip]["current_asn"] == standin_origins(ip)[0].asn

    # Only canonical IPs ever reach the line-oriented whois stream: nothing smuggled rides along.
    sent = sent_to_cymru(standin)
    assert sorted(sent) == sorted(good)
    assert all(canonical_ip(line) == line for line in sent)
    assert not {"1.2.3.4", "8.8.8.8", "end", "begin"} & set(sent)


def test_an_empty_day_is_a_successful_run_that_writes_no_ips(tmp_path, db_url, standin):
    day_file(tmp_path, DAY).write_bytes(b"")

    result = run_day(DAY, tmp_path, db_url, standin)

    assert result.success
    assert ingest_metadata(result)["source_ips"] == 0
    assert inventory_ips(db_url) == set()
    assert standin.requests == []


def test_a_missing_day_names_the_file_and_the_env_var_and_writes_nothing(tmp_path, db_url, standin):
    before = populated_inventory(tmp_path, db_url, standin)
    empty_dir = tmp_path / "logs"
    empty_dir.mkdir()

    result = run_day(DAY, empty_dir, db_url, standin)

    assert not result.success
    message = failure_text(result)
    assert str(day_file(empty_dir, DAY)) in message and "COWRIE_LOG_DIR" in message
    assert database_state(make_engine(db_url)) == before


@pytest.mark.parametrize("damage", ["truncated", "junk_after_first_member"])
def test_a_gzip_corrupt_halfway_keeps_the_good_part_and_reports_the_damage(tmp_path, db_url, standin, damage):
    ips = public_ips(400, seed=3)
    lines = [event(ip, f"s{n}", NOON + datetime.timedelta(seconds=n)) for n, ip in enumerate(ips)]
    path = write_day(tmp_path, DAY, lines, gz=True)
    if damage == "truncated":  # the copy or the disk gave out halfway
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    else:  # a first good gzip member, then garbage where the next member's header should be
        write_day(tmp_path, DAY, lines[:200], gz=True)
        path.write_bytes(path.read_bytes() + b"\x1f\x8b\x08\x00this is no gzip member" * 50)

    result = run_day(DAY, tmp_path, db_url, standin)

    assert result.success
    counts = ingest_metadata(result)
    assert counts["read_error"] != ""
    kept = inventory_ips(db_url)
    # The file is read in order: what survives is exactly the IPs of an unbroken run of leading lines.
    assert kept == set(ips[: len(kept)])
    if damage == "truncated":
        assert 100 <= len(kept) < 400
    else:
        assert len(kept) == 200


@pytest.mark.parametrize("unreadable", ["not_gzip_at_all", "directory"])
def test_a_wholly_unreadable_day_fails_clearly_and_writes_nothing(tmp_path, db_url, standin, unreadable):
    before = populated_inventory(tmp_path, db_url, standin)
    queries_before = len(standin.requests)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    if unreadable == "not_gzip_at_all":
        path = day_file(log_dir, DAY, gz=True)
        path.write_bytes(b"PK\x03\x04 a zip, or anything else that is not gzip" * 100)
    else:
        path = day_file(log_dir, DAY)
        path.mkdir()

    result = run_day(DAY, log_dir, db_url, standin)

    assert not result.success
    assert str(path) in failure_text(result)
    assert database_state(make_engine(db_url)) == before
    assert len(standin.requests) == queries_before
