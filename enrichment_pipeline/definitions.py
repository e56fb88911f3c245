"""The one Definitions object: assets, checks, jobs, schedules, sensors and resources of the pipeline."""

from dagster import Definitions, ExecutorDefinition, Field, multi_or_in_process_executor

from enrichment_pipeline.assets import enrichment_assets
from enrichment_pipeline.checks import inventory_coverage
from enrichment_pipeline.core.gc_pause import freeze_loaded
from enrichment_pipeline.jobs import enrich_day_celery_job, enrich_day_job, refresh_stale
from enrichment_pipeline.resources import build_resources
from enrichment_pipeline.run_reaper import dead_run_reaper
from enrichment_pipeline.schedules import build_daily_schedule, refresh_stale_schedule
from enrichment_pipeline.sensors import build_log_sensor

# Dagster's default executor, in-process by default: a run is one process and its ~10 short steps share it,
# instead of each paying ~5 s of imports in its own process. `execution: config: multiprocess: {}` in the
# launchpad still gives a run a process per step.
in_process_by_default = ExecutorDefinition(
    name=multi_or_in_process_executor.name,
    config_schema=Field(multi_or_in_process_executor.config_schema.config_type, default_value={"in_process": {}}),
    executor_creation_fn=multi_or_in_process_executor.executor_creation_fn,
    requirements=multi_or_in_process_executor.get_requirements,
    description="In-process unless the run config selects multiprocess.",
)


defs = Definitions(
    assets=enrichment_assets,
    asset_checks=[inventory_coverage],  # the lookups' checks are in their assets (check_specs)
    jobs=[enrich_day_job, enrich_day_celery_job, refresh_stale],
    schedules=[refresh_stale_schedule, build_daily_schedule(enrich_day_job)],
    sensors=[build_log_sensor(enrich_day_job), dead_run_reaper],
    resources=build_resources(),
    executor=in_process_by_default,
)

# Last: everything above stays loaded for the life of the process; the cycle collector need not walk it again.
freeze_loaded()
