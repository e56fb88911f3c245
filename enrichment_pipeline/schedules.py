"""The schedules: the daily one materializes each ended ingest day through the whole graph (`enrich_day`), on a
cron in a configurable timezone, skipping a day the log sensor already covers; the stale refresh runs
`refresh_stale` every few hours."""

from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dagster import (
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    partition_loading_context,
    schedule,
)

from enrichment_pipeline.assets import merged_inventory
from enrichment_pipeline.jobs import refresh_stale
from enrichment_pipeline.partitions import ingest_days
from enrichment_pipeline.settings import setting

if TYPE_CHECKING:  # what define_asset_job returns; not exported by dagster
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

SCHEDULE_NAME = "enrich_day_schedule"
CRON_ENV, TIMEZONE_ENV = "ENRICHMENT_SCHEDULE_CRON", "ENRICHMENT_SCHEDULE_TZ"
DAY_DONE_ASSET = merged_inventory.key  # its materialization means "this day is in the inventory"
_RANGE_START, _RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
_UNFINISHED_RUNS_LOOKED_AT = 200  # the queue is short: a few runs per backfill slot
_UNFINISHED = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def schedule_timezone() -> str:
    """ENRICHMENT_SCHEDULE_TZ (an IANA name such as Europe/Berlin), default UTC; a bad name fails at load time."""
    name = setting(TIMEZONE_ENV)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"Environment variable {TIMEZONE_ENV} must be an IANA timezone name, got {name!r}") from None
    return name


def schedule_cron() -> str:
    """ENRICHMENT_SCHEDULE_CRON, default 00:30 every day (Dagster validates the expression)."""
    return setting(CRON_ENV)


def newest_ended_day(tick: datetime) -> str | None:
    """The newest ingest day (UTC partition) that has ended at `tick`, or None before the first one ends."""
    with partition_loading_context(effective_dt=tick):
        return ingest_days.get_last_partition_key()


def day_already_covered(instance: DagsterInstance, day: str) -> str | None:
    """Why the day needs no scheduled run (in the inventory, or a run for it is queued or running), else None."""
    done = instance.fetch_materializations(AssetRecordsFilter(asset_key=DAY_DONE_ASSET, asset_partitions=[day]), 1)
    if done.records:
        return f"{day} is already in the inventory (run {done.records[0].run_id})"
    active = instance.get_run_records(RunsFilter(statuses=_UNFINISHED, tags={"dagster/partition": day}), limit=1)
    if active:
        run = active[0].dagster_run
        return f"a run for {day} is already {run.status.value.lower()} ({run.run_id})"
    # A batched backfill run covers a range of days (its tags name the first and the last).
    for record in instance.get_run_records(RunsFilter(statuses=_UNFINISHED), limit=_UNFINISHED_RUNS_LOOKED_AT):
        run = record.dagster_run
        first, last = run.tags.get(_RANGE_START), run.tags.get(_RANGE_END)
        if first and last and first <= day <= last:
            return f"a run for {first}..{last} is already {run.status.value.lower()} ({run.run_id})"
    return None


def build_daily_schedule(job: "UnresolvedAssetJobDefinition") -> ScheduleDefinition:
    """The schedule of the partitioned `job`: each tick requests the newest ended day as that job's partition.

    Dagster's `build_schedule_from_partitioned_job` always ticks in the partitions' timezone (UTC here), so
    the same logic is written out to let the operator choose when, in their timezone, the tick fires.
    """

    @schedule(
        name=SCHEDULE_NAME,
        job=job,
        cron_schedule=schedule_cron(),
        execution_timezone=schedule_timezone(),
        # Running by default: a new deployment enriches every finished day without an operator's click.
        default_status=DefaultScheduleStatus.RUNNING,
        description="Materialize the newest finished ingest day (UTC) through the whole graph, unless the "
        f"log sensor already did ({CRON_ENV} in {TIMEZONE_ENV}).",
    )
    def enrich_day_schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        tick = context.scheduled_execution_time or datetime.now(UTC)
        day = newest_ended_day(tick)
        if day is None:
            return SkipReason(f"no ingest day has ended yet at {tick.isoformat()}")
        covered = day_already_covered(context.instance, day) if context.instance_ref else None
        if covered:
            return SkipReason(covered)
        # run_key = the day: a second tick for the same day (a changed cron, a DST shift) is a no-op.
        return RunRequest(partition_key=day, run_key=day, tags={"enrichment/trigger": SCHEDULE_NAME})

    return enrich_day_schedule


# Every few hours (REFRESH_SCHEDULE, UTC), re-enrich the inventory's most overdue IPs.
refresh_stale_schedule = ScheduleDefinition(
    name="refresh_stale_schedule",
    job=refresh_stale,
    cron_schedule=setting("REFRESH_SCHEDULE"),
    execution_timezone="UTC",
    # Running by default: stale and failed IPs must get refreshed without an operator switching it on.
    default_status=DefaultScheduleStatus.RUNNING,
)
