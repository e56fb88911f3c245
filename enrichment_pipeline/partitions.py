"""The ingest-day partitions: one partition per rotated Cowrie log day (UTC)."""

from dagster import DailyPartitionsDefinition

from enrichment_pipeline.settings import setting

ingest_days = DailyPartitionsDefinition(start_date=setting("COWRIE_PARTITION_START"), timezone="UTC")
