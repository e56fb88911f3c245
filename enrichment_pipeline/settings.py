"""Environment variables the pipeline reads, with their embedded defaults, in one place.

Names are contracts with operators' tooling: keep them exactly. Resources take these values through
`EnvVar` when the variable is set, so the Dagster UI shows where a setting came from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dagster import EnvVar

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_LOG_DIR = PROJECT_ROOT / "data" / "sample_logs"
DEFAULT_DB_PATH = PROJECT_ROOT / "dagster_home" / "inventory.sqlite"

DEFAULTS: dict[str, str] = {
    "COWRIE_LOG_DIR": str(SAMPLE_LOG_DIR),
    "COWRIE_PARTITION_START": "2018-05-01",
    "GEOIP_CITY_DB": "",  # empty: the GeoLite2-City database shipped by maxminddb-geolite2
    "GEOIP_ASN_DB": "",  # empty: no ASN database (warned about; Cymru fills the gap)
    "CYMRU_HOST": "whois.cymru.com",
    "CYMRU_PORT": "43",
    "CYMRU_BATCH_SIZE": "500",
    "CYMRU_TIMEOUT_S": "60",
    "CYMRU_MAX_PARALLEL": "8",
    "ENRICHMENT_DB_URL": f"sqlite:///{DEFAULT_DB_PATH}",
    "GREYNOISE_API_KEY": "",  # empty: GreyNoise lookups are skipped (the asset says so)
    "GREYNOISE_API_URL": "https://api.greynoise.io",
    "GREYNOISE_RATE_PER_S": "1",
    "GREYNOISE_DAILY_LIMIT": "100",  # requests per UTC day, shared by all runs
    "GREYNOISE_TTL_DAYS": "7",
    "GREYNOISE_PASS_DEADLINE_S": "300",  # seconds one GreyNoise pass may take; the rest waits for the retry list
    "MAXMIND_TTL_DAYS": "7",  # or sooner, when the City/ASN database build changes
    "CYMRU_TTL_DAYS": "30",
    "REFRESH_SCHEDULE": "0 */6 * * *",  # cron, UTC: the stale-refresh job
    "REFRESH_MAX_IPS": "10000",  # IPs one refresh run re-enriches at most
    "REFRESH_CHUNK_SIZE": "1000",  # IPs enriched and written per transaction
    "ENRICHMENT_SCHEDULE_CRON": "30 0 * * *",  # 00:30: Cowrie rotated yesterday's log at midnight
    "ENRICHMENT_SCHEDULE_TZ": "UTC",  # IANA name the cron is read in
    "COWRIE_SENSOR_INTERVAL_S": "60",  # seconds between evaluations of the rotated-log sensor, at least
    "ASN_COVERAGE_MIN": "0.9",  # share of a day's IPs that should have an ASN; below it a check warns
    "BACKFILL_DAYS_PER_RUN": "31",  # days one backfill run covers at most (BackfillPolicy.multi_run)
    "ENRICHMENT_STORAGE_DIR": "",  # empty: the per-day Parquet files live under the Dagster instance storage
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",  # enrich_day_celery / `make workers`: the Celery broker
    "CELERY_BACKEND_URL": "redis://127.0.0.1:6379/0",  # ... and where workers send each step's events back
}


def setting(name: str) -> str:
    """The variable's value, or its embedded default (an empty value means 'use the default' too)."""
    return os.environ.get(name) or DEFAULTS[name]


def env_str(name: str, *, resolved: bool = False) -> Any:
    """`EnvVar(name)` when the variable is set and non-empty, else the embedded default; with `resolved`, the
    value itself (for code that runs outside Dagster, such as the command line)."""
    return EnvVar(name) if os.environ.get(name) and not resolved else setting(name)


def env_int(name: str, *, resolved: bool = False) -> Any:
    """`EnvVar.int(name)` when set, else the default (with `resolved`, the integer itself); a non-integer
    value fails loudly at load time."""
    raw = setting(name)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"Environment variable {name} must be an integer, got {raw!r}") from None
    return EnvVar.int(name) if os.environ.get(name) and not resolved else value


def env_float(name: str, *, resolved: bool = False) -> float:
    """Parsed float (EnvVar has no float form); a malformed value fails loudly at load time."""
    raw = setting(name)
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"Environment variable {name} must be a number, got {raw!r}") from None
