"""Per-source-IP activity of one day's Cowrie events: events, distinct sessions, first and last seen.
Owns the counting rules (which events count for an IP, UTC normalisation, src_ip validation) and the
counters of events that could not count fully."""

from __future__ import annotations

import datetime
import itertools
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
import numpy as np

from enrichment_pipeline.core.ips import canonical_ip
from enrichment_pipeline.core.moments import earliest, latest

# Texts that are not canonical IPs are remembered only up to this many, so a hostile file full of
# distinct junk cannot grow memory with its size (canonical IPs are the summary itself).
_MAX_REMEMBERED_ODD_IPS = 65_536
_UTC = datetime.UTC
_BEFORE_ANY = datetime.datetime.min.replace(tzinfo=_UTC)
_ONLY_UTC = {_UTC}
_ONLY_STR = {str}
_INITIAL_ROWS = 1024
_ROW = operator.itemgetter(0)
_SRC_IP = operator.attrgetter("src_ip")
_SESSION = operator.attrgetter("session")
_TIMESTAMP = operator.attrgetter("timestamp")
_TZINFO = operator.attrgetter("tzinfo")


class Event(msgspec.Struct, gc=False):
    """The fields of a Cowrie event that the activity needs.

    msgspec decodes whole blocks of lines straight into these, in C, skipping every other field (most of
    a line's bytes) without building it. `timestamp` is the moment msgspec parsed (RFC 3339); a line read
    on its own carries the raw value instead when `datetime.fromisoformat` rejects it, so that it is
    counted and sampled as a bad timestamp.
    """

    src_ip: Any = msgspec.UNSET  # UNSET: the key is absent (None is a JSON null)
    session: Any = None
    timestamp: datetime.datetime | None = None
    sensor: Any = None  # the honeypot's name, for a log several sensors wrote into


class SourceIpActivity(msgspec.Struct, gc=False):
    """One IP's activity on the day (a Struct: a day can list a million of these, built in C)."""

    ip: str
    session_count: int
    event_count: int
    first_seen: datetime.datetime | None
    last_seen: datetime.datetime | None


def combined(parts: Iterable[Sequence[SourceIpActivity]]) -> list[SourceIpActivity]:
    """One row per IP over several sensors' activity of a day: sessions and events add up (a session
    belongs to one sensor), first and last seen are the earliest and latest; ordered by IP text."""
    parts = [part for part in parts if part]
    if len(parts) <= 1:
        return list(parts[0]) if parts else []
    merged: dict[str, SourceIpActivity] = {}
    for part in parts:
        for row in part:
            seen = merged.get(row.ip)
            merged[row.ip] = (
                row
                if seen is None
                else SourceIpActivity(
                    row.ip,
                    seen.session_count + row.session_count,
                    seen.event_count + row.event_count,
                    earliest(seen.first_seen, row.first_seen),
                    latest(seen.last_seen, row.last_seen),
                )
            )
    return [merged[ip] for ip in sorted(merged)]


# (line number, what, offending value): how skipped values reach the reader's samples.
SampleSink = Callable[[int, str, object], None]


class ActivityTally:
    """Running per-IP activity of a day, fed blocks of events in file order.

    An event counts for its IP when src_ip is a valid IP text (stored canonical), its session when the
    session id is a string, its moment when the timestamp is valid (normalised to UTC). Events without a
    usable src_ip only count in `without_ip` / `invalid_ip`; a usable IP's bad timestamp in
    `bad_timestamps`.

    Each IP gets a row once, and its event count, first and last moment live in arrays at that row: a
    block looks each event's IP up once in the day's large tables and updates the arrays in bulk. With
    100k IPs those tables no longer fit the CPU cache, so every look-up saved is a cache miss saved.
    """

    def __init__(self, add_sample: SampleSink) -> None:
        self._add_sample = add_sample
        self._rows: dict[str, int] = {}  # every canonical IP seen so far -> its row
        self._ips: list[str] = []  # row -> canonical IP
        self._events = np.zeros(_INITIAL_ROWS, np.int64)
        self._first = np.full(_INITIAL_ROWS, None, object)  # None until the IP has a valid moment
        self._last = np.full(_INITIAL_ROWS, None, object)
        # A session id counts once per IP. An id nearly always comes with one IP only, so it remembers the
        # row it came with first, and only its pairs with other rows are kept as (row, id).
        self._session_rows: dict[str, int] = {}
        self._shared_sessions: set[tuple[int, str]] = set()
        self._newest = _BEFORE_ANY  # the latest moment so far, over all IPs
        self._odd_verdicts: dict[str, str | None] = {}  # other texts -> canonical IP, or None if invalid
        self.without_ip = 0
        self.invalid_ip = 0
        self.bad_timestamps = 0

    def add_block(self, events: Sequence[Event], first_number: int) -> None:
        """Add consecutive events, the first of them from line `first_number`."""
        if not self._added_in_bulk(events):
            self.add_numbered(zip(itertools.count(first_number), events))

    def add_numbered(self, numbered_events: Iterable[tuple[int, Event]]) -> None:
        """Add (line number, event) pairs one at a time: every case, at Python speed."""
        rows, session_rows = self._rows, self._session_rows
        datetime_type = datetime.datetime
        for number, event in numbered_events:
            raw_ip = event.src_ip
            if type(raw_ip) is not str:
                self._count_unusable_ip(raw_ip, number)
                continue
            row = rows.get(raw_ip)
            if row is None:
                ip = self._resolve(raw_ip, number)
                if ip is None:
                    self.invalid_ip += 1
                    continue
                row = self._row(ip)
            self._events[row] += 1
            session = event.session
            if type(session) is str and session_rows.setdefault(session, row) != row:
                self._shared_sessions.add((row, session))
            moment = event.timestamp
            # Cowrie's `...Z` arrives as UTC; anything else is normalised to UTC, so comparisons stay
            # cheap and naive values never meet aware ones.
            if type(moment) is datetime_type and moment.tzinfo is not _UTC:
                moment = _as_utc(moment)
            if type(moment) is not datetime_type:  # unparsed, missing, or out of range in UTC
                self.bad_timestamps += 1
                self._add_sample(number, "bad timestamp", event.timestamp)
                continue
            if moment > self._newest:
                self._newest = moment
            last = self._last[row]
            if last is None or moment > last:
                self._last[row] = moment
            first = self._first[row]
            if first is None or moment < first:
                self._first[row] = moment

    def sources(self) -> list[SourceIpActivity]:
        """The activity of every IP that had a counted event, ordered by IP text."""
        count = len(self._ips)
        session_counts = np.bincount(
            np.fromiter(self._session_rows.values(), np.intp, len(self._session_rows)), minlength=count
        )
        np.add.at(session_counts, np.fromiter(map(_ROW, self._shared_sessions), np.intp), 1)
        # An IP admitted by a block that then went event by event always has events; checked all the same.
        rows = [row for row in sorted(range(count), key=self._ips.__getitem__) if self._events[row]]
        return list(
            map(
                SourceIpActivity,
                map(self._ips.__getitem__, rows),
                session_counts[rows].tolist(),
                self._events[rows].tolist(),
                self._first[rows].tolist(),
                self._last[rows].tolist(),
            )
        )

    def _added_in_bulk(self, events: Sequence[Event]) -> bool:
        """Add a regular block with C-implemented builtins and array operations only; False, having added
        nothing, otherwise.

        Regular: every src_ip a text that already is a canonical IP, every session id a string, every
        timestamp UTC and none earlier than the one before it (nor than any before the block). Then an
        IP's first and last seen are simply its first and last occurrence, and every event counts fully,
        so nothing needs deciding per event. Cowrie writes its events in time order, so nearly every
        block of a real log is regular; the rest go through `add_numbered`.
        """
        if not events:
            return True
        ips = list(map(_SRC_IP, events))
        try:
            new_ips = set(ips).difference(self._rows)
        except TypeError:  # an unhashable (JSON array or object) src_ip
            return False
        if new_ips and not self._admitted_canonical(new_ips):
            return False
        sessions = list(map(_SESSION, events))
        moments = list(map(_TIMESTAMP, events))
        try:
            if set(map(_TZINFO, moments)) != _ONLY_UTC:  # checked first: naive and aware do not compare
                return False
        except AttributeError:  # a missing or unparsed timestamp
            return False
        in_order = moments[0] >= self._newest and all(map(operator.le, moments, itertools.islice(moments, 1, None)))
        if not in_order or set(map(type, sessions)) != _ONLY_STR:
            return False
        self._newest = moments[-1]
        rows = list(map(self._rows.__getitem__, ips))
        row_array = np.fromiter(rows, np.intp, len(rows))
        np.add.at(self._events, row_array, 1)
        # Per block, small dicts keep the last value written per key: the latest moment per row, and over
        # the reversed block the earliest. Each row is then written once, so no order of writes matters.
        latest_rows, latest = _as_arrays(dict(zip(rows, moments, strict=False)))
        self._last[latest_rows] = latest
        earliest_rows, earliest = _as_arrays(dict(zip(reversed(rows), reversed(moments), strict=False)))
        undated = np.equal(self._first[earliest_rows], None)  # later blocks never move a first moment
        if undated.any():
            self._first[earliest_rows[undated]] = earliest[undated]
        first_rows = np.fromiter(map(self._session_rows.setdefault, sessions, rows), np.intp, len(rows))
        for position in np.flatnonzero(first_rows != row_array).tolist():  # ids that came with another IP before
            self._shared_sessions.add((rows[position], sessions[position]))
        return True

    def _admitted_canonical(self, texts: set[Any]) -> bool:
        """Give each of `texts` a row if all are canonical IPs; False if one is not. Invalid and
        non-canonical texts are left to `_resolve`, which samples them with their line number."""
        for text in texts:
            if type(text) is not str or canonical_ip(text) != text:
                return False
        for text in texts:
            self._row(text)
        return True

    def _row(self, ip: str) -> int:
        """The row of a canonical IP, added (and the arrays grown) if it has none yet."""
        row = self._rows.get(ip)
        if row is not None:
            return row
        row = self._rows[ip] = len(self._ips)
        self._ips.append(ip)
        if row == len(self._events):  # full: double, so growing costs O(1) per IP over the day
            self._events = np.concatenate([self._events, np.zeros(row, np.int64)])
            self._first = np.concatenate([self._first, np.full(row, None, object)])
            self._last = np.concatenate([self._last, np.full(row, None, object)])
        return row

    def _resolve(self, raw_ip: str, number: int) -> str | None:
        """The canonical IP of a src_ip text that has no row yet, or None (sampled once) if invalid."""
        if raw_ip in self._odd_verdicts:
            return self._odd_verdicts[raw_ip]
        ip = canonical_ip(raw_ip)
        if ip == raw_ip:
            return ip
        if ip is None:
            self._add_sample(number, "invalid src_ip", raw_ip)
        if len(self._odd_verdicts) < _MAX_REMEMBERED_ODD_IPS:
            self._odd_verdicts[raw_ip] = ip
        return ip

    def _count_unusable_ip(self, raw_ip: object, number: int) -> None:
        if raw_ip is msgspec.UNSET:
            self.without_ip += 1
        else:
            self.invalid_ip += 1
            self._add_sample(number, "src_ip is not a string", raw_ip)


def _as_arrays(moments_by_row: dict[int, datetime.datetime]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, moments) of a dict as two arrays, in the same order."""
    count = len(moments_by_row)
    return (
        np.fromiter(moments_by_row.keys(), np.intp, count),
        np.fromiter(moments_by_row.values(), object, count),
    )


def _as_utc(moment: datetime.datetime) -> datetime.datetime | None:
    """An aware moment in UTC (None if that leaves datetime's range); a naive one is taken as UTC, the
    zone Cowrie logs in."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=_UTC)
    try:
        return moment.astimezone(_UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00
        return None
