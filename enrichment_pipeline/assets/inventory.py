"""Pass 4: merge the passes and upsert the day into `ip_inventory`, with the retry list, in one transaction."""

import pandas as pd
from dagster import (
    AssetExecutionContext,
    Backoff,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)

from enrichment_pipeline.assets.common import GROUP, partition_day
from enrichment_pipeline.core import freshness as clock
from enrichment_pipeline.core.frames import (
    day_activity,
    frame_builds,
    lookup_failures,
    source_updates,
)
from enrichment_pipeline.core.inventory import fresh_ips, upsert_day
from enrichment_pipeline.partitions import ingest_days
from enrichment_pipeline.resources import FreshnessResource, InventoryDatabase


@asset(
    partitions_def=ingest_days,
    group_name=GROUP,
    kinds={"sqlalchemy"},
    # The upsert is one transaction, so a retry after a dropped connection or lock timeout is safe.
    retry_policy=RetryPolicy(max_retries=2, delay=10, backoff=Backoff.EXPONENTIAL),
)
def merged_inventory(
    context: AssetExecutionContext,
    cowrie_source_ips: pd.DataFrame,
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
    builds = frame_builds(maxmind_results)
    ttl = freshness.policy().maxmind_ttl
    maxmind_fresh = fresh_ips(engine, maxmind_results["ip"], "maxmind", ttl, now=now, maxmind_builds=builds)
    updates = source_updates(maxmind_results, cymru_bulk_results, greynoise_results, maxmind_fresh=maxmind_fresh)
    failures = lookup_failures(cymru_bulk_results, greynoise_results)
    stats = upsert_day(
        engine, partition_day(context), day_activity(cowrie_source_ips), updates, now=now, failures=failures
    )
    context.log.info(
        f"ip_inventory: {stats.inserted} inserted, {stats.updated} updated in {stats.seconds:.2f} s;"
        f" retry list: {stats.failures_recorded} recorded, {stats.failures_cleared} cleared"
    )
    return MaterializeResult(
        metadata={
            "dagster/row_count": stats.inserted + stats.updated,
            "rows_inserted": stats.inserted,
            "rows_updated": stats.updated,
            "activity_rows": stats.activity_rows,
            "maxmind_skipped_fresh": len(maxmind_fresh),
            "greynoise_stored": sum(update.greynoise is not None for update in updates),
            "failures_recorded": stats.failures_recorded,
            "failures_cleared": stats.failures_cleared,
            "database": MetadataValue.text(engine.url.render_as_string(hide_password=True)),
            "seconds": round(stats.seconds, 3),
        }
    )
