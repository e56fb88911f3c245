"""The IP inventory database, one module per concern: `schema` (every table), `migrations` (`create_schema`
and the in-place upgrades), `engine` (SQLite/PostgreSQL set-up), `upsert` (the writes), `asns` (the ASN
inventory and IP→ASN history the writes keep), `queries` (the reads), `analyst` (the reads of the `show`,
`asns` and `export` commands and the report), `greynoise_budget` (the shared GreyNoise budget).
What the rest of the pipeline uses is re-exported here."""

from enrichment_pipeline.core.inventory.analyst import (
    EXPORT_COLUMNS,
    ExportFilters,
    asn_changes_since,
    asns_first_seen_on,
    export_rows,
    ip_records,
    list_asns,
)
from enrichment_pipeline.core.inventory.asns import rebuild_asn_inventory, recompute_asn_rows
from enrichment_pipeline.core.inventory.engine import make_engine
from enrichment_pipeline.core.inventory.greynoise_budget import GreyNoiseDailyBudget
from enrichment_pipeline.core.inventory.migrations import create_schema, schema_versions
from enrichment_pipeline.core.inventory.queries import (
    backing_off_ips,
    fetch_failures,
    fetch_inventory,
    fresh_ips,
    ips_seen_on,
    sensor_activity_on,
    stalest_ips,
)
from enrichment_pipeline.core.inventory.schema import (
    ASN_HISTORY,
    ASN_INVENTORY,
    DAILY_ACTIVITY,
    FAILURES,
    GREYNOISE_USAGE,
    INVENTORY,
    SCHEMA_VERSION,
    SENSOR_ACTIVITY,
    Base,
)
from enrichment_pipeline.core.inventory.upsert import (
    UpsertStats,
    upsert_day,
    upsert_days,
    upsert_enrichment,
)
from enrichment_pipeline.core.records import DayActivity, LookupFailure, SensorActivity, SourceUpdate

__all__ = [
    "ASN_HISTORY",
    "ASN_INVENTORY",
    "DAILY_ACTIVITY",
    "EXPORT_COLUMNS",
    "FAILURES",
    "GREYNOISE_USAGE",
    "INVENTORY",
    "SCHEMA_VERSION",
    "SENSOR_ACTIVITY",
    "Base",
    "DayActivity",
    "ExportFilters",
    "GreyNoiseDailyBudget",
    "LookupFailure",
    "SensorActivity",
    "SourceUpdate",
    "UpsertStats",
    "asn_changes_since",
    "asns_first_seen_on",
    "backing_off_ips",
    "create_schema",
    "export_rows",
    "fetch_failures",
    "fetch_inventory",
    "fresh_ips",
    "ip_records",
    "ips_seen_on",
    "sensor_activity_on",
    "list_asns",
    "make_engine",
    "rebuild_asn_inventory",
    "recompute_asn_rows",
    "schema_versions",
    "stalest_ips",
    "upsert_day",
    "upsert_days",
    "upsert_enrichment",
]
