"""Per-source-IP activity of one day's Cowrie events: events, distinct sessions, first and last seen.
Owns the counting rules (which events count for an IP, UTC normalisation, src_ip validation) and the
counters of events that could not count fully."""

from __future__ import annotations

import collections
import datetime
import itertools
import operator
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from enrichment_pipeline.core.ips import canonical_ip

# Texts that are not canonical IPs are remembered only up to this many, so a hostile file full of
# distinct junk cannot grow memory with its size (canonical IPs are the summary itself).
_MAX_REMEMBERED_ODD_IPS = 65_536
_UTC = datetime.timezone.utc
_BEFORE_ANY = datetime.datetime.min.replace(tzinfo=_UTC)
_AFTER_ANY = datetime.datetime.max.replace(tzinfo=_UTC)
_ONLY_UTC = {_UTC}
_ONLY_STR = {str}
_SRC_IP = operator.attrgetter("src_ip")
_SESSION = operator.attrgetter("session")
_TIMESTAMP = operator.attrgetter("timestamp")
_TZINFO = operator.attrgetter("tzinfo")


class Event(msgspec.Struct, gc=False):
    """The three fields of a Cowrie event that the activity needs.

    msgspec decodes whole blocks of lines straight into these, in C, skipping every other field (most of
    a line's bytes) without building it. `timestamp` is the moment msgspec parsed (RFC 3339); a line read
    on its own carries the raw value instead when `datetime.fromisoformat` rejects it, so that it is
    counted and sampled as a bad timestamp.
    """

    src_ip: Any = msgspec.UNSET  # UNSET: the key is absent (None is a JSON null)
    session: Any = None
    timestamp: datetime.datetime | None = None


class SourceIpActivity(msgspec.Struct, gc=False):
    """One IP's activity on the day (a Struct: a day can list a million of these, built in C)."""

    ip: str
    session_count: int
    event_count: int
    first_seen: datetime.datetime | None
    last_seen: datetime.datetime | None


# (line number, what, offending value): how skipped values reach the reader's samples.
SampleSink = Callable[[int, str, object], None]


class ActivityTally:
    """Running per-IP activity of a day, fed blocks of events in file order.

    An event counts for its IP when src_ip is a valid IP text (stored canonical), its session when the
    session id is a string, its moment when the timestamp is valid (normalised to UTC). Events without a
    usable src_ip only count in `without_ip` / `invalid_ip`; a usable IP's bad timestamp in
    `bad_timestamps`.
    """

    def __init__(self, add_sample: SampleSink) -> None:
        self._add_sample = add_sample
        self._events: collections.Counter[str] = collections.Counter()
        self._known: set[str] = set()  # every canonical IP seen so far: what a set difference runs against
        self._sessions: set[tuple[str, str]] = set()  # (IP, session id): a session id counts per IP
        self._first: dict[str, datetime.datetime] = {}
        self._last: dict[str, datetime.datetime] = {}
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
        counts, sessions, first, last, known = self._events, self._sessions, self._first, self._last, self._known
        datetime_type = datetime.datetime
        for number, event in numbered_events:
            raw_ip = event.src_ip
            if type(raw_ip) is not str:
                self._count_unusable_ip(raw_ip, number)
                continue
            ip = raw_ip if raw_ip in known else self._resolve(raw_ip, number)
            if ip is None:
                self.invalid_ip += 1
                continue
            counts[ip] += 1
            if type(event.session) is str:
                sessions.add((ip, event.session))
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
            if moment > last.get(ip, _BEFORE_ANY):
                last[ip] = moment
            if moment < first.get(ip, _AFTER_ANY):
                first[ip] = moment

    def sources(self) -> list[SourceIpActivity]:
        """The activity of every IP that had a counted event, ordered by IP text."""
        session_counts = collections.Counter(map(operator.itemgetter(0), self._sessions))
        ips = sorted(self._events)
        return list(
            map(
                SourceIpActivity,
                ips,
                map(session_counts.__getitem__, ips),
                map(self._events.__getitem__, ips),
                map(self._first.get, ips),
                map(self._last.get, ips),
            )
        )

    def _added_in_bulk(self, events: Sequence[Event]) -> bool:
        """Add a regular block with C-implemented builtins only; False, having added nothing, otherwise.

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
            distinct_ips = set(ips)
        except TypeError:  # an unhashable (JSON array or object) src_ip
            return False
        new_ips = distinct_ips - self._known
        if new_ips and not self._learned_canonical(new_ips):
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
        self._events.update(ips)
        self._sessions.update(zip(ips, sessions))
        self._last.update(zip(ips, moments))  # later occurrences are later moments
        collections.deque(map(self._first.setdefault, ips, moments), maxlen=0)  # keeps the first
        return True

    def _learned_canonical(self, texts: set[Any]) -> bool:
        """Remember the `texts` that are canonical IPs; True if all are. Invalid and non-canonical texts
        are left to `_resolve`, which samples them with their line number."""
        for text in texts:
            if type(text) is not str or _canonical_ip_quickly(text) != text:
                return False
            self._known.add(text)
        return True

    def _resolve(self, raw_ip: str, number: int) -> str | None:
        """The canonical IP of a src_ip text that is not one already, or None (sampled once) if invalid."""
        if raw_ip in self._odd_verdicts:
            return self._odd_verdicts[raw_ip]
        ip = _canonical_ip_quickly(raw_ip)
        if ip is not None:
            self._known.add(ip)
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


def _canonical_ip_quickly(text: str) -> str | None:
    """`canonical_ip(text)`, answered in C when the text already is a canonical dotted-quad IPv4.

    inet_pton accepts exactly four decimal octets without leading zeros, and the round trip through
    inet_ntop must give back the very same text, so a hit is an address canonical_ip maps to itself.
    Days with a million distinct sources spend much of their time here; everything else goes to
    canonical_ip, which stays the one authority.
    """
    try:
        if socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text)) == text:
            return text
    except (OSError, ValueError):  # ValueError: embedded NUL or lone surrogate (UnicodeEncodeError)
        pass
    return canonical_ip(text)


def _as_utc(moment: datetime.datetime) -> datetime.datetime | None:
    """An aware moment in UTC (None if that leaves datetime's range); a naive one is taken as UTC, the
    zone Cowrie logs in."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=_UTC)
    try:
        return moment.astimezone(_UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00
        return None
