"""Ingest: one rotated Cowrie log day -> that day's distinct, validated source IPs."""

import time

from dagster import (
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from enrichment_pipeline.assets.common import GROUP, frame_metadata, partition_day
from enrichment_pipeline.core.cowrie_log import CowrieLogError, read_day_log
from enrichment_pipeline.core.frames import sources_frame
from enrichment_pipeline.partitions import ingest_days
from enrichment_pipeline.resources import CowrieLogDirectory


@asset(partitions_def=ingest_days, group_name=GROUP, kinds={"pandas"})
def cowrie_source_ips(context: AssetExecutionContext, cowrie_logs: CowrieLogDirectory) -> MaterializeResult:
    """Distinct source IPs of the day with session count and first/last seen (bad lines counted, skipped)."""
    started = time.perf_counter()
    try:
        day_log = read_day_log(cowrie_logs.path_for(partition_day(context)))
    except CowrieLogError as error:  # the whole day is unreadable: fail clearly, write nothing
        raise Failure(description=str(error), allow_retries=False) from error
    stats = day_log.stats
    rejected = stats.skipped_lines + stats.invalid_src_ip
    if rejected or stats.read_error:
        context.log.warning(
            f"{stats.path}: skipped {stats.skipped_lines} unusable lines, rejected {stats.invalid_src_ip} invalid"
            f" src_ip values (bad JSON {stats.bad_json}, oversized {stats.oversized_lines},"
            f" truncated last line {stats.truncated_last_line}, read error {stats.read_error or 'none'});"
            f" examples: {stats.samples}"
        )
    frame = sources_frame(day_log.sources)
    return MaterializeResult(
        value=frame,
        metadata=frame_metadata(
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
            seconds=round(time.perf_counter() - started, 3),
        ),
    )
