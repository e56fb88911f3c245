"""The daily report: after a day is in the inventory, what its sources were, at a glance in the UI.
Top ASNs, countries and GreyNoise classifications of each day's IPs, the ASNs new that day and the day's
ASN changes, and per sensor its IPs, sessions and the IPs only it saw, as markdown tables in its metadata
(one set per day of the run)."""

import time

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from enrichment_pipeline.assets.common import GROUP, TRANSIENT_RETRY, partition_days
from enrichment_pipeline.assets.inventory import merged_inventory
from enrichment_pipeline.core.frames import markdown_table
from enrichment_pipeline.core.inventory import (
    asn_changes_since,
    asns_first_seen_on,
    fetch_inventory,
    ips_seen_on,
    sensor_activity_on,
)
from enrichment_pipeline.core.inventory.analyst import day_start
from enrichment_pipeline.core.report import (
    REPORT_INVENTORY_COLUMNS,
    TOP,
    DailyReport,
    build_daily_report,
    sensor_table,
)
from enrichment_pipeline.partitions import ingest_backfill_policy, ingest_days
from enrichment_pipeline.resources import InventoryDatabase


@asset(
    partitions_def=ingest_days,
    backfill_policy=ingest_backfill_policy,
    group_name=GROUP,
    deps=[merged_inventory],
    kinds={"sqlalchemy"},
    retry_policy=TRANSIENT_RETRY,
)
def daily_report(context: AssetExecutionContext, inventory: InventoryDatabase) -> MaterializeResult:
    """Each day's source IPs by ASN (with organisation), country and GreyNoise classification; the ASNs first
    seen that day and the day's IPs that changed ASN since."""
    engine = inventory.engine()
    days = partition_days(context)
    ips_by_day = {day: ips_seen_on(engine, day) for day in days}
    # One read for the run: an IP seen on many days of a range is fetched (and its JSON decoded) once.
    stored = fetch_inventory(engine, set().union(*ips_by_day.values()), columns=REPORT_INVENTORY_COLUMNS)
    rows_by_ip = {row["ip_address"]: row for row in stored}
    for day in days:
        started = time.perf_counter()
        ips = ips_by_day[day]
        report = build_daily_report(
            day,
            [rows_by_ip[ip] for ip in sorted(ips) if ip in rows_by_ip],
            new_asns=asns_first_seen_on(engine, day),
            asn_changes=asn_changes_since(engine, ips, day_start(day)),
        )
        if len(days) == 1:  # a range's headlines are in its days' metadata, not one log line each
            context.log.info(report.headline)
        sensors = sensor_table(sensor_activity_on(engine, day))
        metadata = {
            **_metadata(report, time.perf_counter() - started),
            "sensors": len(sensors),
            "per_sensor": MetadataValue.md(markdown_table(sensors, limit=len(sensors))),
        }
        context.add_asset_metadata(metadata, partition_key=day.isoformat())
    if len(days) > 1:
        context.log.info(f"reported {len(days)} days, {days[0]}..{days[-1]}: each day's summary is in its metadata")
    return MaterializeResult()


def _metadata(report: DailyReport, seconds: float) -> dict:
    return {
        "summary": MetadataValue.text(report.headline),
        "ips": report.ips,
        "ips_with_asn": report.with_asn,
        "countries": report.countries,
        "greynoise_noise": report.greynoise_noise,
        "greynoise_riot": report.greynoise_riot,
        "top_asns": MetadataValue.md(markdown_table(report.top_asns, limit=TOP + 1)),
        "top_countries": MetadataValue.md(markdown_table(report.top_countries, limit=TOP + 1)),
        "greynoise_classifications": MetadataValue.md(markdown_table(report.greynoise, limit=len(report.greynoise))),
        "new_asns": len(report.new_asns),
        "new_asns_table": MetadataValue.md(markdown_table(report.new_asns, limit=TOP)),
        "asn_changes": len(report.asn_changes),
        "asn_changes_table": MetadataValue.md(markdown_table(report.asn_changes, limit=TOP)),
        "seconds": round(seconds, 3),
    }
