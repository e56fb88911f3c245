"""The Cowrie log sensor: when rotated `cowrie.json.YYYY-MM-DD[.gz]` files appear or change, run their days.
One cheap scan per evaluation; the cursor is a change-time watermark plus the run keys at its edge.

Where it looks: COWRIE_LOG_DIR in both layouts of `core/log_layout.py` (which owns the file-name rule and
which directories are sensors): the flat files, and one level down, each valid sensor directory
(`log_layout.sensor_directories`: plain names, no hidden directory, a symlinked one only if it stays inside
COWRIE_LOG_DIR). One `os.scandir` per directory, never deeper; a sensor's log that is a symlink out of
COWRIE_LOG_DIR is never looked at (the ingest refuses it too). Per directory the plain file wins over its
`.gz`, as the ingest reads it. Refused names are reported, escaped and bounded, in the skip reason and log.

What it requests is days, not files: a day's run reads every sensor's file of that day, so its run key names
that whole set: the one file's version `<day>:<size>:<mtime_ns>` in the flat layout (unchanged, so cursors
and run keys from before stay valid), `<sensor>/<day>:<size>:<mtime_ns>` for a day one sensor directory
holds, and `<day>#<n>:<digest>` for a day n files make (a hash of their version keys). Several files of a
day changing together request the day once; a day one of whose files is still being copied waits for it
(one run, not two). A late sensor file (a new ctime on a day already run) requests the day again: its run
reads every sensor's file and the upsert replaces the day's rows, so it converges to the all-at-once result.

One day or many: an evaluation that finds exactly one new or changed day requests one run of the assets of
`enrich_day` for it (partition key, the day's run key). One that finds more (an operator copied a month or a
year of logs in) requests ONE asset backfill over exactly those days for every asset of the job's selection
(`RunRequest.for_asset_graph_subset`): the sensor daemon turns it into a backfill and the backfill daemon
runs it by the assets' `BackfillPolicy` (contiguous day ranges per run, BACKFILL_DAYS_PER_RUN), within the
instance's backfill concurrency limits, instead of one queued run per day.
An `AssetGraphSubset` holds assets only; a backfill runs every check that targets a requested asset with it,
so `target_asset_keys` refuses a job whose checks differ from exactly those (a check excluded from the job,
or one on an asset outside it) rather than request runs that would run other checks than the job.

Dagster accepts backfill requests only from a sensor that targets an asset selection, so the sensor targets
the job's selection, not the job: a single-day request then runs as the implicit asset job (`__ASSET_JOB`)
over exactly those assets and checks, as the backfill's runs do. The job's `op_retry_policy` therefore does
not apply to sensor runs: steps retry by their own policy only (Cymru, GreyNoise, the merge, two checks).

Why a ctime watermark: a file's inode change time moves whenever the file is created, written, renamed
or replaced, and unlike mtime it cannot be set back by `cp -p`, `rsync -t` or `touch -d`. So "new or
changed since the last evaluation" is `st_ctime_ns >= watermark`, and the cursor stays a few hundred bytes
however many days the directory holds. The watermark stops GRACE_NS short of the scan's start (a listing
can miss a file created while it runs; timestamps are coarse) and never passes a file that still waits;
the run keys of the days already requested at or above it are kept so a repeat is a no-op (one per day,
however many sensors). A backfill carries no run key, so for a bulk drop the cursor is the only dedup: a
reset or unreadable cursor starts over and requests every rotated log in the directory again (one run for a
single day, which Dagster's run-key check then skips; a backfill re-running the days otherwise: harmless
for the inventory, whose upsert is idempotent, but it repeats the lookups). Assumes the directory's clock is
this host's (local disk, or NFS with NTP).

One thing a ctime cannot tell: a sensor directory renamed into place (`mv .incoming/gamma gamma`, an rsync
to a hidden staging directory, a new symlink to a directory inside) keeps its files' old ctimes. So the
cursor also names the sensor directories seen in full (`sensors`, one short name per directory, not per
file): a directory not among them is scanned in full, every day of it compared with the edge, and joins
them once none of its files waits or was deferred. A cursor from before this field adopts the directories
present, so an upgrade requests nothing old again; one that cannot be listed is reported (the evaluation is
skipped, the cursor kept: nothing is lost, and the ingest could not read the day either).

The cap: MAX_DAYS days per evaluation (oldest change first), the rest follow next evaluation. It was 100
runs when every day was its own run request; Dagster's sensor limits (the tick's submission time, the
enabled-check between submissions, the run-size limit on config and tags) are about run requests, and a
backfill is one request whatever its size, with a subset that serializes as time windows (a year of
contiguous days is one window). So the cap is now a year (366 days): a year's drop is one backfill, split
by the policy into ~12 runs, not four backfills cut at arbitrary days. What it still bounds is the cursor:
right after a `cp -p` of N days (fresh ctimes, old mtimes) the edge holds those days' run keys until the
watermark passes them at the next evaluation; 366 keys are ~14-16 KB, for that one evaluation, whatever
the number of sensors.
"""

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    partition_loading_context,
    sensor,
)
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset  # not exported
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph

from enrichment_pipeline.core.log_layout import rotated_day, sensor_directories
from enrichment_pipeline.partitions import ingest_days
from enrichment_pipeline.resources import CowrieLogDirectory
from enrichment_pipeline.settings import setting

if TYPE_CHECKING:  # what define_asset_job returns; not exported by dagster
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

SENSOR_NAME = "cowrie_log_sensor"
TRIGGER_TAGS = {"enrichment/trigger": SENSOR_NAME}
INTERVAL_ENV = "COWRIE_SENSOR_INTERVAL_S"
SETTLE_NS = 60 * 10**9  # a file modified in the last minute may still be being written or copied: wait
GRACE_NS = 10 * 10**9  # the watermark stays this far behind the scan's start
MAX_DAYS = 366  # days requested per evaluation (oldest change first, one backfill); the rest follow next evaluation
MAX_LISTED = 5  # names listed in a skip reason, log line or tag; the rest are counted
MAX_MESSAGE_CHARS = 300  # an OS error quoted in a skip reason (it names a path: escaped, cut)
_CURSOR_VERSION = 1


@dataclass(frozen=True)
class RotatedLog:
    """One rotated log file: the day it holds, its sensor directory (None: the flat layout), and the version
    (size, mtime) its key names."""

    day: date
    name: str
    size: int
    mtime_ns: int
    ctime_ns: int
    sensor: str | None = None

    @property
    def shown(self) -> str:
        """Its path under COWRIE_LOG_DIR."""
        return self.name if self.sensor is None else f"{self.sensor}/{self.name}"

    @cached_property
    def run_key(self) -> str:
        """`<day>:<size>:<mtime_ns>`, prefixed by `<sensor>/` in a sensor directory (names have no `/`)."""
        version = f"{self.day.isoformat()}:{self.size}:{self.mtime_ns}"
        return version if self.sensor is None else f"{self.sensor}/{version}"


@dataclass(frozen=True)
class DayLogs:
    """A day to run: all of its rotated logs (what its run reads), and those that changed."""

    day: date
    logs: tuple[RotatedLog, ...]  # every directory's file of the day, sorted by run key
    changed: tuple[RotatedLog, ...]

    @cached_property
    def run_key(self) -> str:
        """The one file's run key, or `<day>#<n>:<digest>` naming the versions of the day's n files."""
        if len(self.logs) == 1:
            return self.logs[0].run_key
        keys = "\n".join(log.run_key for log in self.logs)
        return f"{self.day.isoformat()}#{len(self.logs)}:{hashlib.sha256(keys.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class LogCursor:
    """Files with `st_ctime_ns >= watermark` are looked at; `edge` holds the run keys of the days already
    requested there; every file of a sensor directory not in `sensors` is looked at (None: adopt those present).
    """

    watermark_ns: int = 0
    edge: frozenset[str] = field(default_factory=frozenset)
    sensors: frozenset[str] | None = None

    def to_json(self) -> str:
        data: dict[str, object] = {"v": _CURSOR_VERSION, "ctime_ns": self.watermark_ns, "edge": sorted(self.edge)}
        if self.sensors is not None:
            data["sensors"] = sorted(self.sensors)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str | None) -> "LogCursor":
        """The stored cursor; a missing or unreadable one starts over (every rotated log is requested again).
        One without `sensors` (written before sensor directories were watched) is valid: it adopts them."""
        try:
            data = json.loads(text or "")
            watermark, edge, sensors = data["ctime_ns"], data["edge"], data.get("sensors")
            if (
                data["v"] == _CURSOR_VERSION
                and isinstance(watermark, int)
                and isinstance(edge, list)
                and all(isinstance(k, str) for k in edge)
                and (sensors is None or (isinstance(sensors, list) and all(isinstance(s, str) for s in sensors)))
            ):
                return cls(watermark, frozenset(edge), None if sensors is None else frozenset(sensors))
        except (ValueError, TypeError, KeyError, AttributeError):
            pass
        return cls()


@dataclass(frozen=True)
class ScanPlan:
    requests: list[DayLogs]
    cursor: LogCursor
    waiting: list[RotatedLog]  # days not over yet, or with a file still being written
    deferred: int  # changed days beyond MAX_DAYS, requested by a later evaluation


@dataclass(frozen=True)
class LogScan:
    logs: list[RotatedLog]
    refused: list[str]  # entries never looked at: hostile sensor names, symlinks out of COWRIE_LOG_DIR (escaped)


def scan_log_dir(log_dir: str | os.PathLike[str]) -> LogScan:
    """The rotated logs of `log_dir` and of each of its sensor directories, one per directory and day.

    The flat directory is listed once; only if it has a subdirectory does `log_layout.sensor_directories`
    decide which are sensors (listing it again), and each of those is listed once, never deeper. Raises
    OSError when COWRIE_LOG_DIR or a sensor directory cannot be listed (the caller skips the evaluation).
    """
    logs, has_subdirectory = _scan_directory(log_dir, None)
    refused: list[str] = []
    if has_subdirectory:
        sensors, refused = sensor_directories(log_dir)
        root = Path(log_dir).resolve()
        for name, directory in sensors:
            found, _ = _scan_directory(directory, name, inside=root, refused=refused)
            logs += found
    return LogScan(logs, refused)


def scan_rotated_logs(log_dir: str | os.PathLike[str]) -> list[RotatedLog]:
    """The rotated logs in `log_dir` and its sensor directories (see `scan_log_dir`)."""
    return scan_log_dir(log_dir).logs


def _scan_directory(
    directory: str | os.PathLike[str],
    sensor: str | None,
    *,
    inside: Path | None = None,
    refused: list[str] | None = None,
) -> tuple[list[RotatedLog], bool]:
    """One directory's rotated logs, one per day: the plain file when both it and `.gz` exist (as the ingest
    reads it). Names that don't parse, impossible dates and non-files are skipped; so is a log that is a
    symlink resolving outside `inside` (listed in `refused`). Also says whether the listing held a directory."""
    chosen: dict[date, tuple[bool, os.DirEntry[str]]] = {}
    has_subdirectory = False
    with os.scandir(directory) as entries:
        for entry in entries:
            parsed = rotated_day(entry.name)
            if parsed is None:
                if sensor is None and not has_subdirectory:
                    has_subdirectory = _is(entry.is_dir, error=True)  # an unreadable one: let log_layout decide
                continue
            day, gzipped = parsed
            if day in chosen and chosen[day][0] is False:
                continue  # the plain file wins
            if _is(entry.is_file, error=False):  # a symlink loop is no file (as `Path.is_file` says)
                chosen[day] = (gzipped, entry)
    logs = []
    for day, (_, entry) in chosen.items():
        if inside is not None and entry.is_symlink() and not _resolves_inside(entry.path, inside):
            if refused is not None:
                refused.append(f"{sensor}/{entry.name}")
            continue
        try:
            stat = entry.stat()
        except OSError:  # removed since the listing (gzip finished), or unreadable: its change will show
            continue
        logs.append(RotatedLog(day, entry.name, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, sensor))
    return logs, has_subdirectory


def _is(test: Callable[[], bool], *, error: bool) -> bool:
    """`DirEntry.is_dir()` / `is_file()`, which raise for a symlink loop; `error` is the answer then."""
    try:
        return bool(test())
    except OSError:
        return error


def _resolves_inside(path: str, root: Path) -> bool:
    """The rule of `log_layout.day_files`: a sensor's symlinked log is read only if it resolves into COWRIE_LOG_DIR."""
    try:
        return Path(path).resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a loop
        return False


def plan_requests(
    logs: Iterable[RotatedLog], cursor: LogCursor, *, first_day: date, last_day: date, scan_started_ns: int
) -> ScanPlan:
    """Which days to run now, and the next cursor. `first_day`..`last_day` are the ended partitions.

    A day is looked at when one of its files changed (`st_ctime_ns >= watermark`) or lies in a sensor
    directory the cursor has not seen in full, and requested unless the edge holds its run key. A day that
    has not ended yet (Cowrie on a host ahead of UTC rotates early) or one of whose changed files was
    modified less than SETTLE_NS ago waits, whole; the watermark never passes a waiting or deferred file,
    and a sensor directory with one is not marked seen, so none is lost.
    """
    logs = list(logs)
    today = last_day + timedelta(days=1)
    present = {log.sensor for log in logs if log.sensor is not None}
    known = present if cursor.sensors is None else present & cursor.sensors

    def looked_at(log: RotatedLog) -> bool:
        return log.ctime_ns >= cursor.watermark_ns or _unseen(log, known)

    by_day: dict[date, list[RotatedLog]] = {}
    for log in logs:
        if first_day <= log.day <= today:
            by_day.setdefault(log.day, []).append(log)
    waiting: list[RotatedLog] = []
    new: list[DayLogs] = []
    seen: list[DayLogs] = []
    for day, day_logs in by_day.items():
        if not any(looked_at(log) for log in day_logs):
            continue
        day_logs.sort(key=lambda log: log.run_key)
        changed = tuple(log for log in day_logs if looked_at(log))
        if day == today or any(abs(scan_started_ns - log.mtime_ns) < SETTLE_NS for log in changed):
            waiting += changed
            continue
        request = DayLogs(day, tuple(day_logs), changed)
        (seen if request.run_key in cursor.edge else new).append(request)
    new.sort(key=lambda request: (min(log.ctime_ns for log in request.changed), request.day))
    requests, deferred = new[:MAX_DAYS], new[MAX_DAYS:]

    held = [*waiting, *(log for request in deferred for log in request.changed)]
    held_sensors = {log.sensor for log in held}
    known_next = known | (present - held_sensors)  # a directory seen in full joins; one still holding files waits
    handled = seen + requests
    limits = [log.ctime_ns for log in held if not _unseen(log, known_next)]
    limits.append(max((log.ctime_ns for request in handled for log in request.changed), default=cursor.watermark_ns))
    limits.append(scan_started_ns - GRACE_NS)
    watermark = max(cursor.watermark_ns, min(limits))
    edge = frozenset(
        request.run_key
        for request in handled
        if any(log.ctime_ns >= watermark or _unseen(log, known_next) for log in request.logs)
    )
    return ScanPlan(requests, LogCursor(watermark, edge, frozenset(known_next)), waiting, len(deferred))


def _unseen(log: RotatedLog, known: set[str] | frozenset[str]) -> bool:
    """In a sensor directory the cursor has not seen in full: looked at whatever its ctime."""
    return log.sensor is not None and log.sensor not in known


def listed(names: Sequence[str], limit: int = MAX_LISTED) -> str:
    """`a, b, c (+4 more)`: bounded, for skip reasons, log lines and tags."""
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _escaped(text: str) -> str:
    """Text from the filesystem (an OS error naming a path) as one bounded, printable line."""
    printable = text.encode("unicode_escape").decode("ascii")
    return printable[:MAX_MESSAGE_CHARS] + ("…" if len(printable) > MAX_MESSAGE_CHARS else "")


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


def target_asset_keys(job: "UnresolvedAssetJobDefinition", asset_graph: BaseAssetGraph) -> frozenset[AssetKey]:
    """The assets of `job`'s selection, each partitioned by `ingest_days`, checked to be what the sensor's
    runs and backfills run: both run every check that targets a selected asset, so the job must select exactly
    those checks (none excluded, none on an asset outside it). Raises ValueError otherwise."""
    keys = frozenset(job.selection.resolve(asset_graph))
    unpartitioned = sorted(key.to_user_string() for key in keys if asset_graph.get(key).partitions_def != ingest_days)
    if unpartitioned:
        raise ValueError(f"job {job.name}: assets not partitioned by ingest day: {', '.join(unpartitioned)}")
    job_checks = job.selection.resolve_checks(asset_graph)
    run_checks = asset_graph.get_check_keys_for_assets(keys)
    if job_checks != run_checks:
        differ = sorted(check.to_user_string() for check in job_checks ^ run_checks)
        raise ValueError(
            f"job {job.name}: a run of its assets would not run the same checks as the job ({', '.join(differ)})"
        )
    return keys


def day_backfill(asset_keys: Iterable[AssetKey], requests: Sequence[DayLogs]) -> RunRequest:
    """One asset backfill of the days of `requests` for every asset of `asset_keys`; the sensor daemon submits
    it to the backfill daemon, which applies the assets' backfill policy."""
    days = sorted(request.day.isoformat() for request in requests)
    subset = ingest_days.subset_with_partition_keys(days)
    graph_subset = AssetGraphSubset(partitions_subsets_by_asset_key=dict.fromkeys(asset_keys, subset))
    tags = {
        **TRIGGER_TAGS,
        "enrichment/backfill_days": str(len(days)),
        "enrichment/day_range": f"{days[0]}..{days[-1]}",
    }
    return RunRequest.for_asset_graph_subset(graph_subset, tags=tags)


def build_log_sensor(job: "UnresolvedAssetJobDefinition") -> SensorDefinition:
    """The sensor requesting the assets of `job` (partitioned by ingest day) for a new or changed rotated log:
    one run for one day, one backfill when an evaluation finds several."""

    @sensor(
        name=SENSOR_NAME,
        # The job's assets, not the job: Dagster accepts backfill requests only from a sensor that targets an
        # asset selection (SensorDefinition.validate_backfill_requests), and runs a single-day request of
        # such a sensor as the implicit asset job over exactly these assets and their checks.
        asset_selection=job.selection,
        minimum_interval_seconds=sensor_interval_s(),
        # Running by default: a newly rotated log is enriched without an operator's click.
        default_status=DefaultSensorStatus.RUNNING,
        description="Runs a day's partition when a rotated Cowrie log of it (cowrie.json.YYYY-MM-DD[.gz], flat "
        "or in a sensor directory) appears in COWRIE_LOG_DIR or changes, or one backfill when several days do; "
        f"never the live cowrie.json nor a day not over yet ({INTERVAL_ENV}).",
    )
    def cowrie_log_sensor(
        context: SensorEvaluationContext, cowrie_logs: CowrieLogDirectory
    ) -> SensorResult | SkipReason:
        days = ended_days(datetime.now(UTC))
        if days is None:
            return SkipReason("no ingest day has ended yet")
        started = time.time_ns()
        try:
            scan = scan_log_dir(cowrie_logs.log_dir)
        except OSError as error:  # the cursor is kept: nothing is passed while a directory cannot be listed
            return SkipReason(
                "cannot list the Cowrie log directory (COWRIE_LOG_DIR) or one of its sensor directories: "
                + _escaped(str(error))
            )
        plan = plan_requests(
            scan.logs, LogCursor.from_json(context.cursor), first_day=days[0], last_day=days[1], scan_started_ns=started
        )
        cursor = plan.cursor.to_json()
        refused = f"; not scanned: {listed(scan.refused)}" if scan.refused else ""
        if plan.requests:
            if context.repository_def is None:  # a hand-built context: build_sensor_context(repository_def=...)
                raise ValueError(f"{SENSOR_NAME} needs the repository's asset graph to request runs")
            asset_keys = target_asset_keys(job, context.repository_def.asset_graph)
            if refused:
                context.log.warning(refused.removeprefix("; "))
            if len(plan.requests) == 1:
                (request,) = plan.requests
                tags = {**TRIGGER_TAGS, "cowrie/log_file": listed([log.shown for log in request.changed])}
                run = RunRequest(partition_key=request.day.isoformat(), run_key=request.run_key, tags=tags)
                return SensorResult(run_requests=[run], cursor=cursor)
            backfill = day_backfill(asset_keys, plan.requests)
            context.log.info(
                f"requesting one backfill of {len(plan.requests)} days ({backfill.tags['enrichment/day_range']})"
                + (f"; {plan.deferred} more changed days follow next evaluation" if plan.deferred else "")
            )
            return SensorResult(run_requests=[backfill], cursor=cursor)
        waiting = listed(sorted(log.shown for log in plan.waiting)) or "none"
        skip = f"no new or changed rotated log (waiting: {waiting}){refused}"
        return SensorResult(skip_reason=skip, cursor=cursor)

    return cowrie_log_sensor
