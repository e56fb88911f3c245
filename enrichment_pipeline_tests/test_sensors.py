"""The Cowrie log sensor on real temporary log directories: what it requests (one run for a single new day,
one backfill for several), what it never requests, and that its cursor stays small and loses nothing (the
scan planner is also driven with synthetic file stats); the same with one directory per sensor (a day once
however many sensors hold it, a late sensor file, hostile directory names)."""

import gzip
import json
import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from dagster import (
    AssetSelection,
    DefaultSensorStatus,
    RunRequest,
    build_sensor_context,
    define_asset_job,
)

import enrichment_pipeline.sensors as sensors_module
from enrichment_pipeline.definitions import defs, enrich_day_job
from enrichment_pipeline.resources import CowrieLogDirectory
from enrichment_pipeline.sensors import (
    GRACE_NS,
    INTERVAL_ENV,
    MAX_DAYS,
    SENSOR_NAME,
    SETTLE_NS,
    LogCursor,
    RotatedLog,
    build_log_sensor,
    plan_requests,
    scan_rotated_logs,
    target_asset_keys,
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
    """Evaluates the project's sensor as the code server does for the daemon (`evaluate_tick`, which also
    validates and resolves the requests), carrying the cursor from tick to tick."""

    def __init__(self, log_dir: Path, cursor: str | None = None) -> None:
        self.definition = defs.resolve_sensor_def(SENSOR_NAME)
        self.log_dir = log_dir
        self.cursor = cursor
        self.run_requests: list[RunRequest] = []

    def tick(self) -> list[tuple[str, str | None]]:
        """(partition key, run key) of every run requested by one evaluation; a backfill gives (day, None)
        for each of its days (the same days for every asset of the job, or this fails)."""
        context = build_sensor_context(
            cursor=self.cursor,
            resources={"cowrie_logs": CowrieLogDirectory(log_dir=str(self.log_dir))},
            repository_def=REPOSITORY,
        )
        result = self.definition.evaluate_tick(context)
        self.cursor = result.cursor or self.cursor
        self.skip_message = result.skip_message
        self.run_requests = list(result.run_requests or [])
        requested: list[tuple[str, str | None]] = []
        for request in self.run_requests:
            if request.requires_backfill_daemon():
                requested += [(day, None) for day in backfill_days(request)]
            else:
                requested.append((request.partition_key, request.run_key))
        return requested


REPOSITORY = defs.get_repository_def()
JOB_ASSETS = {key.to_user_string() for key in enrich_day_job.selection.resolve(REPOSITORY.asset_graph)}


def backfill_days(request: RunRequest) -> list[str]:
    """The days of a backfill request, checked to be the same for every asset of `enrich_day` and only those."""
    subset = request.asset_graph_subset
    assert subset is not None and not subset.non_partitioned_asset_keys
    days = {
        key.to_user_string(): sorted(part.get_partition_keys())
        for key, part in subset.partitions_subsets_by_asset_key.items()
    }
    assert set(days) == JOB_ASSETS
    (only,) = {tuple(keys) for keys in days.values()}
    return list(only)


def version_key(path: Path, day: str) -> str:
    stat = path.stat()
    return f"{day}:{stat.st_size}:{stat.st_mtime_ns}"


def sensor_dir(log_dir: Path, name: str) -> Path:
    """One sensor's directory under COWRIE_LOG_DIR (`<dir>/<sensor>/cowrie.json.YYYY-MM-DD[.gz]`)."""
    directory = log_dir / name
    directory.mkdir(exist_ok=True)
    return directory


def test_each_rotated_day_is_requested_once_and_a_repeat_evaluation_requests_nothing(tmp_path):
    plain = write_log(tmp_path, "cowrie.json.2018-05-06")
    gzipped = write_log(tmp_path, "cowrie.json.2018-05-07.gz")
    sensor = Sensor(tmp_path)

    assert sensor.tick() == [("2018-05-06", None), ("2018-05-07", None)]  # two days: one backfill
    # No run key on a backfill: the cursor keeps both file versions, so neither is requested again.
    edge = LogCursor.from_json(sensor.cursor).edge
    assert {version_key(plain, "2018-05-06"), version_key(gzipped, "2018-05-07")} <= edge
    assert sensor.tick() == []
    assert sensor.tick() == []
    assert len(sensor.cursor) < 400


def test_a_bulk_drop_of_ten_days_is_one_backfill_of_exactly_those_days_for_every_asset_of_the_job(tmp_path):
    days = [(date(2018, 5, 6) + timedelta(days=n)).isoformat() for n in range(10)]
    for n, day in enumerate(days):
        write_log(tmp_path, f"cowrie.json.{day}" + (".gz" if n % 2 else ""))
    write_log(tmp_path, "cowrie.json.2018-06-01", mtime_ns=None)  # still being copied: not in it
    sensor = Sensor(tmp_path)

    assert sensor.tick() == [(day, None) for day in days]
    (backfill,) = sensor.run_requests  # one request, no per-day runs
    assert backfill.requires_backfill_daemon()
    assert backfill.run_key is None and backfill.partition_key is None
    assert {"merged_inventory", "daily_report", "cowrie_source_ips", "cymru_bulk_results"} <= JOB_ASSETS
    assert (
        backfill.tags.items()
        >= {
            "enrichment/trigger": SENSOR_NAME,
            "enrichment/backfill_days": "10",
            "enrichment/day_range": "2018-05-06..2018-05-15",
            "dagster/sensor_name": SENSOR_NAME,
        }.items()
    )

    os.utime(tmp_path / "cowrie.json.2018-06-01", ns=(AN_HOUR_AGO_NS, AN_HOUR_AGO_NS))  # the copy finished
    assert [day for day, _ in sensor.tick()] == ["2018-06-01"]  # one day: a run


def test_a_repeat_evaluation_with_the_cursor_after_a_backfill_requests_nothing(tmp_path):
    for n in range(10):
        write_log(tmp_path, f"cowrie.json.{(date(2018, 5, 6) + timedelta(days=n)).isoformat()}")
    first = Sensor(tmp_path)
    assert len(first.tick()) == 10
    assert [request.requires_backfill_daemon() for request in first.run_requests] == [True]

    # The daemon stores the cursor and evaluates again, in a new process as far as the sensor knows.
    again = Sensor(tmp_path, cursor=first.cursor)
    assert again.tick() == [] and again.run_requests == []
    assert again.tick() == []
    assert len(again.cursor) < 1_000


def test_a_single_new_day_is_still_one_run_with_its_run_key(tmp_path):
    for n in range(3):
        write_log(tmp_path, f"cowrie.json.2018-05-0{n + 1}")
    sensor = Sensor(tmp_path)
    assert len(sensor.tick()) == 3
    assert [request.requires_backfill_daemon() for request in sensor.run_requests] == [True]

    single = write_log(tmp_path, "cowrie.json.2018-05-09.gz")
    assert sensor.tick() == [("2018-05-09", version_key(single, "2018-05-09"))]
    (run,) = sensor.run_requests
    assert not run.requires_backfill_daemon()
    assert (
        run.tags.items()
        >= {
            "enrichment/trigger": SENSOR_NAME,
            "cowrie/log_file": "cowrie.json.2018-05-09.gz",
            "dagster/partition": "2018-05-09",
        }.items()
    )
    # The job's assets and all their checks (as the implicit asset job: an asset-selection sensor's runs are).
    assert {key.to_user_string() for key in run.asset_selection} == JOB_ASSETS
    assert set(run.asset_check_keys) == enrich_day_job.selection.resolve_checks(REPOSITORY.asset_graph)
    assert sensor.tick() == []


def test_a_drop_larger_than_the_cap_is_one_backfill_per_evaluation_and_each_day_once(tmp_path):
    days = [(date(2018, 5, 1) + timedelta(days=n)).isoformat() for n in range(MAX_DAYS + 40)]
    for day in days:
        write_log(tmp_path, f"cowrie.json.{day}")
    sensor = Sensor(tmp_path)
    batches = []
    for _ in range(3):
        batches.append([day for day, _ in sensor.tick()])
        assert len(sensor.run_requests) <= 1
    assert [len(batch) for batch in batches] == [MAX_DAYS, 40, 0]
    assert sorted(batches[0] + batches[1]) == days
    # Fresh ctimes (a copy just now): the edge holds every key requested until the watermark passes them.
    assert len(sensor.cursor) < 50 * (MAX_DAYS + 40)


def test_a_backfill_runs_exactly_the_checks_of_the_job():
    graph = REPOSITORY.asset_graph
    keys = target_asset_keys(enrich_day_job, graph)
    assert {key.to_user_string() for key in keys} == JOB_ASSETS
    # A backfill runs every check on its assets: the job selects exactly those, the per-day checks among them.
    assert enrich_day_job.selection.resolve_checks(graph) == graph.get_check_keys_for_assets(keys)
    assert {check.name for check in graph.get_check_keys_for_assets(keys)} >= {
        "every_ingested_ip_in_inventory",
        "asn_coverage",
        "no_failed_cymru_batches",
        "no_failed_greynoise_lookups",
    }

    without_a_check = define_asset_job(
        "without_a_check", selection=enrich_day_job.selection - AssetSelection.checks_for_assets("merged_inventory")
    )
    with pytest.raises(ValueError, match="every_ingested_ip_in_inventory"):
        target_asset_keys(without_a_check, graph)


def test_a_hand_built_context_without_the_repository_is_refused_with_a_hint(tmp_path):
    write_log(tmp_path, "cowrie.json.2018-05-06")
    context = build_sensor_context(resources={"cowrie_logs": CowrieLogDirectory(log_dir=str(tmp_path))})
    with pytest.raises(ValueError, match="asset graph"):
        defs.resolve_sensor_def(SENSOR_NAME)(context)


def test_the_sensor_targets_the_assets_of_the_daily_job_and_runs_by_default():
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    # The job's selection (Dagster takes backfill requests only from an asset-selection sensor).
    graph = REPOSITORY.asset_graph
    assert sensor.asset_selection.resolve(graph) == enrich_day_job.selection.resolve(graph)
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 60


def test_a_grown_or_replaced_file_is_requested_again_for_its_day_only(tmp_path):
    grown = write_log(tmp_path, "cowrie.json.2018-05-06")
    write_log(tmp_path, "cowrie.json.2018-05-07")
    sensor = Sensor(tmp_path)
    assert len(sensor.tick()) == 2  # one backfill of both days

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


# --- one directory per sensor ---------------------------------------------------------------------------------
def test_each_sensor_directory_is_watched_and_a_day_several_sensors_hold_is_requested_once(tmp_path):
    for sensor in ("alpha", "beta"):
        for day in ("2018-05-06", "2018-05-07"):
            write_log(sensor_dir(tmp_path, sensor), f"cowrie.json.{day}")
    write_log(sensor_dir(tmp_path, "beta"), "cowrie.json.2018-05-07.gz")  # per directory the plain file wins
    write_log(tmp_path, "cowrie.json.2018-05-07.gz")  # the flat layout next to them, the same day
    sensor = Sensor(tmp_path)
    assert sensor.tick() == [("2018-05-06", None), ("2018-05-07", None)]  # five files, one backfill, each day once
    assert sorted(log.shown for log in scan_rotated_logs(tmp_path)) == [
        "alpha/cowrie.json.2018-05-06",
        "alpha/cowrie.json.2018-05-07",
        "beta/cowrie.json.2018-05-06",
        "beta/cowrie.json.2018-05-07",
        "cowrie.json.2018-05-07.gz",
    ]
    assert [request.requires_backfill_daemon() for request in sensor.run_requests] == [True]
    assert sensor.tick() == []
    cursor = LogCursor.from_json(sensor.cursor)
    assert len(cursor.edge) <= 2 and cursor.sensors == {"alpha", "beta"}  # a key per day, not per file

    # A new day two sensors' files make: one run, its run key naming the versions of both files.
    for sensor_name in ("alpha", "beta"):
        write_log(tmp_path / sensor_name, "cowrie.json.2018-05-09")
    ((day, key),) = sensor.tick()
    assert day == "2018-05-09" and key is not None and key.startswith("2018-05-09#2:")
    assert sensor.run_requests[0].tags["cowrie/log_file"] == (
        "alpha/cowrie.json.2018-05-09, beta/cowrie.json.2018-05-09"
    )
    assert sensor.tick() == []

    # A day one sensor holds: that file's key, with its sensor.
    single = write_log(tmp_path / "alpha", "cowrie.json.2018-05-10.gz")
    assert sensor.tick() == [("2018-05-10", "alpha/" + version_key(single, "2018-05-10"))]
    assert sensor.tick() == []


def test_a_late_sensor_file_requests_its_day_again_and_then_nothing(tmp_path):
    day = "2018-05-08"
    for sensor_name in ("alpha", "beta"):
        write_log(sensor_dir(tmp_path, sensor_name), f"cowrie.json.{day}")
    sensor = Sensor(tmp_path)
    ((first, first_key),) = sensor.tick()
    assert first == day
    assert sensor.tick() == []

    # gamma's file of that day arrives after it ran (mtime settled, ctime new): the day again, once.
    write_log(sensor_dir(tmp_path, "gamma"), f"cowrie.json.{day}")
    ((again, key),) = sensor.tick()
    assert again == day and key not in {first_key, None}  # a new run key: Dagster does not skip it
    assert f"gamma/cowrie.json.{day}" in sensor.run_requests[0].tags["cowrie/log_file"]
    assert sensor.tick() == []

    # The same for a late file in a directory already watched.
    write_log(tmp_path / "alpha", "cowrie.json.2018-05-09")
    assert [d for d, _ in sensor.tick()] == ["2018-05-09"]
    write_log(tmp_path / "beta", "cowrie.json.2018-05-09")
    assert [d for d, _ in sensor.tick()] == ["2018-05-09"]
    assert sensor.tick() == []


def test_a_day_waits_whole_while_one_sensors_file_of_it_is_still_being_copied(tmp_path):
    write_log(sensor_dir(tmp_path, "alpha"), "cowrie.json.2018-05-06")
    copying = write_log(sensor_dir(tmp_path, "beta"), "cowrie.json.2018-05-06", mtime_ns=None)
    sensor = Sensor(tmp_path)
    assert sensor.tick() == []  # not alpha's now and the day again for beta's
    assert "beta/cowrie.json.2018-05-06" in sensor.skip_message

    os.utime(copying, ns=(AN_HOUR_AGO_NS, AN_HOUR_AGO_NS))  # the copy finished
    ((day, key),) = sensor.tick()
    assert day == "2018-05-06" and key is not None and key.startswith("2018-05-06#2:")
    assert sensor.tick() == []


def test_hostile_directory_names_are_never_scanned_and_are_reported_escaped_and_bounded(tmp_path):
    root, outside = tmp_path / "logs", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    write_log(outside, "cowrie.json.2018-05-06")
    write_log(outside, "cowrie.json.2018-05-08")
    for name in (".hidden", "x" * 200, "new\nline"):  # `..` cannot be a directory entry
        write_log(sensor_dir(root, name), "cowrie.json.2018-05-06")
    (root / "escape").symlink_to(outside, target_is_directory=True)  # a sensor pointing out of COWRIE_LOG_DIR
    good = sensor_dir(root, "good")
    (good / "cowrie.json.2018-05-06").symlink_to(outside / "cowrie.json.2018-05-06")  # a log pointing out
    (good / "cowrie.json.2018-05-08").symlink_to(good / "cowrie.json.2018-05-08")  # a loop: no file
    write_log(sensor_dir(good, "nested"), "cowrie.json.2018-05-06")  # two levels down: never looked at
    kept = write_log(good, "cowrie.json.2018-05-07")

    sensor = Sensor(root)
    assert sensor.tick() == [("2018-05-07", "good/" + version_key(kept, "2018-05-07"))]
    assert [log.shown for log in scan_rotated_logs(root)] == ["good/cowrie.json.2018-05-07"]
    assert sensor.tick() == []  # the evaluation succeeds, and says what it refused
    message = sensor.skip_message
    assert "\n" not in message and len(message) < 600
    for shown in (".hidden", "escape", "new?line", "x" * 64 + "…", "good/cowrie.json.2018-05-06"):
        assert shown in message
    assert "x" * 65 not in message


def test_a_symlink_loop_in_the_log_dir_is_a_refused_name_and_the_other_sensors_are_still_requested(tmp_path):
    # log_layout.sensor_directories refuses the loop (as the ingest does) instead of failing the listing.
    write_log(sensor_dir(tmp_path, "alpha"), "cowrie.json.2018-05-06")
    loop = tmp_path / "loop\nname"
    loop.symlink_to(loop)
    sensor = Sensor(tmp_path)
    assert [day for day, _ in sensor.tick()] == ["2018-05-06"]
    assert sensor.tick() == []
    assert "\n" not in (sensor.skip_message or "")


def test_a_sensor_directory_renamed_into_place_is_requested_though_its_files_kept_their_old_ctimes(
    tmp_path, monkeypatch
):
    # Evaluations an hour after the copies, so the watermark passes every file it has seen.
    monkeypatch.setattr(sensors_module, "time", SimpleNamespace(time_ns=lambda: time.time_ns() + 3600 * 10**9))
    staged = write_log(sensor_dir(tmp_path, ".incoming"), "cowrie.json.2018-05-06")  # rsync into a hidden dir
    linked = write_log(sensor_dir(tmp_path, ".archive"), "cowrie.json.2018-05-08")
    time.sleep(0.05)
    write_log(sensor_dir(tmp_path, "alpha"), "cowrie.json.2018-05-07")
    sensor = Sensor(tmp_path)
    assert [day for day, _ in sensor.tick()] == ["2018-05-07"]
    watermark = LogCursor.from_json(sensor.cursor).watermark_ns
    assert watermark > max(staged.stat().st_ctime_ns, linked.stat().st_ctime_ns)

    (tmp_path / ".incoming").rename(tmp_path / "gamma")  # then moved into place: its files keep their ctime
    assert (tmp_path / "gamma" / staged.name).stat().st_ctime_ns < watermark
    assert [day for day, _ in sensor.tick()] == ["2018-05-06"]
    assert sensor.tick() == []
    (tmp_path / "delta").symlink_to(tmp_path / ".archive", target_is_directory=True)  # a new link, inside
    assert [day for day, _ in sensor.tick()] == ["2018-05-08"]
    assert sensor.tick() == []
    assert LogCursor.from_json(sensor.cursor).sensors == {"alpha", "delta", "gamma"}


def test_a_cursor_from_before_adopts_the_sensor_directories_present(tmp_path):
    write_log(sensor_dir(tmp_path, "alpha"), "cowrie.json.2018-05-06")
    behind = time.time_ns() + 3600 * 10**9  # every file is older than this watermark
    before = json.dumps({"v": 1, "ctime_ns": behind, "edge": []})  # written before sensors were watched
    assert Sensor(tmp_path, cursor=before).tick() == []  # an upgrade requests nothing old again
    knows_none = json.dumps({"v": 1, "ctime_ns": behind, "edge": [], "sensors": []})
    assert [day for day, _ in Sensor(tmp_path, cursor=knows_none).tick()] == ["2018-05-06"]
    for junk in ('"alpha"', "[1]", "{}"):  # an unreadable `sensors` starts over, like any unreadable cursor
        cursor = f'{{"v": 1, "ctime_ns": {behind}, "edge": [], "sensors": {junk}}}'
        assert len(Sensor(tmp_path, cursor=cursor).tick()) == 1


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
        assert len(plan.requests) <= MAX_DAYS
        requested += [log.run_key for log in plan.requests]


def test_thousands_of_files_are_requested_in_bounded_batches_each_exactly_once_and_the_cursor_stays_small():
    # Many identical ctimes (a coarse-timestamp filesystem, a bulk copy): ties must neither loop nor be lost.
    logs = [synthetic(n, 10**18 + (n // 700) * 10**9) for n in range(2_500)]
    requested, cursor, evaluations = drain(logs, LogCursor())
    assert sorted(requested) == sorted(log.run_key for log in logs)
    assert evaluations == 2_500 // MAX_DAYS + 1 + 1  # the last, partial batch, then the one finding nothing

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


def test_the_cursor_keeps_one_key_per_day_however_many_sensors_wrote_it():
    days = [FIRST + timedelta(days=n) for n in range(30)]
    logs = [
        RotatedLog(day, f"cowrie.json.{day.isoformat()}", 100 + s, 10**18 - 10**9, 10**18, f"sensor-{s:02}")
        for s in range(50)
        for day in days
    ]  # 1,500 files, every ctime tied at the newest (one bulk copy on a coarse-timestamp filesystem)
    plan = plan_requests(logs, LogCursor(), first_day=FIRST, last_day=LAST, scan_started_ns=LATER_NS)
    assert sorted(request.day for request in plan.requests) == days
    assert all(len(request.logs) == 50 for request in plan.requests)
    assert plan.cursor.watermark_ns == 10**18 and len(plan.cursor.edge) == 30
    assert len(plan.cursor.to_json()) < 30 * 40 + 50 * 15
    again = plan_requests(logs, plan.cursor, first_day=FIRST, last_day=LAST, scan_started_ns=LATER_NS)
    assert again.requests == [] and again.cursor == plan.cursor

    grown = RotatedLog(days[4], logs[4].name, 999, 10**18, 10**18 + 1, "sensor-00")
    changed = [grown if log == logs[4] else log for log in logs]
    plan = plan_requests(changed, again.cursor, first_day=FIRST, last_day=LAST, scan_started_ns=LATER_NS)
    assert [request.day for request in plan.requests] == [days[4]]
    assert grown in plan.requests[0].changed and plan.requests[0].run_key not in again.cursor.edge
