"""Streaming reader for one rotated Cowrie JSON log (`cowrie.json.YYYY-MM-DD[.gz]`).
Owns the reading of blocks and lines, the per-line parsing policy and the skip counters; the per-IP counting
rules live in `core.activity`, where the files of a day are in `core.log_layout`."""

from __future__ import annotations

import contextlib
import datetime
import gzip
import io
import json
import logging
import os
import pathlib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import msgspec
import orjson

from enrichment_pipeline.core.activity import ActivityTally, Event, SourceIpActivity, combined
from enrichment_pipeline.core.gc_pause import cyclic_gc_paused
from enrichment_pipeline.core.log_layout import (
    LOG_DIR_ENV_VAR,
    CowrieLogError,
    CowrieLogNotFound,
    day_log_path,
    sensor_name,
)

__all__ = [
    "LOG_DIR_ENV_VAR",
    "CowrieLogError",
    "CowrieLogNotFound",
    "DayLog",
    "LogReadStats",
    "SourceIpActivity",
    "day_log_path",
    "read_day_log",
]


_log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
_NEWLINE = ord("\n")
# Blocks of 64 KiB: large enough that per-block costs vanish, small enough that a block's decoded events
# stay in the CPU cache while they are tallied (1 MiB blocks read ~25% slower here) and a damaged block,
# read again line by line, costs little.
_BLOCK_BYTES = 1 << 16
_DRAIN_BYTES = 1 << 16
_MAX_SAMPLES = 5
_MAX_SAMPLE_CHARS = 120
_READ_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError


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
    sources: list[SourceIpActivity]  # per IP, summed over the file's sensors
    stats: LogReadStats
    by_sensor: dict[str, list[SourceIpActivity]] = field(default_factory=dict)


def read_day_log(
    path: str | os.PathLike[str], *, sensor: str | None = None, max_line_bytes: int = 16 * 1024 * 1024
) -> DayLog:
    """Summarise the distinct source IPs of one log file, streaming it line by line.

    `sensor` names the honeypot that wrote the file (its directory in the per-sensor layout); without it,
    each event's own `sensor` field does (`log_layout.sensor_name`). Bad lines and values are counted in
    `DayLog.stats` and skipped; only a file that cannot be read at all raises `CowrieLogError`.
    """
    if max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be positive, got {max_line_bytes}")
    path = pathlib.Path(path)
    reader = _DayReader(path, max_line_bytes, sensor)
    with _opened_log(path) as stream, cyclic_gc_paused():
        reader.read(stream)
        by_sensor = {name: tally.sources() for name, tally in sorted(reader.tallies.items())}
    stats = reader.stats
    if stats.skipped_lines or stats.invalid_src_ip or stats.bad_timestamp or stats.read_error:
        _log.warning("%s: skipped or rejected input: %s", path, stats)
    return DayLog(sources=combined(by_sensor.values()), stats=stats, by_sensor=by_sensor)


@contextlib.contextmanager
def _opened_log(path: pathlib.Path) -> Iterator[BinaryIO]:
    """The file as a binary stream, decompressed transparently when it is gzip (by suffix or magic bytes)."""
    try:
        raw = open(path, "rb", buffering=_BLOCK_BYTES)  # noqa: SIM115 - closed below
    except FileNotFoundError as error:
        raise CowrieLogNotFound(
            f"Cowrie log {path} does not exist (the directory comes from the {LOG_DIR_ENV_VAR} environment variable)"
        ) from error
    except OSError as error:
        raise CowrieLogError(f"cannot open Cowrie log {path}: {error}") from error
    with raw:
        try:
            is_gzip = path.suffix == ".gz" or raw.peek(2)[:2] == _GZIP_MAGIC
        except OSError as error:
            raise CowrieLogError(f"cannot read Cowrie log {path}: {error}") from error
        if not is_gzip:
            yield _without_bom(raw)
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            yield _without_bom(io.BufferedReader(_ChunkSource(unzipped), _BLOCK_BYTES))  # type: ignore[arg-type]


def _without_bom(stream: io.BufferedReader) -> io.BufferedReader:
    """The stream past a UTF-8 byte order mark (a log that went through an editor or a Windows tool has
    one), which would otherwise make the first event a bad line. Read errors surface in the reader."""
    with contextlib.suppress(*_READ_ERRORS):
        if stream.peek(len(_UTF8_BOM))[: len(_UTF8_BOM)] == _UTF8_BOM:
            stream.read(len(_UTF8_BOM))
    return stream


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


_UNPARSED = object()  # a line the careful path counted as skipped

# One decoder for the whole process: building it compiles the type once.
_decode_array = msgspec.json.Decoder(list[Event]).decode
_BLOCK_ERRORS = (msgspec.DecodeError, RecursionError)  # ValidationError is a DecodeError


class _DayReader:
    """Reads one log stream into per-IP activity, counting every line and value it skips.

    The stream is read in blocks of whole lines. A block whose every line is a JSON object with usable
    field types is decoded in one C call (nearly every block of a real log); any other block is read
    again line by line by the careful path, which decides and counts each line on its own. Both hand
    their events to one `ActivityTally`, so they cannot disagree about what an event contributes.
    """

    def __init__(self, path: pathlib.Path, max_line_bytes: int, sensor: str | None) -> None:
        self.stats = LogReadStats(path=str(path))
        self._path = path
        self._limit = max_line_bytes + 1  # room for the newline: a full read without one is oversized
        self._lines = 0  # lines read so far, so also the number of the last one
        self._sensor = sensor  # None: each event names its sensor
        self.tallies: dict[str, ActivityTally] = {}

    def read(self, stream: BinaryIO) -> None:
        # Reads never exceed the line limit, so every whole line inside a block is within it; the
        # one line cut by a block's end is completed (or found oversized) by readline.
        read_size = min(_BLOCK_BYTES, self._limit)
        read1, readline = stream.read1, stream.readline  # type: ignore[attr-defined]
        try:
            while data := read1(read_size):
                cut = data.rfind(b"\n") + 1
                if cut:
                    self._read_block(data if cut == len(data) else data[:cut])
                if cut < len(data):
                    rest = data[cut:]
                    self._read_edge_line(rest + readline(self._limit - len(rest)), readline)
        except _READ_ERRORS as error:
            if self._lines == 0:
                raise CowrieLogError(f"cannot read Cowrie log {self._path}: {error}") from error
            self.stats.read_error = f"{type(error).__name__}: {error} (after line {self._lines})"
        stats = self.stats
        stats.lines = self._lines
        stats.events = self._lines - stats.skipped_lines
        tallies = self.tallies.values()
        stats.missing_src_ip = sum(tally.without_ip for tally in tallies)
        stats.invalid_src_ip = sum(tally.invalid_ip for tally in tallies)
        stats.bad_timestamp = sum(tally.bad_timestamps for tally in tallies)

    def _tally(self, sensor: str) -> ActivityTally:
        tally = self.tallies.get(sensor)
        if tally is None:
            tally = self.tallies[sensor] = ActivityTally(self.stats.add_sample)
        return tally

    def _add_block(self, events: list[Event], first: int) -> None:
        """A decoded block, to its sensor's tally: a whole block when one sensor wrote it (nearly always)."""
        if self._sensor is not None:
            self._tally(self._sensor).add_block(events, first)
            return
        named = {event.sensor for event in events if type(event.sensor) is str}
        if len(named) <= 1 and all(type(event.sensor) is str for event in events):
            self._tally(sensor_name(next(iter(named), None))).add_block(events, first)
        else:  # several honeypots in one file: each event to its own sensor
            self._add_numbered(list(enumerate(events, first)))

    def _add_numbered(self, numbered: list[tuple[int, Event]]) -> None:
        if self._sensor is not None:
            self._tally(self._sensor).add_numbered(numbered)
            return
        by_sensor: dict[str, list[tuple[int, Event]]] = {}
        for pair in numbered:
            by_sensor.setdefault(sensor_name(pair[1].sensor), []).append(pair)
        for sensor, pairs in by_sensor.items():
            self._tally(sensor).add_numbered(pairs)

    def _read_block(self, block: bytes) -> None:
        """Tally a block of whole lines: decoded at once if it can be, else line by line."""
        first = self._lines + 1
        events = _decoded(block)
        if events is not None:
            self._lines += len(events)
            self._add_block(events, first)
        else:
            lines = block.split(b"\n")
            lines.pop()  # the empty text after the block's final newline
            self._lines += len(lines)
            self._add_numbered(
                [
                    (number, event)
                    for number, line in enumerate(lines, first)
                    if (event := self._parse_line(line, number, terminated=True)) is not None
                ]
            )

    def _read_edge_line(self, line: bytes, readline: Callable[[int], bytes]) -> None:
        """Tally the line that a block's end cut: oversized, the file's unterminated last line, or whole."""
        self._lines += 1
        number = self._lines
        terminated = line[-1] == _NEWLINE
        if len(line) == self._limit and not terminated:
            self._skip_oversized(readline, line, number)
            return
        event = self._parse_line(line, number, terminated=terminated)
        if event is not None:
            self._add_numbered([(number, event)])

    def _skip_oversized(self, readline: Callable[[int], bytes], start: bytes, number: int) -> None:
        """Count a line longer than the limit and drain the rest of it in chunks, never holding it whole."""
        self.stats.oversized_lines += 1
        self.stats.add_sample(number, f"line longer than {self._limit - 1} bytes", start)
        while (rest := readline(_DRAIN_BYTES)) and rest[-1] != _NEWLINE:
            pass

    def _parse_line(self, line: bytes, number: int, *, terminated: bool) -> Event | None:
        """One line on its own (the careful path); None after counting it as skipped."""
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            value = self._parse_slowly(line, number, terminated)
            if value is _UNPARSED:
                return None
        if type(value) is not dict:
            self.stats.bad_json += 1
            self.stats.add_sample(number, "JSON that is not an object", line)
            return None
        timestamp = value.get("timestamp")
        if type(timestamp) is str:
            with contextlib.suppress(ValueError):
                timestamp = datetime.datetime.fromisoformat(timestamp)
        return Event(value.get("src_ip", msgspec.UNSET), value.get("session"), timestamp, value.get("sensor"))

    def _parse_slowly(self, line: bytes, number: int, terminated: bool) -> object:
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
        if not terminated:  # only the last line can lack its newline: the writer stopped mid-line
            stats.truncated_last_line = True
            stats.add_sample(number, "truncated last line", line[-60:])
        else:
            stats.bad_json += 1
            stats.add_sample(number, "not JSON", line)
        return _UNPARSED


def _decoded(block: bytes) -> list[Event] | None:
    """The events of a block of whole lines, one per line, from one C call; None if any line needs
    the careful path.

    The lines become the items of one JSON array, so a blank line or a line holding two values is
    malformed instead of silently skipped or split (as msgspec's own line decoder would). msgspec skips
    the fields it does not build without checking their UTF-8, so a block that is not plain ASCII
    (Cowrie escapes non-ASCII text) is checked first: invalid bytes must be counted.
    """
    if not block.isascii():
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        return _decode_array(b"[" + block[:-1].replace(b"\n", b",") + b"]")
    except _BLOCK_ERRORS:
        return None


def _short_repr(value: object) -> str:
    """repr of a prefix of attacker data: never the whole (possibly huge or deeply nested) value."""
    if isinstance(value, (str, bytes)):
        return repr(value[:100])
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)[:100]
    return f"<{type(value).__name__}>"
