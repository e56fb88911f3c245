"""Ingest: each rotated Cowrie log day of the run -> that day's distinct, validated source IPs."""

import time
from datetime import date

import pandas as pd
from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from enrichment_pipeline.assets.common import GROUP, frame_metadata, report_days
from enrichment_pipeline.core.cowrie_log import CowrieLogError, DayLog, read_day_log
from enrichment_pipeline.core.frames import sources_frame, with_day
from enrichment_pipeline.partitions import ingest_backfill_policy, ingest_days
from enrichment_pipeline.resources import CowrieLogDirectory


@asset(partitions_def=ingest_days, backfill_policy=ingest_backfill_policy, group_name=GROUP, kinds={"pandas"})
def cowrie_source_ips(context: AssetExecutionContext, cowrie_logs: CowrieLogDirectory) -> MaterializeResult:
    """Distinct source IPs of each day with session count and first/last seen (bad lines counted, skipped)."""
    days = {}
    for day in context.partition_keys:
        started = time.perf_counter()
        day_log = _read(cowrie_logs, day)
        _warn_about_skipped_lines(context, day_log)
        days[day] = with_day(sources_frame(day_log.sources), day)
        context.add_asset_metadata(_day_metadata(days[day], day_log, time.perf_counter() - started), partition_key=day)
    return report_days(context, pd.concat(days.values(), ignore_index=True))


def _read(cowrie_logs: CowrieLogDirectory, day: str) -> DayLog:
    try:
        return read_day_log(cowrie_logs.path_for(date.fromisoformat(day)))
    except CowrieLogError as error:  # a whole day is unreadable: fail clearly, write nothing
        raise Failure(description=str(error), allow_retries=False) from error


def _warn_about_skipped_lines(context: AssetExecutionContext, day_log: DayLog) -> None:
    stats = day_log.stats
    if stats.skipped_lines + stats.invalid_src_ip or stats.read_error:
        context.log.warning(
            f"{stats.path}: skipped {stats.skipped_lines} unusable lines, rejected {stats.invalid_src_ip} invalid"
            f" src_ip values (bad JSON {stats.bad_json}, oversized {stats.oversized_lines},"
            f" truncated last line {stats.truncated_last_line}, read error {stats.read_error or 'none'});"
            f" examples: {stats.samples}"
        )


def _day_metadata(frame: pd.DataFrame, day_log: DayLog, seconds: float) -> dict:
    stats = day_log.stats
    return frame_metadata(
        frame,
        log_file=MetadataValue.path(stats.path),
        source_ips=len(frame),
        lines=stats.lines,
        events=stats.events,
        bad_json_lines=stats.bad_json,
        truncated_last_line=stats.truncated_last_line,
        missing_src_ip=stats.missing_src_ip,
        invalid_src_ip=stats.invalid_src_ip,
        bad_timestamps=stats.bad_timestamp,
        invalid_utf8_lines=stats.invalid_utf8,
        oversized_lines=stats.oversized_lines,
        read_error=stats.read_error or "",
        seconds=round(seconds, 3),
    )
