"""Where a day's logs are: the flat layout, one directory per sensor, both at once, and hostile names
(`..`, hidden directories, a symlink out of COWRIE_LOG_DIR, a 10 kB name, a newline in the `sensor` field)."""

from __future__ import annotations

import datetime
import shutil

import pytest

from enrichment_pipeline.core.cowrie_log import read_day_log
from enrichment_pipeline.core.log_layout import (
    DEFAULT_SENSOR,
    MAX_SENSOR_CHARS,
    CowrieLogNotFound,
    day_files,
    sensor_directories,
    sensor_name,
)
from enrichment_pipeline_tests.support.synthetic_days import event, write_day

DAY = datetime.date(2018, 5, 7)
NOON = datetime.datetime(2018, 5, 7, 12, tzinfo=datetime.UTC)


def test_the_flat_layout_is_one_file_whose_events_name_their_sensor(tmp_path, sample_log_dir):
    shutil.copy(sample_log_dir / f"cowrie.json.{DAY}", tmp_path)
    files = day_files(tmp_path, DAY)
    assert [(log.path.name, log.sensor) for log in files.logs] == [(f"cowrie.json.{DAY}", None)]
    assert files.missing_sensors == [] and files.rejected_names == []


def test_each_sensor_directory_is_a_sensor_and_one_without_the_day_is_reported_not_an_error(tmp_path, sample_log_dir):
    for sensor in ("alpha", "beta"):
        (tmp_path / sensor).mkdir()
        shutil.copy(sample_log_dir / f"cowrie.json.{DAY}", tmp_path / sensor)
    (tmp_path / "gamma").mkdir()  # no log of that day
    files = day_files(tmp_path, DAY)
    assert sorted((log.sensor, log.path.parent.name) for log in files.logs) == [("alpha", "alpha"), ("beta", "beta")]
    assert files.missing_sensors == ["gamma"]


def test_a_day_no_sensor_has_fails_naming_the_directory_and_the_file(tmp_path):
    (tmp_path / "alpha").mkdir()
    with pytest.raises(CowrieLogNotFound) as raised:
        day_files(tmp_path, DAY)
    assert str(tmp_path) in str(raised.value) and f"cowrie.json.{DAY}" in str(raised.value)
    assert "COWRIE_LOG_DIR" in str(raised.value)


def test_hostile_directory_names_and_symlinks_out_of_the_log_dir_are_never_read(tmp_path, sample_log_dir):
    root = tmp_path / "logs"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(sample_log_dir / f"cowrie.json.{DAY}", outside)
    root.mkdir()
    (root / ".hidden").mkdir()
    shutil.copy(sample_log_dir / f"cowrie.json.{DAY}", root / ".hidden")
    (root / "escape").symlink_to(outside, target_is_directory=True)  # a sensor pointing out of the log dir
    (root / "good").mkdir()
    (root / "good" / f"cowrie.json.{DAY}").symlink_to(outside / f"cowrie.json.{DAY}")  # a file pointing out
    long_name = "x" * 200  # the filesystem's limit is 255 bytes; a 10 kB name cannot exist on disk
    (root / long_name).mkdir()
    (root / "new\nline").mkdir()
    (root / "inside").symlink_to(root / "good", target_is_directory=True)  # stays inside: accepted
    (root / "loop").symlink_to(root / "loop")  # a symlink loop is refused, not a crash
    sensors, rejected = sensor_directories(root)
    assert [name for name, _ in sensors] == ["good", "inside"]
    assert len(rejected) == 5 and all(len(name) <= MAX_SENSOR_CHARS + 1 for name in rejected)
    assert all("\n" not in name for name in rejected)
    with pytest.raises(CowrieLogNotFound):
        day_files(root, DAY)  # the only files of the day are outside, or hidden


def test_a_sensor_field_is_bounded_text_whatever_the_event_says():
    assert sensor_name("honeypot-1") == "honeypot-1"
    assert sensor_name("evil\nname\x1b[31m") == "evil?name?[31m"
    assert sensor_name("a" * 10_000) == "a" * MAX_SENSOR_CHARS
    assert sensor_name(None) == sensor_name("") == sensor_name(["x"]) == sensor_name(7) == DEFAULT_SENSOR
    assert sensor_name("'; DROP TABLE ip_inventory; --") == "'; DROP TABLE ip_inventory; --"  # data, not SQL


def test_a_flat_log_written_by_two_sensors_counts_each_ip_per_sensor_and_once_in_total(tmp_path):
    lines = [
        event("198.51.100.1", "a1", NOON, sensor="alpha"),
        event("198.51.100.1", "b1", NOON + datetime.timedelta(hours=1), sensor="beta"),
        event("198.51.100.2", "b2", NOON, sensor="beta\nfake-line"),
        event("198.51.100.3", "c1", NOON, sensor=None),
        event("198.51.100.3", "c2", NOON, sensor=["not", "text"]),
    ]
    day_log = read_day_log(write_day(tmp_path, DAY, lines))
    assert sorted(day_log.by_sensor) == sorted([DEFAULT_SENSOR, "alpha", "beta", "beta?fake-line"])
    both = {row.ip: row for row in day_log.sources}["198.51.100.1"]
    assert (both.session_count, both.event_count) == (2, 2)
    assert (both.first_seen, both.last_seen) == (NOON, NOON + datetime.timedelta(hours=1))
    assert [row.session_count for row in day_log.by_sensor[DEFAULT_SENSOR]] == [2]
    assert len(day_log.sources) == 3


def test_a_log_of_one_sensor_directory_is_that_sensor_whatever_its_events_say(tmp_path):
    day_log = read_day_log(write_day(tmp_path, DAY, [event("198.51.100.1", "a", NOON)]), sensor="alpha")
    assert list(day_log.by_sensor) == ["alpha"]  # the events say "honeypot-1": the directory decides
