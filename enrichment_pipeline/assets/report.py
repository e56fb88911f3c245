"""The daily report: after a day is in the inventory, what its sources were, at a glance in the UI.
Top ASNs, countries and GreyNoise classifications of the day's IPs, as markdown tables in the metadata."""

import time

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from enrichment_pipeline.assets.common import GROUP, partition_day
from enrichment_pipeline.assets.inventory import merged_inventory
from enrichment_pipeline.core.frames import markdown_table
from enrichment_pipeline.core.inventory import fetch_inventory, ips_seen_on
from enrichment_pipeline.core.report import TOP, build_daily_report
from enrichment_pipeline.partitions import ingest_days
from enrichment_pipeline.resources import InventoryDatabase


@asset(partitions_def=ingest_days, group_name=GROUP, deps=[merged_inventory], kinds={"sqlalchemy"})
def daily_report(context: AssetExecutionContext, inventory: InventoryDatabase) -> MaterializeResult:
    """The day's source IPs by ASN (with organisation), country and GreyNoise classification."""
    started = time.perf_counter()
    engine = inventory.engine()
    day = partition_day(context)
    report = build_daily_report(day, fetch_inventory(engine, ips_seen_on(engine, day)))
    context.log.info(report.headline)
    return MaterializeResult(
        metadata={
            "summary": MetadataValue.text(report.headline),
            "ips": report.ips,
            "ips_with_asn": report.with_asn,
            "countries": report.countries,
            "greynoise_noise": report.greynoise_noise,
            "greynoise_riot": report.greynoise_riot,
            "top_asns": MetadataValue.md(markdown_table(report.top_asns, limit=TOP + 1)),
            "top_countries": MetadataValue.md(markdown_table(report.top_countries, limit=TOP + 1)),
            "greynoise_classifications": MetadataValue.md(
                markdown_table(report.greynoise, limit=len(report.greynoise))
            ),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
