"""Pass 4: merge the passes and upsert the day into `ip_inventory`, in one transaction."""


from datetime import UTC, datetime

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from enrichment_pipeline.assets.common import GROUP, partition_day
from enrichment_pipeline.core.frames import day_activity, source_updates
from enrichment_pipeline.core.inventory import upsert_day
from enrichment_pipeline.partitions import ingest_days
from enrichment_pipeline.resources import InventoryDatabase


@asset(partitions_def=ingest_days, group_name=GROUP, kinds={"sqlalchemy"})
def merged_inventory(
    context: AssetExecutionContext,
    cowrie_source_ips: pd.DataFrame,
    maxmind_results: pd.DataFrame,
    cymru_bulk_results: pd.DataFrame,
    inventory: InventoryDatabase,
) -> MaterializeResult:
    """One row per IP: MaxMind first, Cymru as fallback for ASN and country; counts merged across days."""
    engine = inventory.engine()
    stats = upsert_day(
        engine,
        partition_day(context),
        day_activity(cowrie_source_ips),
        source_updates(maxmind_results, cymru_bulk_results),
        now=datetime.now(UTC),
    )
    context.log.info(f"ip_inventory: {stats.inserted} inserted, {stats.updated} updated in {stats.seconds:.2f} s")
    return MaterializeResult(
        metadata={
            "dagster/row_count": stats.inserted + stats.updated,
            "rows_inserted": stats.inserted,
            "rows_updated": stats.updated,
            "activity_rows": stats.activity_rows,
            "database": MetadataValue.text(engine.url.render_as_string(hide_password=True)),
            "seconds": round(stats.seconds, 3),
        }
    )
