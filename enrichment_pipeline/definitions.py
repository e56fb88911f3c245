"""The one Definitions object: assets, resources and jobs of the enrichment pipeline."""

from dagster import AssetSelection, Definitions, define_asset_job

from enrichment_pipeline.assets import enrichment_assets, merged_inventory
from enrichment_pipeline.partitions import ingest_days
from enrichment_pipeline.resources import CowrieLogDirectory, CymruResource, GeoIpResource, InventoryDatabase
from enrichment_pipeline.settings import env_float, env_int, env_str

# `*merged_inventory`: the whole graph for one ingest day.
enrich_day_job = define_asset_job(
    "enrich_day",
    selection=AssetSelection.assets(merged_inventory).upstream(),
    partitions_def=ingest_days,
    description="Enrich every source IP of one Cowrie log day and upsert it into ip_inventory.",
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
    }


defs = Definitions(
    assets=enrichment_assets,
    asset_checks=[],
    jobs=[enrich_day_job],
    schedules=[],
    sensors=[],
    resources=build_resources(),
)
