"""The Cowrie log sensor: when a rotated `cowrie.json.YYYY-MM-DD[.gz]` appears or changes, run its day.
One cheap directory scan per evaluation; the cursor is a change-time watermark plus the run keys at its edge.

Why a ctime watermark: a file's inode change time moves whenever the file is created, written, renamed
or replaced, and unlike mtime it cannot be set back by `cp -p`, `rsync -t` or `touch -d`. So "new or
changed since the last evaluation" is `st_ctime_ns >= watermark`, and the cursor stays a few hundred bytes
however many days the directory holds. The watermark stops GRACE_NS short of the scan's start (a listing
can miss a file created while it runs; timestamps are coarse) and never passes a file that still waits;
the run keys already requested at or above it are kept so a repeat is a no-op (Dagster's own run-key
check makes it one too). Assumes the directory's clock is this host's (local disk, or NFS with NTP).
"""

import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    partition_loading_context,
    sensor,
)

from enrichment_pipeline.partitions import ingest_days
from enrichment_pipeline.resources import CowrieLogDirectory
from enrichment_pipeline.settings import setting

if TYPE_CHECKING:  # what define_asset_job returns; not exported by dagster
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

SENSOR_NAME = "cowrie_log_sensor"
INTERVAL_ENV = "COWRIE_SENSOR_INTERVAL_S"
# Only Cowrie's rotation names; the live `cowrie.json`, temp files and anything else never match.
ROTATED_NAME = re.compile(r"cowrie\.json\.(\d{4}-\d{2}-\d{2})(\.gz)?", re.ASCII)
SETTLE_NS = 60 * 10**9  # a file modified in the last minute may still be being written or copied: wait
GRACE_NS = 10 * 10**9  # the watermark stays this far behind the scan's start
MAX_REQUESTS = 100  # runs requested per evaluation (oldest change first); the rest follow next evaluation
_CURSOR_VERSION = 1


@dataclass(frozen=True)
class RotatedLog:
    """One rotated log file: the day it holds and the version (size, mtime) the run key names."""

    day: date
    name: str
    size: int
    mtime_ns: int
    ctime_ns: int

    @property
    def run_key(self) -> str:
        return f"{self.day.isoformat()}:{self.size}:{self.mtime_ns}"


@dataclass(frozen=True)
class LogCursor:
    """Files with `st_ctime_ns >= watermark_ns` are looked at; `edge` holds the run keys already requested there."""

    watermark_ns: int = 0
    edge: frozenset[str] = field(default_factory=frozenset)

    def to_json(self) -> str:
        return json.dumps({"v": _CURSOR_VERSION, "ctime_ns": self.watermark_ns, "edge": sorted(self.edge)})

    @classmethod
    def from_json(cls, text: str | None) -> "LogCursor":
        """The stored cursor; a missing or unreadable one starts over (run keys keep that harmless)."""
        try:
            data = json.loads(text or "")
            watermark, edge = data["ctime_ns"], data["edge"]
            if data["v"] == _CURSOR_VERSION and isinstance(watermark, int) and all(isinstance(k, str) for k in edge):
                return cls(watermark, frozenset(edge))
        except (ValueError, TypeError, KeyError):
            pass
        return cls()


@dataclass(frozen=True)
class ScanPlan:
    requests: list[RotatedLog]
    cursor: LogCursor
    waiting: list[RotatedLog]  # days not over yet, or files still being written
    deferred: int  # changed files beyond MAX_REQUESTS, requested by a later evaluation


def scan_rotated_logs(log_dir: str | os.PathLike[str]) -> list[RotatedLog]:
    """The rotated logs in `log_dir`, one per day: the plain file when both it and `.gz` exist (as the
    ingest asset reads it). Names that don't parse, impossible dates and non-files are skipped."""
    chosen: dict[date, tuple[bool, os.DirEntry[str]]] = {}
    with os.scandir(log_dir) as entries:
        for entry in entries:
            match = ROTATED_NAME.fullmatch(entry.name)
            if match is None:
                continue
            try:
                day = date.fromisoformat(match[1])
            except ValueError:  # e.g. 2018-02-30
                continue
            gzipped = match[2] is not None
            if day in chosen and chosen[day][0] is False:
                continue  # the plain file wins
            if entry.is_file():
                chosen[day] = (gzipped, entry)
    logs = []
    for day, (_, entry) in chosen.items():
        try:
            stat = entry.stat()
        except OSError:  # removed since the listing (gzip finished), or unreadable: its change will show
            continue
        logs.append(RotatedLog(day, entry.name, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))
    return logs


def plan_requests(
    logs: Iterable[RotatedLog], cursor: LogCursor, *, first_day: date, last_day: date, scan_started_ns: int
) -> ScanPlan:
    """Which logs to run now, and the next cursor. `first_day`..`last_day` are the ended partitions.

    A file of a day that has not ended yet (Cowrie on a host ahead of UTC rotates early) or one modified
    less than SETTLE_NS ago waits; the watermark never passes a waiting or deferred file, so none is lost.
    """
    today = last_day + timedelta(days=1)
    waiting: list[RotatedLog] = []
    new: list[RotatedLog] = []
    seen: list[RotatedLog] = []
    for log in logs:
        if log.ctime_ns < cursor.watermark_ns or not first_day <= log.day <= today:
            continue
        if log.day == today or abs(scan_started_ns - log.mtime_ns) < SETTLE_NS:
            waiting.append(log)
        else:
            (seen if log.run_key in cursor.edge else new).append(log)
    new.sort(key=lambda log: (log.ctime_ns, log.name))
    requests, deferred = new[:MAX_REQUESTS], new[MAX_REQUESTS:]

    handled = seen + requests
    limits = [log.ctime_ns for log in (*waiting, *deferred)]
    limits.append(max((log.ctime_ns for log in handled), default=cursor.watermark_ns))
    limits.append(scan_started_ns - GRACE_NS)
    watermark = max(cursor.watermark_ns, min(limits))
    edge = frozenset(log.run_key for log in handled if log.ctime_ns >= watermark)
    return ScanPlan(requests, LogCursor(watermark, edge), waiting, len(deferred))


def sensor_interval_s() -> int:
    """COWRIE_SENSOR_INTERVAL_S: seconds between evaluations at least (default 60); must be a positive integer."""
    raw = setting(INTERVAL_ENV)
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"Environment variable {INTERVAL_ENV} must be a positive integer (seconds), got {raw!r}")
    return int(raw)


def ended_days(now: datetime) -> tuple[date, date] | None:
    """The first and the newest ingest day that has ended at `now`, or None if none has."""
    with partition_loading_context(effective_dt=now):
        last = ingest_days.get_last_partition_key()
    return (ingest_days.start.date(), date.fromisoformat(last)) if last else None


def build_log_sensor(job: "UnresolvedAssetJobDefinition") -> SensorDefinition:
    """The sensor requesting `job` (partitioned by ingest day) for every new or changed rotated log."""

    @sensor(
        name=SENSOR_NAME,
        job=job,
        minimum_interval_seconds=sensor_interval_s(),
        # Running by default: a newly rotated log is enriched without an operator's click.
        default_status=DefaultSensorStatus.RUNNING,
        description="Runs a day's partition when its rotated Cowrie log (cowrie.json.YYYY-MM-DD[.gz]) appears "
        f"in COWRIE_LOG_DIR or changes; never the live cowrie.json nor a day not over yet ({INTERVAL_ENV}).",
    )
    def cowrie_log_sensor(
        context: SensorEvaluationContext, cowrie_logs: CowrieLogDirectory
    ) -> SensorResult | SkipReason:
        days = ended_days(datetime.now(UTC))
        if days is None:
            return SkipReason("no ingest day has ended yet")
        started = time.time_ns()
        try:
            logs = scan_rotated_logs(cowrie_logs.log_dir)
        except OSError as error:
            return SkipReason(f"cannot list the Cowrie log directory (COWRIE_LOG_DIR): {error}")
        plan = plan_requests(
            logs, LogCursor.from_json(context.cursor), first_day=days[0], last_day=days[1], scan_started_ns=started
        )
        runs = [
            RunRequest(
                partition_key=log.day.isoformat(),
                run_key=log.run_key,
                tags={"enrichment/trigger": SENSOR_NAME, "cowrie/log_file": log.name},
            )
            for log in plan.requests
        ]
        if runs:
            return SensorResult(run_requests=runs, cursor=plan.cursor.to_json())
        waiting = ", ".join(sorted(log.name for log in plan.waiting)) or "none"
        skip = f"no new or changed rotated log (waiting: {waiting})"
        return SensorResult(skip_reason=skip, cursor=plan.cursor.to_json())

    return cowrie_log_sensor
