"""Tests for the benchmark's synthetic Cowrie days: valid Cowrie JSON, in time order, that the real reader parses
to exactly the requested distinct IPs and events. Expectations are checked with the stdlib json module too."""

from __future__ import annotations

import datetime
import gc
import gzip
import ipaddress
import json
import random
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from bench.synthetic_logs import events_per_ip, synthetic_ips, write_day
from enrichment_pipeline.core.cowrie_log import (
    CowrieLogError,
    day_log_path,
    read_day_log,
)
from enrichment_pipeline.core.ips import canonical_ip

DAY = datetime.date(2018, 6, 1)
PROJECT_ROOT = Path(__file__).resolve().parents[1]
SESSION_ID = re.compile(r"[0-9a-f]{12}")


def stdlib_events(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as stream:
        return [json.loads(line) for line in stream]


def test_a_day_is_valid_cowrie_json_with_exactly_the_requested_ips_events_and_sessions(tmp_path):
    written = write_day(tmp_path, DAY, ips=300, events=2_000, seed=7)

    events = stdlib_events(written.path)
    assert written.path == day_log_path(tmp_path, DAY)
    assert len(events) == written.events == 2_000
    assert {event["src_ip"] for event in events} == set(written.ips)
    assert len(set(written.ips)) == 300
    sessions_by_ip: dict[str, set[str]] = defaultdict(set)
    for event in events:
        assert event["eventid"].startswith("cowrie.") and event["sensor"]
        assert canonical_ip(event["src_ip"]) == event["src_ip"]
        assert ipaddress.ip_address(event["src_ip"]).is_global
        assert SESSION_ID.fullmatch(event["session"])
        assert event["timestamp"].endswith("Z")
        sessions_by_ip[event["src_ip"]].add(event["session"])
    moments = [datetime.datetime.fromisoformat(event["timestamp"]) for event in events]
    assert moments == sorted(moments)  # Cowrie writes in time order
    assert all(moment.date() == DAY for moment in moments)
    # Every session opens with a connect; the closing event comes last when there is one.
    first_event = {}
    for event in events:
        first_event.setdefault(event["session"], event["eventid"])
    assert set(first_event.values()) == {"cowrie.session.connect"}
    assert sum(len(sessions) for sessions in sessions_by_ip.values()) == written.sessions


def test_the_real_reader_finds_exactly_the_written_ips_sessions_and_events(tmp_path):
    written = write_day(tmp_path, DAY, ips=1_000, events=10_000, seed=3)

    day_log = read_day_log(written.path)

    assert [source.ip for source in day_log.sources] == sorted(written.ips)
    assert len(day_log.sources) == 1_000
    stats = day_log.stats
    assert (stats.events, stats.skipped_lines, stats.invalid_src_ip, stats.bad_timestamp) == (10_000, 0, 0, 0)
    assert stats.invalid_utf8 == 0 and stats.read_error is None
    assert sum(source.event_count for source in day_log.sources) == 10_000
    assert sum(source.session_count for source in day_log.sources) == written.sessions
    assert all(source.first_seen and source.first_seen <= source.last_seen for source in day_log.sources)


def test_a_gzipped_day_reads_back_the_same(tmp_path):
    plain = write_day(tmp_path / "plain", DAY, ips=200, events=1_000, seed=1)
    zipped = write_day(tmp_path / "zipped", DAY, ips=200, events=1_000, seed=1, gzipped=True)

    assert zipped.path.name == f"cowrie.json.{DAY.isoformat()}.gz"
    assert gzip.decompress(zipped.path.read_bytes()) == plain.path.read_bytes()
    assert read_day_log(zipped.path).sources == read_day_log(plain.path).sources


def test_the_same_seed_writes_the_same_bytes_and_another_seed_does_not(tmp_path):
    first = write_day(tmp_path / "a", DAY, ips=50, events=400, seed=5)
    again = write_day(tmp_path / "b", DAY, ips=50, events=400, seed=5)
    other = write_day(tmp_path / "c", DAY, ips=50, events=400, seed=6)

    assert first.path.read_bytes() == again.path.read_bytes()
    assert first.path.read_bytes() != other.path.read_bytes()


def test_one_event_per_ip_is_the_smallest_day_and_fewer_events_than_ips_is_refused(tmp_path):
    written = write_day(tmp_path, DAY, ips=40, events=40)
    assert len(read_day_log(written.path).sources) == 40

    with pytest.raises(ValueError, match="at least one IP and one event per IP"):
        write_day(tmp_path, DAY, ips=40, events=39)


def test_events_are_split_with_at_least_one_per_ip_and_a_few_heavy_hitters():
    counts = events_per_ip(1_000, 20_000, random.Random(0))

    assert len(counts) == 1_000 and sum(counts) == 20_000 and min(counts) >= 1
    assert max(counts) > 10 * (20_000 // 1_000)  # skewed like a real day, not uniform


def test_addresses_are_distinct_global_and_canonical_in_both_families():
    ips = synthetic_ips(2_000, random.Random(0), ipv6_share=0.3)

    assert len(set(ips)) == 2_000
    assert all(canonical_ip(ip) == ip and ipaddress.ip_address(ip).is_global for ip in ips)
    versions = {ipaddress.ip_address(ip).version for ip in ips}
    assert versions == {4, 6}


def test_the_script_writes_a_day_the_reader_parses(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "bench.synthetic_logs", str(tmp_path), DAY.isoformat(), "--ips", "25", "--gzip"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    path = tmp_path / f"cowrie.json.{DAY.isoformat()}.gz"
    assert str(path) in completed.stdout
    day_log = read_day_log(path)
    assert len(day_log.sources) == 25 and day_log.stats.events == 250  # default: 10 events per IP


def test_reading_a_day_leaves_the_cycle_collector_as_it_was_even_on_error(tmp_path):
    # The reader pauses the collector while it reads (a measured speed-up on big days).
    written = write_day(tmp_path, DAY, ips=20, events=100)
    broken = tmp_path / "cowrie.json.2018-06-02.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    assert gc.isenabled()
    try:
        read_day_log(written.path)
        assert gc.isenabled()
        with pytest.raises(CowrieLogError):
            read_day_log(broken)
        assert gc.isenabled()
        gc.disable()
        read_day_log(written.path)
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()
