"""Dagster resources: typed configuration plus a factory for each core client, and `build_resources`, the
one place where settings become resources (for the Definitions and the command line alike)."""

from typing import Any

from enrichment_pipeline.resources.cowrie_logs import CowrieLogDirectory
from enrichment_pipeline.resources.cymru import CymruResource
from enrichment_pipeline.resources.freshness import FreshnessResource
from enrichment_pipeline.resources.greynoise import GreyNoiseResource
from enrichment_pipeline.resources.inventory import InventoryDatabase
from enrichment_pipeline.resources.maxmind import MaxMindResource
from enrichment_pipeline.resources.parquet_io_manager import DailyParquetIOManager
from enrichment_pipeline.settings import env_float, env_int, env_str

__all__ = [
    "CowrieLogDirectory",
    "CymruResource",
    "DailyParquetIOManager",
    "FreshnessResource",
    "GreyNoiseResource",
    "InventoryDatabase",
    "MaxMindResource",
    "build_resources",
]


def build_resources(*, resolved: bool = False) -> dict[str, Any]:
    """Resources configured from the environment (see README, 'Environment variables').

    In the Definitions a set variable is passed as `EnvVar`, so the UI shows where a value came from; with
    `resolved` the values themselves are used, for clients built outside Dagster (the `refresh` command).
    """

    def text(name: str) -> Any:
        return env_str(name, resolved=resolved)

    def integer(name: str) -> Any:
        return env_int(name, resolved=resolved)

    return {
        "io_manager": DailyParquetIOManager(base_dir=text("ENRICHMENT_STORAGE_DIR")),
        "cowrie_logs": CowrieLogDirectory(log_dir=text("COWRIE_LOG_DIR")),
        "maxmind": MaxMindResource(city_db=text("GEOIP_CITY_DB"), asn_db=text("GEOIP_ASN_DB")),
        "cymru": CymruResource(
            host=text("CYMRU_HOST"),
            port=integer("CYMRU_PORT"),
            batch_size=integer("CYMRU_BATCH_SIZE"),
            timeout_s=env_float("CYMRU_TIMEOUT_S"),
            max_parallel=integer("CYMRU_MAX_PARALLEL"),
        ),
        "inventory": InventoryDatabase(url=text("ENRICHMENT_DB_URL")),
        "freshness": FreshnessResource(
            maxmind_ttl_days=env_float("MAXMIND_TTL_DAYS"),
            cymru_ttl_days=env_float("CYMRU_TTL_DAYS"),
            greynoise_ttl_days=env_float("GREYNOISE_TTL_DAYS"),
        ),
        # The key only ever through EnvVar in the Definitions (empty when unset: GreyNoise is then skipped).
        "greynoise": GreyNoiseResource(
            api_key=text("GREYNOISE_API_KEY"),
            api_url=text("GREYNOISE_API_URL"),
            rate_per_s=env_float("GREYNOISE_RATE_PER_S"),
            daily_limit=integer("GREYNOISE_DAILY_LIMIT"),
            pass_deadline_s=env_float("GREYNOISE_PASS_DEADLINE_S"),
        ),
    }
