"""Tests for the streaming Cowrie log reader: real files in tmp_path, plain and gzipped, good and hostile.
Every expected value is computed independently (stdlib json) or written out by hand."""

from __future__ import annotations

import datetime
import gzip
import json
import os
import pathlib
import shutil

import pytest

from enrichment_pipeline.core.cowrie_log import (
    CowrieLogError,
    CowrieLogNotFound,
    DayLog,
    SourceIpActivity,
    day_log_path,
    read_day_log,
)

# The real days in shared/ beside the repository (CI lays a copy of it there too).
SAMPLE_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "cowrie"
SAMPLE_DAY = datetime.date(2018, 5, 9)
DAY = datetime.date(2018, 5, 7)
UTC = datetime.UTC


def event(
    src_ip: object = "1.2.3.4",
    session: object = "s1",
    timestamp: object = "2018-05-07T10:00:00.000000Z",
    **extra: object,
) -> dict[str, object]:
    fields: dict[str, object] = {
        "eventid": "cowrie.session.connect",
        "src_ip": src_ip,
        "session": session,
        "timestamp": timestamp,
        **extra,
    }
    return {key: value for key, value in fields.items() if value is not _ABSENT}


_ABSENT = object()


def line(fields: dict[str, object]) -> bytes:
    return json.dumps(fields).encode() + b"\n"


def write_log(directory: pathlib.Path, content: bytes, name: str = "cowrie.json.2018-05-07") -> pathlib.Path:
    path = directory / name
    if name.endswith(".gz"):
        with gzip.open(path, "wb") as target:
            target.write(content)
    else:
        path.write_bytes(content)
    return path


def by_ip(day_log: DayLog) -> dict[str, SourceIpActivity]:
    return {source.ip: source for source in day_log.sources}


def utc(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).astimezone(UTC)


def expected_from_stdlib(path: pathlib.Path) -> dict[str, tuple[int, int, datetime.datetime, datetime.datetime]]:
    """Independent summary of a clean log: ip -> (sessions, events, first, last)."""
    sessions: dict[str, set[str]] = {}
    events: dict[str, int] = {}
    moments: dict[str, list[datetime.datetime]] = {}
    with open(path, encoding="utf-8") as source:
        for text in source:
            record = json.loads(text)
            ip = record["src_ip"]
            sessions.setdefault(ip, set()).add(record["session"])
            events[ip] = events.get(ip, 0) + 1
            moments.setdefault(ip, []).append(utc(record["timestamp"]))
    return {ip: (len(sessions[ip]), events[ip], min(moments[ip]), max(moments[ip])) for ip in events}


# --- finding the day's file -------------------------------------------------------------------------


def test_day_log_path_finds_plain_file(tmp_path: pathlib.Path) -> None:
    plain = write_log(tmp_path, b"")
    assert day_log_path(tmp_path, DAY) == plain


def test_day_log_path_falls_back_to_gzipped_copy(tmp_path: pathlib.Path) -> None:
    gzipped = write_log(tmp_path, b"", "cowrie.json.2018-05-07.gz")
    assert day_log_path(str(tmp_path), DAY) == gzipped


def test_day_log_path_prefers_plain_file_when_both_exist_and_reader_uses_it(tmp_path: pathlib.Path) -> None:
    write_log(tmp_path, line(event(src_ip="9.9.9.9")), "cowrie.json.2018-05-07.gz")
    plain = write_log(tmp_path, line(event(src_ip="1.1.1.1")))
    path = day_log_path(tmp_path, DAY)
    assert path == plain
    assert [source.ip for source in read_day_log(path).sources] == ["1.1.1.1"]


def test_day_log_path_ignores_other_days(tmp_path: pathlib.Path) -> None:
    write_log(tmp_path, b"", "cowrie.json.2018-05-06")
    write_log(tmp_path, b"", "cowrie.json")
    with pytest.raises(CowrieLogNotFound):
        day_log_path(tmp_path, DAY)


def test_missing_day_message_names_both_paths_and_the_env_var(tmp_path: pathlib.Path) -> None:
    with pytest.raises(CowrieLogNotFound) as raised:
        day_log_path(tmp_path / "nowhere", DAY)
    message = str(raised.value)
    assert str(tmp_path / "nowhere" / "cowrie.json.2018-05-07") in message
    assert str(tmp_path / "nowhere" / "cowrie.json.2018-05-07.gz") in message
    assert "COWRIE_LOG_DIR" in message
    assert isinstance(raised.value, CowrieLogError)


def test_reading_a_missing_file_raises_not_found_naming_path_and_env_var(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "cowrie.json.2018-05-07"
    with pytest.raises(CowrieLogNotFound) as raised:
        read_day_log(missing)
    assert str(missing) in str(raised.value)
    assert "COWRIE_LOG_DIR" in str(raised.value)


# --- good files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_real_sample_day_matches_an_independent_stdlib_summary(tmp_path: pathlib.Path, compress: bool) -> None:
    original = SAMPLE_DIR / f"cowrie.json.{SAMPLE_DAY.isoformat()}"
    copy = tmp_path / original.name
    shutil.copyfile(original, copy)
    expected = expected_from_stdlib(copy)
    line_count = copy.read_bytes().count(b"\n")
    if compress:
        write_log(tmp_path, copy.read_bytes(), copy.name + ".gz")
        copy.unlink()

    day_log = read_day_log(day_log_path(tmp_path, SAMPLE_DAY))

    assert len(day_log.sources) == len(expected) == 35  # 35 distinct IPs on 2018-05-09, per stdlib json
    assert [source.ip for source in day_log.sources] == sorted(expected)
    for source in day_log.sources:
        sessions, events, first, last = expected[source.ip]
        assert (source.session_count, source.event_count) == (sessions, events)
        assert (source.first_seen, source.last_seen) == (first, last)
        assert source.first_seen.tzinfo is UTC  # type: ignore[union-attr]
    stats = day_log.stats
    assert stats.lines == stats.events == line_count == sum(value[1] for value in expected.values())
    assert stats.skipped_lines == stats.invalid_src_ip == stats.missing_src_ip == stats.bad_timestamp == 0
    assert stats.read_error is None and stats.samples == []
    assert stats.path.endswith(".gz") is compress


def test_gzip_is_detected_by_magic_bytes_without_the_suffix(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cowrie.json.2018-05-07"
    path.write_bytes(gzip.compress(line(event(src_ip="5.6.7.8"))))
    assert [source.ip for source in read_day_log(path).sources] == ["5.6.7.8"]


@pytest.mark.parametrize("name", ["cowrie.json.2018-05-07", "cowrie.json.2018-05-07.gz"])
def test_a_byte_order_mark_before_the_first_line_is_skipped_not_a_bad_line(tmp_path: pathlib.Path, name: str) -> None:
    content = b"\xef\xbb\xbf" + line(event(src_ip="5.6.7.8")) + line(event(src_ip="5.6.7.9"))
    day_log = read_day_log(write_log(tmp_path, content, name))
    assert [source.ip for source in day_log.sources] == ["5.6.7.8", "5.6.7.9"]
    assert (day_log.stats.lines, day_log.stats.events, day_log.stats.bad_json) == (2, 2, 0)


def test_a_byte_order_mark_later_in_the_file_is_not_skipped(tmp_path: pathlib.Path) -> None:
    content = line(event(src_ip="5.6.7.8")) + b"\xef\xbb\xbf" + line(event(src_ip="5.6.7.9"))
    day_log = read_day_log(write_log(tmp_path, content))
    assert [source.ip for source in day_log.sources] == ["5.6.7.8"]
    assert day_log.stats.bad_json == 1


def test_empty_file_gives_no_sources_and_no_error(tmp_path: pathlib.Path) -> None:
    for path in (write_log(tmp_path, b""), write_log(tmp_path, b"", "cowrie.json.2018-05-07.gz")):
        day_log = read_day_log(path)
        assert day_log.sources == []
        assert (day_log.stats.lines, day_log.stats.events, day_log.stats.read_error) == (0, 0, None)


def test_sessions_count_distinct_ids_not_events(tmp_path: pathlib.Path) -> None:
    content = b"".join(
        line(event(src_ip=ip, session=session))
        for ip, session in [
            ("1.1.1.1", "a"),
            ("1.1.1.1", "a"),
            ("1.1.1.1", "b"),
            ("2.2.2.2", "a"),
            ("1.1.1.1", "a"),
            ("1.1.1.1", "c"),
            ("2.2.2.2", "a"),
        ]
    )
    content += line(event(src_ip="1.1.1.1", session=_ABSENT))  # no session id: an event, not a session
    content += line(event(src_ip="3.3.3.3", session=_ABSENT))  # seen only without session ids
    content += line(event(src_ip="3.3.3.3", session=None))
    content += line(event(src_ip="3.3.3.3", session=12345))  # not a session id string
    sources = by_ip(read_day_log(write_log(tmp_path, content)))
    assert (sources["1.1.1.1"].session_count, sources["1.1.1.1"].event_count) == (3, 6)
    assert (sources["2.2.2.2"].session_count, sources["2.2.2.2"].event_count) == (1, 2)
    assert (sources["3.3.3.3"].session_count, sources["3.3.3.3"].event_count) == (0, 3)


def test_same_session_id_under_two_ips_counts_for_each(tmp_path: pathlib.Path) -> None:
    content = line(event(src_ip="1.1.1.1", session="x")) + line(event(src_ip="2.2.2.2", session="x"))
    sources = by_ip(read_day_log(write_log(tmp_path, content)))
    assert sources["1.1.1.1"].session_count == sources["2.2.2.2"].session_count == 1


def test_ipv4_mapped_ipv6_merges_with_its_ipv4_form(tmp_path: pathlib.Path) -> None:
    content = (
        line(event(src_ip="::ffff:203.0.113.7", session="a", timestamp="2018-05-07T01:00:00.000000Z"))
        + line(event(src_ip="203.0.113.7", session="b", timestamp="2018-05-07T02:00:00.000000Z"))
        + line(event(src_ip="::FFFF:203.0.113.7", session="a", timestamp="2018-05-07T03:00:00.000000Z"))
        + line(event(src_ip="2001:DB8:0:0::1", session="c"))
        + line(event(src_ip="2001:db8::1", session="c"))
    )
    day_log = read_day_log(write_log(tmp_path, content))
    assert [source.ip for source in day_log.sources] == ["2001:db8::1", "203.0.113.7"]
    merged = by_ip(day_log)["203.0.113.7"]
    assert (merged.session_count, merged.event_count) == (2, 3)
    assert (merged.first_seen, merged.last_seen) == (utc("2018-05-07T01:00:00Z"), utc("2018-05-07T03:00:00Z"))
    assert by_ip(day_log)["2001:db8::1"].event_count == 2


def test_first_and_last_seen_compare_mixed_offsets_in_utc(tmp_path: pathlib.Path) -> None:
    stamps = [
        "2018-05-07T10:00:00.000000Z",
        "2018-05-07T12:30:00+05:00",  # 07:30 UTC: the earliest although its text sorts late
        "2018-05-07T05:00:00-06:00",  # 11:00 UTC: the latest although its text sorts early
        "2018-05-07T10:30:00",  # naive: taken as UTC, like Cowrie's own timestamps
        "2018-05-07T09:00:00.5+00:00",
    ]
    content = b"".join(line(event(timestamp=stamp)) for stamp in stamps)
    day_log = read_day_log(write_log(tmp_path, content))
    source = by_ip(day_log)["1.2.3.4"]
    assert source.first_seen == datetime.datetime(2018, 5, 7, 7, 30, tzinfo=UTC)
    assert source.last_seen == datetime.datetime(2018, 5, 7, 11, 0, tzinfo=UTC)
    assert source.first_seen.utcoffset() == datetime.timedelta(0)  # type: ignore[union-attr]
    assert source.last_seen.tzinfo is UTC  # type: ignore[union-attr]
    assert day_log.stats.bad_timestamp == 0


def test_first_and_last_seen_follow_time_not_file_order(tmp_path: pathlib.Path) -> None:
    stamps = [
        "2018-05-07T10:00:00.000000Z",
        "2018-05-07T08:00:00.000000Z",
        "2018-05-07T12:00:00.000000Z",
        "2018-05-07T09:00:00.000000Z",
    ]
    content = b"".join(line(event(timestamp=stamp)) for stamp in stamps)
    source = read_day_log(write_log(tmp_path, content)).sources[0]
    assert (source.first_seen, source.last_seen) == (utc("2018-05-07T08:00:00Z"), utc("2018-05-07T12:00:00Z"))


def test_missing_or_garbled_timestamps_are_counted_but_the_ip_still_counts(tmp_path: pathlib.Path) -> None:
    content = b"".join(
        line(event(src_ip=ip, timestamp=stamp))
        for ip, stamp in [
            ("1.1.1.1", _ABSENT),
            ("1.1.1.1", "yesterday"),
            ("1.1.1.1", 1525687706),
            ("1.1.1.1", "2018-02-30T00:00:00.000000Z"),
            ("1.1.1.1", "2018-05-07T25:00:00.000000Z"),
            ("1.1.1.1", "2018-05-07T10:00:00.0000x0Z"),
            ("1.1.1.1", ["2018-05-07T10:00:00Z"]),
            ("2.2.2.2", "2018-05-07T10:00:00.000000Z"),
            ("2.2.2.2", None),
        ]
    )
    day_log = read_day_log(write_log(tmp_path, content))
    sources = by_ip(day_log)
    assert sources["1.1.1.1"].event_count == 7
    assert (sources["1.1.1.1"].first_seen, sources["1.1.1.1"].last_seen) == (None, None)
    assert sources["2.2.2.2"].first_seen == sources["2.2.2.2"].last_seen == utc("2018-05-07T10:00:00Z")
    assert day_log.stats.bad_timestamp == 8
    assert day_log.stats.events == 9


# --- bad lines and values -----------------------------------------------------------------------------


def test_truncated_last_line_is_counted_and_never_fatal(tmp_path: pathlib.Path) -> None:
    good = line(event(src_ip="1.1.1.1")) + line(event(src_ip="2.2.2.2"))
    partial = line(event(src_ip="3.3.3.3"))[:25]
    day_log = read_day_log(write_log(tmp_path, good + partial))
    stats = day_log.stats
    assert [source.ip for source in day_log.sources] == ["1.1.1.1", "2.2.2.2"]
    assert stats.truncated_last_line is True
    assert (stats.lines, stats.events, stats.bad_json, stats.skipped_lines) == (3, 2, 0, 1)
    assert any("truncated last line" in sample for sample in stats.samples)


def test_last_line_without_newline_that_parses_is_a_normal_event(tmp_path: pathlib.Path) -> None:
    content = line(event(src_ip="1.1.1.1")) + line(event(src_ip="2.2.2.2")).rstrip(b"\n")
    day_log = read_day_log(write_log(tmp_path, content, "cowrie.json.2018-05-07.gz"))
    assert [source.ip for source in day_log.sources] == ["1.1.1.1", "2.2.2.2"]
    assert day_log.stats.truncated_last_line is False
    assert (day_log.stats.lines, day_log.stats.events, day_log.stats.skipped_lines) == (2, 2, 0)


def test_non_json_lines_are_counted_skipped_and_sampled(tmp_path: pathlib.Path) -> None:
    junk = [
        b"not json at all\n",
        b"\n",
        b'{"src_ip": "6.6.6.6",\n',
        b"\x00\x01\x02\n",
        b"NaN-ish }{\n",
        b"   \n",
        b"[[[[[[[[[[\n",
    ]
    content = line(event(src_ip="1.1.1.1")) + b"".join(junk) + line(event(src_ip="2.2.2.2"))
    day_log = read_day_log(write_log(tmp_path, content))
    stats = day_log.stats
    assert [source.ip for source in day_log.sources] == ["1.1.1.1", "2.2.2.2"]
    assert (stats.lines, stats.events, stats.bad_json, stats.skipped_lines) == (9, 2, 7, 7)
    assert stats.truncated_last_line is False
    assert len(stats.samples) == 5
    assert stats.samples[0] == "line 2: not JSON: b'not json at all'"  # the line, without its newline
    assert all(len(sample) <= 120 and "\n" not in sample for sample in stats.samples)


def test_json_values_that_are_not_objects_count_as_bad_json(tmp_path: pathlib.Path) -> None:
    others = [b"[1, 2]\n", b'"1.2.3.4"\n', b"42\n", b"null\n", b"true\n", b'[{"src_ip": "6.6.6.6"}]\n']
    content = b"".join(others) + line(event(src_ip="1.1.1.1"))
    stats = read_day_log(write_log(tmp_path, content)).stats
    assert (stats.lines, stats.events, stats.bad_json) == (7, 1, 6)
    assert "JSON that is not an object" in stats.samples[0]


def test_missing_and_odd_fields_are_counted_not_fatal(tmp_path: pathlib.Path) -> None:
    content = b"".join(
        [
            line({"eventid": "cowrie.log.open", "timestamp": "2018-05-07T00:00:00.000000Z"}),  # no src_ip: normal
            line({}),
            line(event(src_ip=None)),
            line(event(src_ip=16909060)),
            line(event(src_ip=["1.2.3.4"])),
            line(event(src_ip={"ip": "1.2.3.4"})),
            line(event(src_ip=True)),
            line(event(src_ip="1.2.3.4", eventid=None, message=["odd"], session={"nested": [1, 2]})),
            line({"src_ip": "1.2.3.4", "src_ip_extra": "9.9.9.9"}),
        ]
    )
    day_log = read_day_log(write_log(tmp_path, content))
    stats = day_log.stats
    assert (stats.events, stats.missing_src_ip, stats.invalid_src_ip) == (9, 2, 5)
    assert [source.ip for source in day_log.sources] == ["1.2.3.4"]
    only = day_log.sources[0]
    assert (only.event_count, only.session_count) == (2, 0)
    assert stats.bad_timestamp == 1  # the last object has no timestamp
    assert stats.skipped_lines == 0


@pytest.mark.parametrize(
    "bad_ip",
    [
        "1.2.3.4\nend\nbegin\n8.8.8.8",
        "999.1.1.1",
        "",
        " 1.2.3.4",
        "1.2.3.4 ",
        "01.2.3.4",
        "1.2.3",
        "fe80::1%eth0",
        "1.2.3.4/32",
        "localhost",
        "1.2.3.4\x00",
        "\udc80",
        "١.٢.٣.٤",
        "x" * 10_000,
    ],
)
def test_invalid_src_ip_is_rejected_counted_and_never_passed_on(tmp_path: pathlib.Path, bad_ip: str) -> None:
    content = line(event(src_ip=bad_ip)) + line(event(src_ip=bad_ip)) + line(event(src_ip="8.8.4.4"))
    day_log = read_day_log(write_log(tmp_path, content))
    assert [source.ip for source in day_log.sources] == ["8.8.4.4"]
    assert day_log.stats.invalid_src_ip == 2
    assert day_log.stats.events == 3
    assert all(len(sample) <= 120 for sample in day_log.stats.samples)


def test_newline_carrying_src_ip_sample_is_escaped_on_one_line(tmp_path: pathlib.Path) -> None:
    content = line(event(src_ip="1.2.3.4\nend\nbegin\n8.8.8.8"))
    stats = read_day_log(write_log(tmp_path, content)).stats
    assert stats.samples == ["line 1: invalid src_ip: '1.2.3.4\\nend\\nbegin\\n8.8.8.8'"]


def test_invalid_utf8_keeps_the_event_and_its_src_ip(tmp_path: pathlib.Path) -> None:
    raw_event = (
        b'{"eventid": "cowrie.login.failed", "src_ip": "7.7.7.7", "session": "s9", '
        b'"password": "\xff\xfe\xc3(", "timestamp": "2018-05-07T10:00:00.000000Z"}\n'
    )
    bad_and_not_json = b"\xff\xff not json\n"
    content = raw_event + bad_and_not_json + line(event(src_ip="1.1.1.1"))
    day_log = read_day_log(write_log(tmp_path, content))
    stats = day_log.stats
    assert [source.ip for source in day_log.sources] == ["1.1.1.1", "7.7.7.7"]
    assert by_ip(day_log)["7.7.7.7"].session_count == 1
    assert (stats.invalid_utf8, stats.bad_json, stats.events) == (2, 1, 2)


def test_lone_surrogate_escapes_written_by_python_keep_the_event(tmp_path: pathlib.Path) -> None:
    content = json.dumps(event(src_ip="7.7.7.7", input="\udcff\udc80")).encode() + b"\n"
    day_log = read_day_log(write_log(tmp_path, content))
    assert [source.ip for source in day_log.sources] == ["7.7.7.7"]
    assert day_log.stats.skipped_lines == 0


def test_several_megabyte_line_under_the_limit_is_a_normal_event(tmp_path: pathlib.Path) -> None:
    huge = line(event(src_ip="4.4.4.4", input="A" * (5 * 1024 * 1024)))
    content = line(event(src_ip="1.1.1.1")) + huge + line(event(src_ip="2.2.2.2"))
    day_log = read_day_log(write_log(tmp_path, content))
    assert [source.ip for source in day_log.sources] == ["1.1.1.1", "2.2.2.2", "4.4.4.4"]
    assert (day_log.stats.lines, day_log.stats.oversized_lines) == (3, 0)


@pytest.mark.parametrize("name", ["cowrie.json.2018-05-07", "cowrie.json.2018-05-07.gz"])
def test_line_beyond_max_line_bytes_is_skipped_and_counted(tmp_path: pathlib.Path, name: str) -> None:
    oversized = line(event(src_ip="6.6.6.6", input="B" * 300_000))
    exactly_at_limit = line(event(src_ip="5.5.5.5", input="C" * 100))
    limit = len(exactly_at_limit) - 1  # the newline does not count
    content = line(event(src_ip="1.1.1.1")) + oversized + exactly_at_limit + oversized + line(event(src_ip="2.2.2.2"))
    day_log = read_day_log(write_log(tmp_path, content, name), max_line_bytes=limit)
    stats = day_log.stats
    assert [source.ip for source in day_log.sources] == ["1.1.1.1", "2.2.2.2", "5.5.5.5"]
    assert (stats.lines, stats.events, stats.oversized_lines, stats.skipped_lines) == (5, 3, 2, 2)
    assert stats.samples[0].startswith(f"line 2: line longer than {limit} bytes: b'{{")
    assert len(stats.samples[0]) <= 120


def test_oversized_unterminated_last_line_is_oversized_not_truncated(tmp_path: pathlib.Path) -> None:
    content = line(event(src_ip="1.1.1.1")) + b'{"src_ip": "6.6.6.6", "x": "' + b"D" * 5000
    stats = read_day_log(write_log(tmp_path, content), max_line_bytes=1000).stats
    assert (stats.lines, stats.events, stats.oversized_lines, stats.truncated_last_line) == (2, 1, 1, False)


def test_valid_json_padded_past_the_limit_is_still_oversized(tmp_path: pathlib.Path) -> None:
    content = line(event(src_ip="6.6.6.6")).rstrip(b"\n") + b" " * 4000 + b"\n" + line(event(src_ip="1.1.1.1"))
    day_log = read_day_log(write_log(tmp_path, content), max_line_bytes=1000)
    assert [source.ip for source in day_log.sources] == ["1.1.1.1"]
    assert (day_log.stats.oversized_lines, day_log.stats.bad_json) == (1, 0)


def test_max_line_bytes_must_be_positive(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="max_line_bytes"):
        read_day_log(write_log(tmp_path, b""), max_line_bytes=0)


def test_deeply_nested_json_is_skipped_not_a_crash(tmp_path: pathlib.Path) -> None:
    deep_ip = b'{"src_ip": ' + b"[" * 1000 + b"]" * 1000 + b', "session": ' + b"[" * 1000 + b"]" * 1000 + b"}\n"
    content = deep_ip + deep_ip + b"[" * 100_000 + b"\n" + line(event(src_ip="1.1.1.1"))
    day_log = read_day_log(write_log(tmp_path, content))
    assert [source.ip for source in day_log.sources] == ["1.1.1.1"]
    assert day_log.stats.lines == 4
    assert day_log.stats.invalid_src_ip + day_log.stats.bad_json == 3


# --- many blocks: the reader decodes whole blocks and falls back to lines only where it must --------


def all_sample_days() -> bytes:
    """The ten real days, one after the other: ~10k time-ordered lines, many read blocks."""
    return b"".join(path.read_bytes() for path in sorted(SAMPLE_DIR.glob("cowrie.json.2018-05-*")))


@pytest.mark.parametrize("name", ["cowrie.json.2018-05-07", "cowrie.json.2018-05-07.gz"])
def test_many_block_real_log_matches_an_independent_stdlib_summary(tmp_path: pathlib.Path, name: str) -> None:
    content = all_sample_days()
    expected = expected_from_stdlib(write_log(tmp_path, content, "clean.json"))
    assert len(content) > 8 * 65_536  # well past a single read block
    day_log = read_day_log(write_log(tmp_path, content, name))
    assert {s.ip: (s.session_count, s.event_count, s.first_seen, s.last_seen) for s in day_log.sources} == expected
    assert day_log.stats.lines == day_log.stats.events == content.count(b"\n")
    assert day_log.stats.samples == []


def test_bad_lines_anywhere_in_a_large_log_cost_only_themselves(tmp_path: pathlib.Path) -> None:
    clean = all_sample_days().splitlines(keepends=True)
    junk = [
        b"\n",
        b'{"src_ip": "6.6.6.6"} {"src_ip": "6.6.6.7"}\n',
        b"[1, 2]\n",
        b'{"src_ip": "6.6.6.8",\n',
        line(event(src_ip="1.2.3.400")),
        line(event(src_ip="6.6.6.9", timestamp="2018-05-07T10:00Z")),
    ]
    positions = [7, 2_000, 2_001, 5_003, 7_777, len(clean) - 3]
    lines = list(clean)
    for position, bad in sorted(zip(positions, junk, strict=False), reverse=True):
        lines.insert(position, bad)
    day_log = read_day_log(write_log(tmp_path, b"".join(lines)))

    expected = expected_from_stdlib(write_log(tmp_path, b"".join(clean), "clean.json"))
    by_source = {s.ip: (s.session_count, s.event_count, s.first_seen, s.last_seen) for s in day_log.sources}
    # msgspec rejects this timestamp (no seconds), so its block went line by line, where fromisoformat reads it.
    ten = utc("2018-05-07T10:00:00Z")
    assert by_source.pop("6.6.6.9") == (1, 1, ten, ten)
    assert by_source == expected
    stats = day_log.stats
    assert (stats.lines, stats.bad_json, stats.invalid_src_ip, stats.bad_timestamp) == (len(lines), 4, 1, 0)
    assert stats.events == len(clean) + 2
    # Line numbers stay right across blocks: the invalid IP was inserted as line 7,778 (1-based, after
    # four earlier insertions shifted it by four).
    assert "line 7782: invalid src_ip: '1.2.3.400'" in stats.samples


def test_two_json_values_on_one_line_are_one_bad_line_not_two_events(tmp_path: pathlib.Path) -> None:
    # A blank line elsewhere in the same block must not make the count of values look right.
    content = line(event(src_ip="1.1.1.1")) + b'{"src_ip": "6.6.6.6"} {"src_ip": "6.6.6.7"}\n' + b"\n"
    day_log = read_day_log(write_log(tmp_path, content))
    assert [source.ip for source in day_log.sources] == ["1.1.1.1"]
    assert (day_log.stats.lines, day_log.stats.events, day_log.stats.bad_json) == (3, 1, 2)


def test_invalid_utf8_in_an_unused_field_of_a_large_log_is_counted(tmp_path: pathlib.Path) -> None:
    lines = all_sample_days().splitlines(keepends=True)
    lines[5_000] = lines[5_000].replace(b'"session"', b'"password": "\xff\xfe", "session"', 1)
    day_log = read_day_log(write_log(tmp_path, b"".join(lines)))
    assert (day_log.stats.invalid_utf8, day_log.stats.events, day_log.stats.skipped_lines) == (1, len(lines), 0)


# --- unreadable and damaged files ---------------------------------------------------------------------


def test_gzip_truncated_halfway_keeps_what_was_read(tmp_path: pathlib.Path) -> None:
    original = (SAMPLE_DIR / f"cowrie.json.{SAMPLE_DAY.isoformat()}").read_bytes()
    compressed = gzip.compress(original)
    path = tmp_path / "cowrie.json.2018-05-09.gz"
    path.write_bytes(compressed[: len(compressed) // 2])

    day_log = read_day_log(path)

    stats = day_log.stats
    assert stats.read_error is not None and "after line" in stats.read_error
    total_lines = original.count(b"\n")
    assert 0 < stats.lines < total_lines
    assert stats.events == stats.lines  # every line handed over was whole
    kept_prefix = b"".join(original.splitlines(keepends=True)[: stats.lines])
    assert len(day_log.sources) == len({json.loads(text)["src_ip"] for text in kept_prefix.splitlines()})


def test_gzip_with_bytes_flipped_in_the_middle_keeps_earlier_lines(tmp_path: pathlib.Path) -> None:
    original = (SAMPLE_DIR / f"cowrie.json.{SAMPLE_DAY.isoformat()}").read_bytes()
    compressed = bytearray(gzip.compress(original))
    middle = len(compressed) // 2
    compressed[middle : middle + 64] = bytes(byte ^ 0xFF for byte in compressed[middle : middle + 64])
    path = tmp_path / "cowrie.json.2018-05-09.gz"
    path.write_bytes(bytes(compressed))

    day_log = read_day_log(path)

    assert day_log.stats.read_error is not None
    assert day_log.stats.lines > 0
    assert len(day_log.sources) > 0
    assert all(source.ip.count(".") == 3 or ":" in source.ip for source in day_log.sources)


def test_gzip_whose_header_is_garbage_raises_naming_the_path(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cowrie.json.2018-05-07.gz"
    path.write_bytes(b"this was never gzip\n" * 50)
    with pytest.raises(CowrieLogError) as raised:
        read_day_log(path)
    assert str(path) in str(raised.value)
    assert not isinstance(raised.value, CowrieLogNotFound)


def test_directory_instead_of_file_raises_naming_the_path(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cowrie.json.2018-05-07"
    path.mkdir()
    with pytest.raises(CowrieLogError) as raised:
        read_day_log(day_log_path(tmp_path, DAY))
    assert str(path) in str(raised.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file_raises_naming_the_path(tmp_path: pathlib.Path) -> None:
    path = write_log(tmp_path, line(event()))
    path.chmod(0)
    with pytest.raises(CowrieLogError) as raised:
        read_day_log(path)
    assert str(path) in str(raised.value)


def test_dangling_symlink_raises_naming_the_path(tmp_path: pathlib.Path) -> None:
    # Root ignores permission bits, so this proves the open-failure path even when tests run as root.
    path = tmp_path / "cowrie.json.2018-05-07"
    path.symlink_to(tmp_path / "gone")
    with pytest.raises(CowrieLogError) as raised:
        read_day_log(path)
    assert str(path) in str(raised.value)
