"""Pass 4: merge the passes and upsert the day into `ip_inventory`, with the retry list, in one transaction."""

from collections.abc import Mapping
from datetime import date
from typing import Any

import pandas as pd
from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from enrichment_pipeline.assets.common import GROUP, TRANSIENT_RETRY
from enrichment_pipeline.core import freshness as clock
from enrichment_pipeline.core.frames import (
    activity_by_day,
    distinct_ips,
    frame_builds,
    lookup_failures,
    sensor_activity_by_day,
    source_updates,
)
from enrichment_pipeline.core.inventory import fresh_ips, upsert_days
from enrichment_pipeline.partitions import ingest_backfill_policy, ingest_days
from enrichment_pipeline.resources import FreshnessResource, InventoryDatabase


@asset(
    partitions_def=ingest_days,
    backfill_policy=ingest_backfill_policy,
    group_name=GROUP,
    kinds={"sqlalchemy"},
    # The upsert is one transaction, so a retry after a dropped connection or lock timeout is safe.
    retry_policy=TRANSIENT_RETRY,
)
def merged_inventory(
    context: AssetExecutionContext,
    cowrie_source_ips: pd.DataFrame,
    cowrie_sensor_activity: pd.DataFrame,
    maxmind_results: pd.DataFrame,
    cymru_bulk_results: pd.DataFrame,
    greynoise_results: pd.DataFrame,
    inventory: InventoryDatabase,
    freshness: FreshnessResource,
) -> MaterializeResult:
    """One row per IP: MaxMind first, Cymru as fallback for ASN and country, GreyNoise's verdict; counts
    merged across days. Failed lookups go to `enrichment_failures`; an answer clears its entry."""
    engine = inventory.engine()
    now = clock.utc_now()
    maxmind, cymru, greynoise = (
        distinct_ips(frame) for frame in (maxmind_results, cymru_bulk_results, greynoise_results)
    )
    ttl = freshness.policy().maxmind_ttl
    builds = frame_builds(maxmind)
    maxmind_fresh = fresh_ips(engine, maxmind["ip"], "maxmind", ttl, now=now, maxmind_builds=builds)
    updates = source_updates(maxmind, cymru, greynoise, maxmind_fresh=maxmind_fresh)
    days = activity_by_day(cowrie_source_ips, context.partition_keys)
    sensors = sensor_activity_by_day(cowrie_sensor_activity, context.partition_keys)
    # One transaction for the whole run: a range run that fails leaves every one of its days as it was.
    stats = upsert_days(
        engine,
        _by_date(days),
        updates,
        now=now,
        failures=lookup_failures(cymru, greynoise),
        sensor_activity=_by_date(sensors),
    )
    context.log.info(
        f"ip_inventory: {stats.inserted} inserted, {stats.updated} updated for {len(days)} day(s) in"
        f" {stats.seconds:.2f} s; retry list: {stats.failures_recorded} recorded, {stats.failures_cleared} cleared"
    )
    for day, rows in days.items():
        context.add_asset_metadata({"dagster/row_count": len(rows), "activity_rows": len(rows)}, partition_key=day)
    return MaterializeResult(
        metadata={
            "rows_inserted": stats.inserted,
            "rows_updated": stats.updated,
            "maxmind_skipped_fresh": len(maxmind_fresh),
            "greynoise_stored": sum(update.greynoise is not None for update in updates),
            "failures_recorded": stats.failures_recorded,
            "failures_cleared": stats.failures_cleared,
            "database": MetadataValue.text(engine.url.render_as_string(hide_password=True)),
            "seconds": round(stats.seconds, 3),
            **({"days_in_run": len(days)} if len(days) > 1 else {}),
        }
    )


def _by_date(by_day: Mapping[str, list[Any]]) -> dict[date, list[Any]]:
    """Rows keyed by partition key, keyed by the day it names (what the inventory's writes take)."""
    return {date.fromisoformat(day): rows for day, rows in by_day.items()}
