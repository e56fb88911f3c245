"""The floor of a run's fixed cost: one daily-partitioned asset that does nothing, in a job run the same way as
`enrich_day` (`dagster job execute -j floor_day_job --tags '{"dagster/partition": DAY}'`), under the same
in-process executor as the project's Definitions. Nothing of the project is imported: only Dagster's cost is left."""

from dagster import DailyPartitionsDefinition, Definitions, asset, define_asset_job, in_process_executor

# The project's partitions: COWRIE_PARTITION_START's default, UTC days.
floor_days = DailyPartitionsDefinition(start_date="2018-05-01", timezone="UTC")


@asset(partitions_def=floor_days)
def floor_day() -> None:
    """Nothing: what is left of a run is Dagster's process start, imports, instance and event log."""


floor_day_job = define_asset_job("floor_day_job", selection=[floor_day], partitions_def=floor_days)

defs = Definitions(assets=[floor_day], jobs=[floor_day_job], executor=in_process_executor)
