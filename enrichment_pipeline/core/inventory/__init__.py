"""The IP inventory database, one module per concern: `schema` (every table), `engine` (SQLite/PostgreSQL
set-up), `upsert` (the writes), `queries` (the reads), `greynoise_budget` (the shared GreyNoise budget).
What the rest of the pipeline uses is re-exported here."""

from enrichment_pipeline.core.inventory.engine import make_engine
from enrichment_pipeline.core.inventory.greynoise_budget import GreyNoiseDailyBudget
from enrichment_pipeline.core.inventory.queries import (
    backing_off_ips,
    fetch_failures,
    fetch_inventory,
    fresh_ips,
    ips_seen_on,
    stalest_ips,
)
from enrichment_pipeline.core.inventory.schema import (
    DAILY_ACTIVITY,
    FAILURES,
    GREYNOISE_USAGE,
    INVENTORY,
    Base,
    create_schema,
)
from enrichment_pipeline.core.inventory.upsert import (
    UpsertStats,
    upsert_day,
    upsert_days,
    upsert_enrichment,
)
from enrichment_pipeline.core.records import DayActivity, LookupFailure, SourceUpdate

__all__ = [
    "DAILY_ACTIVITY",
    "FAILURES",
    "GREYNOISE_USAGE",
    "INVENTORY",
    "Base",
    "DayActivity",
    "GreyNoiseDailyBudget",
    "LookupFailure",
    "SourceUpdate",
    "UpsertStats",
    "backing_off_ips",
    "create_schema",
    "fetch_failures",
    "fetch_inventory",
    "fresh_ips",
    "ips_seen_on",
    "make_engine",
    "stalest_ips",
    "upsert_day",
    "upsert_days",
    "upsert_enrichment",
]
