"""Small helpers shared by the asset bodies: the partition's day and standard output metadata."""

from datetime import date
from typing import Any

import pandas as pd
from dagster import (
    AssetExecutionContext,
    Backoff,
    Jitter,
    MetadataValue,
    RetryPolicy,
    TableColumn,
    TableSchema,
)

from enrichment_pipeline.core.frames import markdown_table

GROUP = "ip_enrichment"
# For the network passes: lookup failures are returned, not raised, so a retry only helps against an
# unexpected transient error (a dropped database connection, a resolver hiccup).
NETWORK_RETRY = RetryPolicy(max_retries=2, delay=30, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)


def partition_day(context: AssetExecutionContext) -> date:
    return date.fromisoformat(context.partition_key)


def frame_metadata(frame: pd.DataFrame, **extra: Any) -> dict[str, Any]:
    """Row count, column schema and a markdown preview, plus the asset's own counters."""
    schema = TableSchema(columns=[TableColumn(name, str(dtype)) for name, dtype in frame.dtypes.items()])
    return {
        "dagster/row_count": len(frame),
        "dagster/column_schema": schema,
        "preview": MetadataValue.md(markdown_table(frame)),
        **extra,
    }
