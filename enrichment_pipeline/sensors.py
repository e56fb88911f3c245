"""The Cowrie log sensor: when rotated `cowrie.json.YYYY-MM-DD[.gz]` files appear or change, run their days.
One cheap directory scan per evaluation; the cursor is a change-time watermark plus the run keys at its edge.

One day or many: an evaluation that finds exactly one new or changed day requests one run of the assets of
`enrich_day` for it (partition key, run key `<day>:<size>:<mtime_ns>`). One that finds more (an
operator copied a month or a year of logs in) requests ONE asset backfill over exactly those days for every
asset of the job's selection (`RunRequest.for_asset_graph_subset`): the sensor daemon turns it into a
backfill and the backfill daemon runs it by the assets' `BackfillPolicy` (contiguous day ranges per run,
BACKFILL_DAYS_PER_RUN), within the instance's backfill concurrency limits, instead of one queued run per day.
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
the run keys already requested at or above it are kept so a repeat is a no-op. A backfill carries no run
key, so for a bulk drop the cursor is the only dedup: a reset or unreadable cursor starts over and requests
every rotated log in the directory again (one run for a single file, which Dagster's run-key check then
skips; a backfill re-running the days otherwise: harmless for the inventory, whose upsert is idempotent,
but it repeats the lookups). Assumes the directory's clock is this host's (local disk, or NFS with NTP).

The cap: MAX_DAYS days per evaluation (oldest change first), the rest follow next evaluation. It was 100
runs when every day was its own run request; Dagster's sensor limits (the tick's submission time, the
enabled-check between submissions, the run-size limit on config and tags) are about run requests, and a
backfill is one request whatever its size, with a subset that serializes as time windows (a year of
contiguous days is one window). So the cap is now a year (366 days): a year's drop is one backfill, split
by the policy into ~12 runs, not four backfills cut at arbitrary days. What it still bounds is the cursor:
right after a `cp -p` of N files (fresh ctimes, old mtimes) the edge holds all N run keys until the
watermark passes them at the next evaluation; 366 keys are ~14-16 KB, for that one evaluation.
"""

import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
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
# Only Cowrie's rotation names; the live `cowrie.json`, temp files and anything else never match.
ROTATED_NAME = re.compile(r"cowrie\.json\.(\d{4}-\d{2}-\d{2})(\.gz)?", re.ASCII)
SETTLE_NS = 60 * 10**9  # a file modified in the last minute may still be being written or copied: wait
GRACE_NS = 10 * 10**9  # the watermark stays this far behind the scan's start
MAX_DAYS = 366  # days requested per evaluation (oldest change first, one backfill); the rest follow next evaluation
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
        """The stored cursor; a missing or unreadable one starts over (every rotated log is requested again)."""
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
    deferred: int  # changed files beyond MAX_DAYS, requested by a later evaluation


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
    requests, deferred = new[:MAX_DAYS], new[MAX_DAYS:]

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


def day_backfill(asset_keys: Iterable[AssetKey], logs: Sequence[RotatedLog]) -> RunRequest:
    """One asset backfill of the days of `logs` for every asset of `asset_keys`; the sensor daemon submits
    it to the backfill daemon, which applies the assets' backfill policy."""
    days = sorted(log.day.isoformat() for log in logs)
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
        description="Runs a day's partition when its rotated Cowrie log (cowrie.json.YYYY-MM-DD[.gz]) appears "
        "in COWRIE_LOG_DIR or changes, or one backfill when several do; never the live cowrie.json nor a day "
        f"not over yet ({INTERVAL_ENV}).",
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
        cursor = plan.cursor.to_json()
        if plan.requests:
            if context.repository_def is None:  # a hand-built context: build_sensor_context(repository_def=...)
                raise ValueError(f"{SENSOR_NAME} needs the repository's asset graph to request runs")
            asset_keys = target_asset_keys(job, context.repository_def.asset_graph)
            if len(plan.requests) == 1:
                (log,) = plan.requests
                tags = {**TRIGGER_TAGS, "cowrie/log_file": log.name}
                run = RunRequest(partition_key=log.day.isoformat(), run_key=log.run_key, tags=tags)
                return SensorResult(run_requests=[run], cursor=cursor)
            backfill = day_backfill(asset_keys, plan.requests)
            context.log.info(
                f"requesting one backfill of {len(plan.requests)} days ({backfill.tags['enrichment/day_range']})"
                + (f"; {plan.deferred} more changed files follow next evaluation" if plan.deferred else "")
            )
            return SensorResult(run_requests=[backfill], cursor=cursor)
        waiting = ", ".join(sorted(log.name for log in plan.waiting)) or "none"
        skip = f"no new or changed rotated log (waiting: {waiting})"
        return SensorResult(skip_reason=skip, cursor=cursor)

    return cowrie_log_sensor
