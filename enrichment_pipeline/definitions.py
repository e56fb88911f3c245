"""The one Definitions object: assets, resources and jobs of the enrichment pipeline."""

from dagster import (
    AssetSelection,
    Backoff,
    Definitions,
    ExecutorDefinition,
    Field,
    Jitter,
    RetryPolicy,
    define_asset_job,
    multi_or_in_process_executor,
)

from enrichment_pipeline.assets import daily_report, enrichment_assets, merged_inventory
from enrichment_pipeline.checks import (
    asn_coverage,
    every_ingested_ip_in_inventory,
    no_failed_cymru_batches,
    no_failed_greynoise_lookups,
)
from enrichment_pipeline.refresh import refresh_stale, refresh_stale_schedule
from enrichment_pipeline.resources import (
    CowrieLogDirectory,
    CymruResource,
    GeoIpResource,
    GreyNoiseResource,
    InventoryDatabase,
)
from enrichment_pipeline.schedules import build_daily_schedule
from enrichment_pipeline.sensors import build_log_sensor
from enrichment_pipeline.settings import env_float, env_int, env_str

# `*merged_inventory` and the day's report: the whole graph for one ingest day.
enrich_day_job = define_asset_job(
    "enrich_day",
    selection=AssetSelection.assets(merged_inventory).upstream() | AssetSelection.assets(daily_report),
    description="Enrich every source IP of one Cowrie log day and upsert it into ip_inventory.",
    # Steps without their own policy retry transient errors (a busy database, a network blip); bad
    # configuration raises Failure(allow_retries=False) and is not retried.
    op_retry_policy=RetryPolicy(max_retries=2, delay=10, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS),
)

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


def build_resources() -> dict:
    """Resources configured from the environment (see README, 'Environment variables')."""
    return {
        "cowrie_logs": CowrieLogDirectory(log_dir=env_str("COWRIE_LOG_DIR")),
        "geoip": GeoIpResource(city_db=env_str("GEOIP_CITY_DB"), asn_db=env_str("GEOIP_ASN_DB")),
        "cymru": CymruResource(
            host=env_str("CYMRU_HOST"),
            port=env_int("CYMRU_PORT"),
            batch_size=env_int("CYMRU_BATCH_SIZE"),
            timeout_s=env_float("CYMRU_TIMEOUT_S"),
            max_parallel=env_int("CYMRU_MAX_PARALLEL"),
        ),
        "inventory": InventoryDatabase(url=env_str("ENRICHMENT_DB_URL")),
        # The key only ever through EnvVar (env_str gives "" when unset: GreyNoise is then skipped).
        "greynoise": GreyNoiseResource(
            api_key=env_str("GREYNOISE_API_KEY"),
            api_url=env_str("GREYNOISE_API_URL"),
            rate_per_s=env_float("GREYNOISE_RATE_PER_S"),
            daily_limit=env_int("GREYNOISE_DAILY_LIMIT"),
            ttl_days=env_float("GREYNOISE_TTL_DAYS"),
        ),
    }


defs = Definitions(
    assets=enrichment_assets,
    asset_checks=[every_ingested_ip_in_inventory, asn_coverage, no_failed_cymru_batches, no_failed_greynoise_lookups],
    jobs=[enrich_day_job, refresh_stale],
    schedules=[refresh_stale_schedule, build_daily_schedule(enrich_day_job)],
    sensors=[build_log_sensor(enrich_day_job)],
    resources=build_resources(),
    executor=in_process_by_default,
)
