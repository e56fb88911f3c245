"""Streaming reader for one day of Cowrie JSON logs (`cowrie.json.YYYY-MM-DD[.gz]`).
Owns the file-naming rule, the per-line parsing policy, the per-IP activity summary and the skip counters."""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import gzip
import io
import json
import logging
import os
import pathlib
import socket
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from enrichment_pipeline.core.ips import canonical_ip

LOG_DIR_ENV_VAR = "COWRIE_LOG_DIR"

_log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_NEWLINE = ord("\n")
_BUFFER_BYTES = 1 << 16
_MAX_SAMPLES = 5
_MAX_SAMPLE_CHARS = 120
# Invalid or non-canonical src_ip texts are cached only up to this many, so a hostile file full of
# distinct junk cannot grow memory with its size (valid canonical IPs are the summary itself).
_MAX_CACHED_ODD_IPS = 65_536
_READ_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError


class CowrieLogError(Exception):
    """The whole day's log is unreadable."""


class CowrieLogNotFound(CowrieLogError):
    """No log file exists for the requested day."""


@dataclass(slots=True)
class SourceIpActivity:
    ip: str
    session_count: int
    event_count: int
    first_seen: datetime.datetime | None
    last_seen: datetime.datetime | None


@dataclass
class LogReadStats:
    path: str
    lines: int = 0
    events: int = 0
    bad_json: int = 0
    truncated_last_line: bool = False
    missing_src_ip: int = 0
    invalid_src_ip: int = 0
    bad_timestamp: int = 0
    invalid_utf8: int = 0
    oversized_lines: int = 0
    read_error: str | None = None
    samples: list[str] = field(default_factory=list)

    @property
    def skipped_lines(self) -> int:
        return self.bad_json + self.oversized_lines + int(self.truncated_last_line)

    def add_sample(self, line_number: int, what: str, value: object) -> None:
        """Keep a few short, escaped examples of what was skipped, for the operator's log."""
        if len(self.samples) < _MAX_SAMPLES:
            self.samples.append(f"line {line_number}: {what}: {_short_repr(value)}"[:_MAX_SAMPLE_CHARS])


@dataclass
class DayLog:
    sources: list[SourceIpActivity]
    stats: LogReadStats


def day_log_path(log_dir: str | os.PathLike[str], day: datetime.date) -> pathlib.Path:
    """The rotated log of `day`: the plain file Cowrie wrote if present, else its gzipped copy."""
    plain = pathlib.Path(log_dir) / f"cowrie.json.{day.isoformat()}"
    gzipped = plain.with_name(plain.name + ".gz")
    for candidate in (plain, gzipped):
        if candidate.exists():
            return candidate
    raise CowrieLogNotFound(
        f"no Cowrie log for {day.isoformat()}: neither {plain} nor {gzipped} exists"
        f" (the directory comes from the {LOG_DIR_ENV_VAR} environment variable)"
    )


def read_day_log(path: str | os.PathLike[str], *, max_line_bytes: int = 16 * 1024 * 1024) -> DayLog:
    """Summarise the distinct source IPs of one log file, streaming it line by line.

    Bad lines and values are counted in `DayLog.stats` and skipped; only a file that cannot be read at all
    raises `CowrieLogError`.
    """
    if max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be positive, got {max_line_bytes}")
    path = pathlib.Path(path)
    reader = _DayReader(path, max_line_bytes)
    with _opened_log(path) as stream, _cyclic_gc_paused():
        reader.read(stream)
    stats = reader.stats
    if stats.skipped_lines or stats.invalid_src_ip or stats.bad_timestamp or stats.read_error:
        _log.warning("%s: skipped or rejected input: %s", path, stats)
    return DayLog(sources=reader.sources(), stats=stats)


@contextlib.contextmanager
def _opened_log(path: pathlib.Path) -> Iterator[BinaryIO]:
    """The file as a binary stream, decompressed transparently when it is gzip (by suffix or magic bytes)."""
    try:
        raw = open(path, "rb", buffering=_BUFFER_BYTES)  # noqa: SIM115 - closed below
    except FileNotFoundError as error:
        raise CowrieLogNotFound(
            f"Cowrie log {path} does not exist"
            f" (the directory comes from the {LOG_DIR_ENV_VAR} environment variable)"
        ) from error
    except OSError as error:
        raise CowrieLogError(f"cannot open Cowrie log {path}: {error}") from error
    with raw:
        try:
            is_gzip = path.suffix == ".gz" or raw.peek(2)[:2] == _GZIP_MAGIC
        except OSError as error:
            raise CowrieLogError(f"cannot read Cowrie log {path}: {error}") from error
        if not is_gzip:
            yield raw
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            yield io.BufferedReader(_ChunkSource(unzipped), _BUFFER_BYTES)  # type: ignore[arg-type]


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause CPython's cycle collector while a day is read (restored after, even on error).

    The read allocates a dict per line and keeps a tally and a session set per distinct IP. Nothing it
    builds forms a cycle, yet each full collection re-walks every tally so far: on a 1M-event day with 100k
    IPs that was ~15% of the read (bench/RESULTS.md). Reference counting still frees every line's objects.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _ChunkSource(io.RawIOBase):
    """Serves a gzip stream one decompressed chunk at a time.

    Under a C BufferedReader this makes per-line reads cheap (GzipFile.readline is Python code), and a
    corrupt spot only costs the chunk it is in, not a whole buffer of good lines before it.
    """

    def __init__(self, unzipped: gzip.GzipFile) -> None:
        self._unzipped = unzipped

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._unzipped.readinto1(buffer)


# Start values that any real timestamp replaces, so updating first/last needs no None checks.
_NOT_YET_FIRST = datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)
_NOT_YET_LAST = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)


class _IpTally:
    """Running activity of one source IP (or, with ip None, of the events that have no usable one)."""

    __slots__ = ("ip", "sessions", "events", "first", "last")

    def __init__(self, ip: str | None) -> None:
        self.ip = ip
        self.sessions: set[str] = set()
        self.events = 0
        self.first = _NOT_YET_FIRST
        self.last = _NOT_YET_LAST

    def activity(self) -> SourceIpActivity:
        assert self.ip is not None
        seen = self.first <= self.last  # false only while no usable timestamp came in
        return SourceIpActivity(
            self.ip, len(self.sessions), self.events, self.first if seen else None, self.last if seen else None
        )


_MISSING = object()  # src_ip key absent
_NEVER_EQUAL = object()  # "previous value" that no later value can equal
_UNPARSED = object()


class _DayReader:
    """Reads one log stream line by line into per-IP activity, counting every line and value it skips."""

    def __init__(self, path: pathlib.Path, max_line_bytes: int) -> None:
        self.stats = LogReadStats(path=str(path))
        self._path = path
        self._max_line_bytes = max_line_bytes
        self._by_ip: dict[str, _IpTally] = {}
        self._without_ip = _IpTally(None)
        self._invalid_ip = _IpTally(None)
        # Raw src_ip text -> its tally (or _invalid_ip): each distinct text is validated once.
        self._verdicts: dict[str, _IpTally] = {}
        self._odd_verdicts = 0

    def sources(self) -> list[SourceIpActivity]:
        return [self._by_ip[ip].activity() for ip in sorted(self._by_ip)]

    def read(self, stream: BinaryIO) -> None:
        # One flat loop over local names: it runs per line and is the reader's whole cost, so the rare
        # cases (bad lines, a new IP or session, odd timestamps) live in helper methods.
        stats = self.stats
        readline = stream.readline
        limit = self._max_line_bytes + 1  # room for the newline: a full read without one is oversized
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        parse_timestamp = datetime.datetime.fromisoformat
        utc = datetime.timezone.utc
        tally_for = self._tally_for
        tally = self._without_ip
        previous_ip: object = _NEVER_EQUAL
        previous_session: object = _NEVER_EQUAL
        number = 0
        try:
            for number, line in enumerate(iter(functools.partial(readline, limit), b""), 1):
                if len(line) == limit and line[-1] != _NEWLINE:
                    self._skip_oversized(readline, line, number)
                    continue
                try:
                    event = loads(line)
                except decode_error:
                    event = self._parse_slowly(line, number)
                    if event is _UNPARSED:
                        continue
                if type(event) is not dict:
                    stats.bad_json += 1
                    stats.add_sample(number, "JSON that is not an object", line)
                    continue
                try:  # subscripts are cheaper than .get(); nearly every Cowrie event has all three
                    raw_ip = event["src_ip"]
                    session = event["session"]
                    timestamp = event["timestamp"]
                except KeyError:
                    raw_ip = event.get("src_ip", _MISSING)
                    session = event.get("session")
                    timestamp = event.get("timestamp")
                # A session's events mostly follow each other: reuse the previous tally while neither
                # changes. previous_* only hold a str, None or a sentinel, so comparing is cheap and safe
                # even against huge nested attacker values.
                if raw_ip != previous_ip or session != previous_session:
                    tally = tally_for(raw_ip, session, number)
                    previous_ip = raw_ip if raw_ip is _MISSING or type(raw_ip) is str else _NEVER_EQUAL
                    previous_session = session if session is None or type(session) is str else _NEVER_EQUAL
                tally.events += 1
                if tally.ip is None:  # no usable src_ip: the event only counts
                    continue
                try:
                    # Cowrie's `...Z` parses straight to UTC; anything else is normalised to UTC, so
                    # comparisons stay cheap and naive values never meet aware ones.
                    moment = parse_timestamp(timestamp)  # type: ignore[arg-type]
                    if moment.tzinfo is not utc:
                        moment = _as_utc(moment)
                except (TypeError, ValueError, OverflowError):
                    stats.bad_timestamp += 1
                    stats.add_sample(number, "bad timestamp", timestamp)
                    continue
                if moment > tally.last:
                    tally.last = moment
                if moment < tally.first:
                    tally.first = moment
        except _READ_ERRORS as error:
            if number == 0:
                raise CowrieLogError(f"cannot read Cowrie log {self._path}: {error}") from error
            stats.read_error = f"{type(error).__name__}: {error} (after line {number})"
        stats.lines = number
        stats.events = number - stats.skipped_lines
        stats.missing_src_ip = self._without_ip.events
        stats.invalid_src_ip = self._invalid_ip.events

    def _tally_for(self, raw_ip: object, session: object, number: int) -> _IpTally:
        """The tally an event belongs to, with its session id recorded."""
        if type(raw_ip) is str:
            tally = self._verdicts.get(raw_ip) or self._resolve(raw_ip, number)
        elif raw_ip is _MISSING:
            return self._without_ip
        else:
            self.stats.add_sample(number, "src_ip is not a string", raw_ip)
            return self._invalid_ip
        if tally.ip is not None and type(session) is str:
            tally.sessions.add(session)
        return tally

    def _resolve(self, raw_ip: str, number: int) -> _IpTally:
        """Validate a src_ip text seen for the first time and remember the verdict."""
        ip = _canonical_ip_quickly(raw_ip)
        if ip is None:
            self.stats.add_sample(number, "invalid src_ip", raw_ip)
            tally = self._invalid_ip
        else:
            tally = self._by_ip.get(ip) or self._by_ip.setdefault(ip, _IpTally(ip))
        if raw_ip == ip:
            self._verdicts[raw_ip] = tally
        elif self._odd_verdicts < _MAX_CACHED_ODD_IPS:
            self._odd_verdicts += 1
            self._verdicts[raw_ip] = tally
        return tally

    def _skip_oversized(self, readline: Callable[[int], bytes], start: bytes, number: int) -> None:
        """Count a line longer than the limit and drain the rest of it in chunks, never holding it whole."""
        self.stats.oversized_lines += 1
        self.stats.add_sample(number, f"line longer than {self._max_line_bytes} bytes", start)
        while (rest := readline(_BUFFER_BYTES)) and rest[-1] != _NEWLINE:
            pass

    def _parse_slowly(self, line: bytes, number: int) -> object:
        """Second chance for a line orjson rejected; returns _UNPARSED after counting it as skipped.

        Invalid UTF-8 (attacker bytes in a password) is replaced so the event's src_ip survives; the stdlib
        parser also accepts the lone-surrogate escapes (`\\udc80`) Python-written logs can contain.
        """
        stats = self.stats
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            stats.invalid_utf8 += 1
            text = line.decode("utf-8", errors="replace")
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            pass
        if line[-1] != _NEWLINE:  # only the last line can lack its newline: the writer stopped mid-line
            stats.truncated_last_line = True
            stats.add_sample(number, "truncated last line", line[-60:])
        else:
            stats.bad_json += 1
            stats.add_sample(number, "not JSON", line)
        return _UNPARSED


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


def _as_utc(moment: datetime.datetime) -> datetime.datetime:
    """An aware datetime converted to UTC; a naive one is taken as UTC, the zone Cowrie logs in."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)


def _short_repr(value: object) -> str:
    """repr of a prefix of attacker data: never the whole (possibly huge or deeply nested) value."""
    if isinstance(value, (str, bytes)):
        return repr(value[:100])
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)[:100]
    return f"<{type(value).__name__}>"
