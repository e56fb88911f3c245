"""Tests for the per-IP activity tally: the bulk path for regular blocks must give exactly what the
event-by-event path gives, and every irregular block must fall back to it. Expected values come from an
independent reference written here with plain loops."""

from __future__ import annotations

import datetime
import ipaddress
import random

import msgspec
import pytest

from enrichment_pipeline.core.activity import ActivityTally, Event, SourceIpActivity

UTC = datetime.UTC
START = datetime.datetime(2018, 5, 7, tzinfo=UTC)


def moment(seconds: float) -> datetime.datetime:
    return START + datetime.timedelta(seconds=seconds)


def reference(events: list[Event]) -> tuple[list[SourceIpActivity], tuple[int, int, int]]:
    """The counting rules, one event at a time: (activity per IP, (without_ip, invalid_ip, bad_timestamps))."""
    counts: dict[str, int] = {}
    sessions: dict[str, set[str]] = {}
    moments: dict[str, list[datetime.datetime]] = {}
    without_ip = invalid_ip = bad_timestamps = 0
    for event in events:
        if event.src_ip is msgspec.UNSET:
            without_ip += 1
            continue
        try:
            ip = ipaddress.ip_address(event.src_ip) if isinstance(event.src_ip, str) else None
        except ValueError:
            ip = None
        if ip is None:
            invalid_ip += 1
            continue
        text = str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)
        counts[text] = counts.get(text, 0) + 1
        sessions.setdefault(text, set())
        if isinstance(event.session, str):
            sessions[text].add(event.session)
        stamp = event.timestamp
        if not isinstance(stamp, datetime.datetime):
            bad_timestamps += 1
            continue
        moments.setdefault(text, []).append(stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC))
    activity = [
        SourceIpActivity(
            ip,
            len(sessions[ip]),
            counts[ip],
            min(moments[ip]).astimezone(UTC) if ip in moments else None,
            max(moments[ip]).astimezone(UTC) if ip in moments else None,
        )
        for ip in sorted(counts)
    ]
    return activity, (without_ip, invalid_ip, bad_timestamps)


def tallied(events: list[Event], block_size: int) -> tuple[ActivityTally, list[tuple[int, str, object]]]:
    samples: list[tuple[int, str, object]] = []
    tally = ActivityTally(lambda number, what, value: samples.append((number, what, value)))
    for start in range(0, len(events), block_size):
        tally.add_block(events[start : start + block_size], start + 1)
    return tally, samples


def counters(tally: ActivityTally) -> tuple[int, int, int]:
    return tally.without_ip, tally.invalid_ip, tally.bad_timestamps


def regular_day(rng: random.Random, count: int, ips: int) -> list[Event]:
    """Time-ordered events of canonical IPv4 sources with string sessions: what Cowrie writes."""
    addresses = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(ips)]
    return [
        Event(rng.choice(addresses), f"s{rng.randrange(count // 3 + 1)}", moment(second))
        for second in sorted(rng.uniform(0, 86_000) for _ in range(count))
    ]


def messy_event(rng: random.Random, near: float) -> Event:
    """One of the irregular cases a real log can hold."""
    choice = rng.randrange(9)
    if choice == 0:
        return Event(msgspec.UNSET, "s", moment(near))
    if choice == 1:
        return Event("999.1.1.1", "s", moment(near))
    if choice == 2:
        return Event("::ffff:198.51.100.9", "m", moment(near))  # valid, not canonical
    if choice == 3:
        return Event(["1.2.3.4"], "s", moment(near))  # unhashable src_ip
    if choice == 4:
        return Event("198.51.100.10", None, moment(near))  # no session id
    if choice == 5:
        return Event("198.51.100.11", "s", "yesterday")  # a timestamp that did not parse
    if choice == 6:
        return Event("198.51.100.12", "s", moment(near - 7_200))  # out of order
    if choice == 7:
        zone = datetime.timezone(datetime.timedelta(hours=5))
        return Event("198.51.100.13", "s", moment(near).astimezone(zone))  # another offset
    return Event("198.51.100.14", "s", moment(near).replace(tzinfo=None))  # naive: taken as UTC


def test_regular_blocks_are_added_in_bulk_and_match_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    events = regular_day(random.Random(1), 5_000, 300)
    monkeypatch.setattr(ActivityTally, "add_numbered", lambda *_: pytest.fail("a regular block went event by event"))
    tally, samples = tallied(events, 250)
    assert tally.sources() == reference(events)[0]
    assert counters(tally) == (0, 0, 0) and samples == []


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block_size", [1, 7, 64, 1_000])
def test_any_mix_of_regular_and_messy_blocks_matches_the_reference(seed: int, block_size: int) -> None:
    rng = random.Random(seed)
    events = regular_day(rng, 3_000, 150)
    seconds = [(event.timestamp - START).total_seconds() for event in events]
    for _ in range(60):  # messy events at random places: some blocks stay regular, some do not
        position = rng.randrange(len(events))
        events.insert(position, messy_event(rng, seconds[min(position, len(seconds) - 1)]))
    tally, _ = tallied(events, block_size)
    expected, expected_counters = reference(events)
    assert tally.sources() == expected
    assert counters(tally) == expected_counters


def test_bulk_and_event_by_event_paths_agree_on_the_same_events() -> None:
    events = regular_day(random.Random(2), 2_000, 100)
    bulk, _ = tallied(events, 500)
    one_by_one = ActivityTally(lambda *_: None)
    one_by_one.add_numbered(enumerate(events, 1))
    assert bulk.sources() == one_by_one.sources()


def test_a_block_earlier_than_what_came_before_is_not_taken_in_bulk() -> None:
    late = [Event("203.0.113.1", "a", moment(100))]
    early = [Event("203.0.113.1", "b", moment(10)), Event("203.0.113.2", "c", moment(20))]
    tally, _ = tallied(late + early, 1)
    assert tally.sources() == [
        SourceIpActivity("203.0.113.1", 2, 2, moment(10), moment(100)),
        SourceIpActivity("203.0.113.2", 1, 1, moment(20), moment(20)),
    ]


def test_a_repeated_session_id_counts_once_per_ip_across_blocks() -> None:
    events = [Event(ip, "same", moment(second)) for second, ip in enumerate(["192.0.2.1", "192.0.2.2"] * 50)]
    tally, _ = tallied(events, 9)
    assert [(source.ip, source.session_count, source.event_count) for source in tally.sources()] == [
        ("192.0.2.1", 1, 50),
        ("192.0.2.2", 1, 50),
    ]


def test_invalid_src_ip_is_sampled_once_with_its_line_number() -> None:
    events = regular_day(random.Random(3), 100, 5)
    events[42] = Event("1.2.3.400", "s", events[42].timestamp)
    events[77] = Event("1.2.3.400", "s", events[77].timestamp)
    tally, samples = tallied(events, 10)
    assert samples == [(43, "invalid src_ip", "1.2.3.400")]
    assert tally.invalid_ip == 2
    assert "1.2.3.400" not in {source.ip for source in tally.sources()}


def test_an_ip_known_only_from_a_rejected_block_is_not_listed_without_events() -> None:
    # The bulk path admits new canonical IPs before it finds the block irregular (here, the session).
    events = [Event("192.0.2.7", "a", moment(1)), Event("192.0.2.8", 5, moment(2))]
    tally, _ = tallied(events, 2)
    assert [(source.ip, source.event_count, source.session_count) for source in tally.sources()] == [
        ("192.0.2.7", 1, 1),
        ("192.0.2.8", 1, 0),
    ]


def test_an_offset_that_leaves_the_datetime_range_is_a_bad_timestamp() -> None:
    extreme = datetime.datetime(1, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    tally, samples = tallied([Event("192.0.2.9", "a", extreme)], 1)
    assert tally.bad_timestamps == 1 and samples == [(1, "bad timestamp", extreme)]
    assert tally.sources() == [SourceIpActivity("192.0.2.9", 1, 1, None, None)]


@pytest.mark.parametrize("block_size", [1, 150, 4_000])
def test_more_ips_than_the_first_rows_hold_match_the_reference(block_size: int) -> None:
    # 5,000 IPs outgrow the tally's first arrays (1,024 rows) several times, in bulk and event by event.
    rng = random.Random(7)
    events = regular_day(rng, 12_000, 5_000)
    seconds = [(event.timestamp - START).total_seconds() for event in events]
    for _ in range(40):
        position = rng.randrange(len(events))
        events.insert(position, messy_event(rng, seconds[min(position, len(seconds) - 1)]))
    tally, _ = tallied(events, block_size)
    expected, expected_counters = reference(events)
    assert len(expected) > 4_000
    assert tally.sources() == expected
    assert counters(tally) == expected_counters


def test_a_session_id_shared_by_ips_counts_for_each_whichever_path_saw_it_first() -> None:
    # First seen event by event (an out-of-order block), then in bulk with another IP, and back.
    events = [
        Event("192.0.2.1", "shared", moment(50)),
        Event("192.0.2.1", "own", moment(10)),  # earlier than the line before: this block goes one by one
        Event("192.0.2.2", "shared", moment(60)),
        Event("192.0.2.2", "shared", moment(61)),
        Event("192.0.2.3", "shared", moment(62)),
        Event("192.0.2.1", "shared", moment(63)),
    ]
    tally, _ = tallied(events, 2)
    assert [(source.ip, source.session_count, source.event_count) for source in tally.sources()] == [
        ("192.0.2.1", 2, 3),
        ("192.0.2.2", 1, 2),
        ("192.0.2.3", 1, 1),
    ]
