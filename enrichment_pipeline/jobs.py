"""Every job of the pipeline: `enrich_day` (the daily-partitioned asset graph) and `refresh_stale` (the
inventory's overdue IPs, any day)."""

from dagster import AssetSelection, Backoff, Jitter, RetryPolicy, define_asset_job, job

from enrichment_pipeline.assets import daily_report, merged_inventory
from enrichment_pipeline.ops import refresh_stale_ips

# `*merged_inventory` and the day's report: the whole graph for one ingest day.
enrich_day_job = define_asset_job(
    "enrich_day",
    selection=AssetSelection.assets(merged_inventory).upstream() | AssetSelection.assets(daily_report),
    description="Enrich every source IP of one Cowrie log day and upsert it into ip_inventory.",
    # Steps without their own policy retry transient errors (a busy database, a network blip); bad
    # configuration raises Failure(allow_retries=False) and is not retried.
    op_retry_policy=RetryPolicy(max_retries=2, delay=10, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS),
)


@job(description="Re-enrich the stalest and due-for-retry IPs of the whole ip_inventory (not partitioned).")
def refresh_stale() -> None:
    refresh_stale_ips()
