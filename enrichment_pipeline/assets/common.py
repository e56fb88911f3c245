"""Small helpers shared by the asset bodies: the run's days and standard output metadata, per day."""

from collections.abc import Callable
from datetime import date
from typing import Any

import pandas as pd
from dagster import (
    AssetExecutionContext,
    Backoff,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    TableColumn,
    TableSchema,
)

from enrichment_pipeline.core.frames import markdown_table, split_days

GROUP = "ip_enrichment"
# For the network passes: lookup failures are returned, not raised, so a retry only helps against an
# unexpected transient error (a dropped database connection, a resolver hiccup).
NETWORK_RETRY = RetryPolicy(max_retries=2, delay=30, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)
# Every other step retries transient errors (a busy database, a dropped connection) on its own, whichever job
# runs it (the sensor's and the UI's asset backfills run Dagster's asset job, not `enrich_day`); bad
# configuration raises Failure(allow_retries=False) and is not retried.
TRANSIENT_RETRY = RetryPolicy(max_retries=2, delay=10, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)


def partition_days(context: AssetExecutionContext) -> list[date]:
    """The days of the run: one for a sensor or schedule run, a contiguous range for a backfill run."""
    return [date.fromisoformat(key) for key in context.partition_keys]


def report_days(
    context: AssetExecutionContext,
    frame: pd.DataFrame,
    counts: Callable[[str, pd.DataFrame], dict[str, Any]] | None = None,
    **run_metadata: Any,
) -> MaterializeResult:
    """The output of a per-day frame: each day of the run gets its own row count, schema, preview and
    `counts(day, rows)` (shown per partition in the UI); `run_metadata` describes the run's work as a whole."""
    if counts is not None:
        schema = table_schema(frame)  # every day has the frame's columns
        for day, part in split_days(frame, context.partition_keys).items():
            context.add_asset_metadata(frame_metadata(part, schema, **counts(day, part)), partition_key=day)
    if len(context.partition_keys) > 1:
        run_metadata["days_in_run"] = len(context.partition_keys)
    return MaterializeResult(value=frame, metadata=run_metadata)


def table_schema(frame: pd.DataFrame) -> TableSchema:
    return TableSchema(columns=[TableColumn(name, str(dtype)) for name, dtype in frame.dtypes.items()])


def frame_metadata(frame: pd.DataFrame, schema: TableSchema | None = None, **extra: Any) -> dict[str, Any]:
    """Row count, column schema (`schema`, or the frame's) and a markdown preview, plus the asset's own
    counters."""
    return {
        "dagster/row_count": len(frame),
        "dagster/column_schema": table_schema(frame) if schema is None else schema,
        "preview": MetadataValue.md(markdown_table(frame)),
        **extra,
    }
