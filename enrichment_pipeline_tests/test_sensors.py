"""The Cowrie log sensor on real temporary log directories: what it requests, what it never requests, and
that its cursor stays small and loses nothing (the scan planner is also driven with synthetic file stats)."""

import gzip
import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from dagster import DefaultSensorStatus, SensorResult, SkipReason, build_sensor_context

from enrichment_pipeline.definitions import defs, enrich_day_job
from enrichment_pipeline.resources import CowrieLogDirectory
from enrichment_pipeline.sensors import (
    GRACE_NS,
    INTERVAL_ENV,
    MAX_REQUESTS,
    SENSOR_NAME,
    SETTLE_NS,
    LogCursor,
    RotatedLog,
    build_log_sensor,
    plan_requests,
    scan_rotated_logs,
)

AN_HOUR_AGO_NS = time.time_ns() - 3600 * 10**9


def write_log(
    log_dir: Path,
    name: str,
    text: str = '{"eventid": "cowrie.session.connect"}\n',
    *,
    mtime_ns: int | None = AN_HOUR_AGO_NS,
) -> Path:
    """A finished log: written, then its mtime set back (as Cowrie's last write before rotation left it)."""
    path = log_dir / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


class Sensor:
    """Evaluates the project's sensor like the daemon does, carrying the cursor from tick to tick."""

    def __init__(self, log_dir: Path, cursor: str | None = None) -> None:
        self.definition = defs.resolve_sensor_def(SENSOR_NAME)
        self.log_dir = log_dir
        self.cursor = cursor

    def tick(self) -> list[tuple[str, str]]:
        """(partition key, run key) of every run requested by one evaluation."""
        context = build_sensor_context(
            cursor=self.cursor, resources={"cowrie_logs": CowrieLogDirectory(log_dir=str(self.log_dir))}
        )
        result = self.definition(context)
        if isinstance(result, SkipReason):
            self.skip_message = result.skip_message
            return []
        assert isinstance(result, SensorResult)
        self.cursor = result.cursor
        self.skip_message = result.skip_reason.skip_message if result.skip_reason else None
        return [(request.partition_key, request.run_key) for request in result.run_requests]


def version_key(path: Path, day: str) -> str:
    stat = path.stat()
    return f"{day}:{stat.st_size}:{stat.st_mtime_ns}"


def test_each_rotated_day_is_requested_once_and_a_repeat_evaluation_requests_nothing(tmp_path):
    plain = write_log(tmp_path, "cowrie.json.2018-05-06")
    gzipped = write_log(tmp_path, "cowrie.json.2018-05-07.gz")
    sensor = Sensor(tmp_path)

    assert sorted(sensor.tick()) == [
        ("2018-05-06", version_key(plain, "2018-05-06")),
        ("2018-05-07", version_key(gzipped, "2018-05-07")),
    ]
    assert sensor.tick() == []
    assert sensor.tick() == []
    assert len(sensor.cursor) < 400


def test_the_sensor_targets_the_daily_job_and_runs_by_default():
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    assert sensor.job_name == "enrich_day"
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 60


def test_a_grown_or_replaced_file_is_requested_again_for_its_day_only(tmp_path):
    grown = write_log(tmp_path, "cowrie.json.2018-05-06")
    write_log(tmp_path, "cowrie.json.2018-05-07")
    sensor = Sensor(tmp_path)
    assert len(sensor.tick()) == 2

    with grown.open("a") as stream:
        stream.write('{"eventid": "cowrie.session.closed"}\n')
    os.utime(grown, ns=(AN_HOUR_AGO_NS, AN_HOUR_AGO_NS))
    assert sensor.tick() == [("2018-05-06", version_key(grown, "2018-05-06"))]
    assert sensor.tick() == []

    # Replaced by a copy whose mtime is *older* (cp -p, rsync -t): its new ctime still gives it away.
    replacement = write_log(tmp_path, "incoming.tmp", "{}\n" * 50, mtime_ns=AN_HOUR_AGO_NS - 86_400 * 10**9)
    replacement.replace(tmp_path / "cowrie.json.2018-05-07")
    assert sensor.tick() == [("2018-05-07", version_key(tmp_path / "cowrie.json.2018-05-07", "2018-05-07"))]
    assert sensor.tick() == []


def test_live_file_junk_names_and_days_outside_the_partitions_are_never_requested(tmp_path):
    today = datetime.now(UTC).date()
    for name in [
        "cowrie.json",  # the live file
        "cowrie.json.2018-05-06.tmp",
        ".cowrie.json.2018-05-06.swp",
        "cowrie.json.2018-5-6",
        "cowrie.json.2018-02-30",
        "cowrie.json.2018-05-06.gz.part",
        "cowrie.json.2018-05-06.bz2",
        "xcowrie.json.2018-05-06",
        "cowrie.json.\u0662\u0660\u0661\u0668-05-06",  # Arabic-Indic digits are \d in Unicode regexes
        "cowrie.json.2018-04-30",  # before COWRIE_PARTITION_START
        f"cowrie.json.{today.isoformat()}",  # today (UTC) is not over
        f"cowrie.json.{(today + timedelta(days=2)).isoformat()}",
        "cowrie.json.2999-01-01",  # future
    ]:
        write_log(tmp_path, name)
    (tmp_path / "cowrie.json.2018-05-08").mkdir()  # a directory with a log's name
    os.symlink(tmp_path / "missing", tmp_path / "cowrie.json.2018-05-09")  # dangling link

    sensor = Sensor(tmp_path)
    assert sensor.tick() == []
    assert f"cowrie.json.{today.isoformat()}" in sensor.skip_message  # reported as waiting
    assert sensor.tick() == []


def test_a_file_still_being_written_waits_until_it_settles(tmp_path):
    write_log(tmp_path, "cowrie.json.2018-05-06", mtime_ns=None)  # just written
    sensor = Sensor(tmp_path)
    assert sensor.tick() == []
    assert "cowrie.json.2018-05-06" in sensor.skip_message

    os.utime(tmp_path / "cowrie.json.2018-05-06", ns=(AN_HOUR_AGO_NS, AN_HOUR_AGO_NS))  # the copy finished
    assert [day for day, _ in sensor.tick()] == ["2018-05-06"]


def test_the_plain_file_wins_over_its_gzip_copy_until_it_is_removed(tmp_path):
    plain = write_log(tmp_path, "cowrie.json.2018-05-06")
    gzipped = write_log(tmp_path, "cowrie.json.2018-05-06.gz")
    assert [log.name for log in scan_rotated_logs(tmp_path)] == ["cowrie.json.2018-05-06"]
    sensor = Sensor(tmp_path)
    assert sensor.tick() == [("2018-05-06", version_key(plain, "2018-05-06"))]

    plain.unlink()  # the operator's gzip job finished; touch the .gz as gzip does when it completes
    os.utime(gzipped, ns=(AN_HOUR_AGO_NS + 1, AN_HOUR_AGO_NS + 1))
    assert sensor.tick() == [("2018-05-06", version_key(gzipped, "2018-05-06"))]


def test_a_missing_directory_is_a_skip_naming_the_setting(tmp_path):
    sensor = Sensor(tmp_path / "nowhere")
    assert sensor.tick() == []
    assert "COWRIE_LOG_DIR" in sensor.skip_message


def test_an_unreadable_cursor_starts_over(tmp_path):
    write_log(tmp_path, "cowrie.json.2018-05-06")
    junk_cursors = [
        "not json",
        "[]",
        '{"v": 1}',
        '{"v": 1, "ctime_ns": "x", "edge": []}',
        '{"v": 99, "ctime_ns": 1, "edge": []}',
    ]
    for junk in junk_cursors:
        assert len(Sensor(tmp_path, cursor=junk).tick()) == 1


def test_the_minimum_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "5")
    assert build_log_sensor(enrich_day_job).minimum_interval_seconds == 5
    for bad in ["0", "-3", "1.5", "soon"]:
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(ValueError, match=INTERVAL_ENV):
            build_log_sensor(enrich_day_job)


# --- the planner with synthetic file stats ------------------------------------------------------------------
FIRST, LAST = date(2018, 5, 1), date(2030, 1, 1)
LATER_NS = 10**18 * 3  # a scan long after every synthetic change


def synthetic(day_number: int, ctime_ns: int, size: int = 100) -> RotatedLog:
    day = FIRST + timedelta(days=day_number)
    return RotatedLog(day, f"cowrie.json.{day.isoformat()}", size, ctime_ns - 10**9, ctime_ns)


def drain(logs: list[RotatedLog], cursor: LogCursor, scan_ns: int = LATER_NS) -> tuple[list[str], LogCursor, int]:
    requested: list[str] = []
    evaluations = 0
    while True:
        plan = plan_requests(logs, cursor, first_day=FIRST, last_day=LAST, scan_started_ns=scan_ns)
        evaluations += 1
        cursor = plan.cursor
        if not plan.requests:
            return requested, cursor, evaluations
        assert len(plan.requests) <= MAX_REQUESTS
        requested += [log.run_key for log in plan.requests]


def test_thousands_of_files_are_requested_in_bounded_batches_each_exactly_once_and_the_cursor_stays_small():
    # Many identical ctimes (a coarse-timestamp filesystem, a bulk copy): ties must neither loop nor be lost.
    logs = [synthetic(n, 10**18 + (n // 700) * 10**9) for n in range(2_500)]
    requested, cursor, evaluations = drain(logs, LogCursor())
    assert sorted(requested) == sorted(log.run_key for log in logs)
    assert evaluations == 2_500 // MAX_REQUESTS + 1

    # Caught up: the cursor is the watermark plus the keys tied at it, not the whole history.
    assert cursor.watermark_ns == max(log.ctime_ns for log in logs)
    assert len(cursor.edge) == 2_500 - 3 * 700
    new = synthetic(3_000, 10**18 + 3600 * 10**9)
    requested, cursor, _ = drain([*logs, new], cursor)
    assert requested == [new.run_key] and cursor.edge == {new.run_key}
    assert len(cursor.to_json()) < 200


def test_a_file_the_listing_missed_while_it_was_created_is_found_by_the_next_scan():
    # Two copies finish while the first scan runs (cp -p: old mtimes, ctimes from now); the listing
    # returned only the later one. The watermark must stay below the one it never saw.
    scan_ns = 10**18
    seen = RotatedLog(date(2018, 5, 6), "cowrie.json.2018-05-06", 100, scan_ns - 3600 * 10**9, scan_ns + 5_000_000)
    missed = RotatedLog(date(2018, 5, 7), "cowrie.json.2018-05-07", 100, scan_ns - 3600 * 10**9, scan_ns + 2_000_000)
    first = plan_requests([seen], LogCursor(), first_day=FIRST, last_day=LAST, scan_started_ns=scan_ns)
    assert first.cursor.watermark_ns == scan_ns - GRACE_NS
    second = plan_requests(
        [seen, missed], first.cursor, first_day=FIRST, last_day=LAST, scan_started_ns=scan_ns + SETTLE_NS
    )
    assert [log.run_key for log in second.requests] == [missed.run_key]


def test_a_day_rotated_before_it_ended_in_utc_waits_and_holds_the_watermark_until_it_has():
    early = synthetic(10, ctime_ns=10**18)  # a host ahead of UTC rotated the 11th early
    other = synthetic(3, ctime_ns=10**18 + 10**12)
    last_day = early.day - timedelta(days=1)
    plan = plan_requests([early, other], LogCursor(), first_day=FIRST, last_day=last_day, scan_started_ns=LATER_NS)
    assert [log.run_key for log in plan.requests] == [other.run_key] and plan.waiting == [early]
    assert plan.cursor.watermark_ns <= early.ctime_ns
    later = plan_requests([early, other], plan.cursor, first_day=FIRST, last_day=early.day, scan_started_ns=LATER_NS)
    assert [log.run_key for log in later.requests] == [early.run_key]
