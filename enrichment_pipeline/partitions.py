"""The ingest-day partitions (one per rotated Cowrie log day, UTC) and how a backfill batches them."""

import warnings

from dagster import BackfillPolicy, BetaWarning, DailyPartitionsDefinition

from enrichment_pipeline.settings import setting

# `backfill_policy` on assets is "beta" in Dagster 1.13; the exact pin in pyproject.toml guards it.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=BetaWarning)

ingest_days = DailyPartitionsDefinition(start_date=setting("COWRIE_PARTITION_START"), timezone="UTC")


def backfill_days_per_run() -> int:
    """BACKFILL_DAYS_PER_RUN: contiguous days one backfill run covers at most (default 31)."""
    raw = setting("BACKFILL_DAYS_PER_RUN")
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"Environment variable BACKFILL_DAYS_PER_RUN must be a positive integer, got {raw!r}")
    return int(raw)


# A UI backfill of a year is ~12 runs over contiguous ranges instead of 365 one-day runs; every asset of
# `enrich_day` has it, so a range runs the whole graph. The sensor and the schedule still ask for single days.
ingest_backfill_policy = BackfillPolicy.multi_run(max_partitions_per_run=backfill_days_per_run())
