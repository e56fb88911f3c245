"""Ingest: every rotated Cowrie log of each day of the run (flat or one directory per sensor) -> the day's
distinct, validated source IPs (`cowrie_source_ips`) and what each sensor saw of them (`cowrie_sensor_activity`)."""

import time
from datetime import date

import pandas as pd
from dagster import AssetExecutionContext, AssetOut, Failure, MaterializeResult, MetadataValue, multi_asset

from enrichment_pipeline.assets.common import GROUP, TRANSIENT_RETRY, frame_metadata
from enrichment_pipeline.core.activity import combined
from enrichment_pipeline.core.cowrie_log import CowrieLogError, DayLog, read_day_log
from enrichment_pipeline.core.frames import sensor_activity_frame, sources_frame, with_day
from enrichment_pipeline.core.log_layout import DayFiles, day_files
from enrichment_pipeline.partitions import ingest_backfill_policy, ingest_days
from enrichment_pipeline.resources import CowrieLogDirectory

SOURCE_IPS, SENSOR_ACTIVITY = "cowrie_source_ips", "cowrie_sensor_activity"


@multi_asset(
    outs={
        SOURCE_IPS: AssetOut(
            description="Distinct source IPs of each day with session count and first/last seen, summed over "
            "sensors (bad lines counted, skipped).",
            kinds={"pandas"},
        ),
        SENSOR_ACTIVITY: AssetOut(description="The same per sensor: one row per day, sensor and IP.", kinds={"pandas"}),
    },
    partitions_def=ingest_days,
    backfill_policy=ingest_backfill_policy,
    group_name=GROUP,
    retry_policy=TRANSIENT_RETRY,
)
def cowrie_logs_ingest(context: AssetExecutionContext, cowrie_logs: CowrieLogDirectory):
    """Read every sensor's log of each day once; a day no sensor has fails the run naming the directory."""
    sources, sensors = [], []
    for day in context.partition_keys:
        started = time.perf_counter()
        files = _files(cowrie_logs, day)
        logs = [(log.sensor, _read(context, log.path, log.sensor)) for log in files.logs]
        by_sensor = _by_sensor(logs)
        day_sources = with_day(sources_frame(combined(by_sensor.values())), day)
        day_sensors = with_day(sensor_activity_frame(by_sensor), day)
        sources.append(day_sources)
        sensors.append(day_sensors)
        seconds = time.perf_counter() - started
        read = {"sensors_read": ", ".join(sorted(by_sensor)), "sensors_missing": ", ".join(files.missing_sensors)}
        context.add_asset_metadata(
            {**_day_metadata(day_sources, files, logs, seconds), **read}, asset_key=SOURCE_IPS, partition_key=day
        )
        context.add_asset_metadata(
            frame_metadata(day_sensors, sensors=len(by_sensor), **read), asset_key=SENSOR_ACTIVITY, partition_key=day
        )
    run = {"days_in_run": len(context.partition_keys)} if len(context.partition_keys) > 1 else {}
    yield MaterializeResult(asset_key=SOURCE_IPS, value=pd.concat(sources, ignore_index=True), metadata=run)
    yield MaterializeResult(asset_key=SENSOR_ACTIVITY, value=pd.concat(sensors, ignore_index=True), metadata=run)


def _files(cowrie_logs: CowrieLogDirectory, day: str) -> DayFiles:
    try:
        return day_files(cowrie_logs.log_dir, date.fromisoformat(day))
    except (CowrieLogError, OSError) as error:  # no sensor has the day, or the directory is unreadable
        raise Failure(description=str(error), allow_retries=False) from error


def _read(context: AssetExecutionContext, path, sensor: str | None) -> DayLog:
    try:
        day_log = read_day_log(path, sensor=sensor)
    except CowrieLogError as error:  # a whole file is unreadable: fail clearly, write nothing
        raise Failure(description=str(error), allow_retries=False) from error
    stats = day_log.stats
    if stats.skipped_lines + stats.invalid_src_ip or stats.read_error:
        context.log.warning(
            f"{stats.path}: skipped {stats.skipped_lines} unusable lines, rejected {stats.invalid_src_ip} invalid"
            f" src_ip values (bad JSON {stats.bad_json}, oversized {stats.oversized_lines},"
            f" truncated last line {stats.truncated_last_line}, read error {stats.read_error or 'none'});"
            f" examples: {stats.samples}"
        )
    return day_log


def _by_sensor(logs: list[tuple[str | None, DayLog]]) -> dict:
    """Each sensor's activity of the day; a sensor named by both a directory and a flat file's events
    (an odd but possible mix) gets both files' activity combined."""
    parts: dict[str, list] = {}
    for _, day_log in logs:
        for sensor, rows in day_log.by_sensor.items():
            parts.setdefault(sensor, []).append(rows)
    return {sensor: combined(rows) for sensor, rows in sorted(parts.items())}


def _day_metadata(frame: pd.DataFrame, files: DayFiles, logs: list[tuple[str | None, DayLog]], seconds: float) -> dict:
    stats = [day_log.stats for _, day_log in logs]
    total = {name: sum(getattr(s, name) for s in stats) for name in _COUNTERS}
    paths = [s.path for s in stats]
    return frame_metadata(
        frame,
        log_file=MetadataValue.path(paths[0]) if len(paths) == 1 else MetadataValue.text(", ".join(paths)),
        source_ips=len(frame),
        lines=total["lines"],
        events=total["events"],
        bad_json_lines=total["bad_json"],
        truncated_last_line=any(s.truncated_last_line for s in stats),
        missing_src_ip=total["missing_src_ip"],
        invalid_src_ip=total["invalid_src_ip"],
        bad_timestamps=total["bad_timestamp"],
        invalid_utf8_lines=total["invalid_utf8"],
        oversized_lines=total["oversized_lines"],
        read_error="; ".join(s.read_error for s in stats if s.read_error),
        rejected_names=", ".join(files.rejected_names),
        seconds=round(seconds, 3),
    )


_COUNTERS = (
    "lines",
    "events",
    "bad_json",
    "missing_src_ip",
    "invalid_src_ip",
    "bad_timestamp",
    "invalid_utf8",
    "oversized_lines",
)
