"""GreyNoise Community API settings: the API key (only ever through EnvVar), rate, daily budget and deadline.
Without a key the resource is disabled and the GreyNoise asset skips itself; the rest of the graph runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster import ConfigurableResource
from pydantic import Field
from sqlalchemy.engine import Engine

from enrichment_pipeline.core.inventory import GreyNoiseDailyBudget

if TYPE_CHECKING:
    from enrichment_pipeline.core.greynoise_client import GreyNoiseClient


class GreyNoiseResource(ConfigurableResource):
    """Lookups of IPv4 sources at `rate_per_s`, at most `daily_limit` requests per UTC day."""

    # repr=False: the value never shows in a repr; set it with EnvVar so the UI shows the variable's name.
    api_key: str = Field(
        default="", repr=False, description="Secret GreyNoise API key (GREYNOISE_API_KEY, via EnvVar); empty: skipped."
    )
    api_url: str = Field(default="https://api.greynoise.io", description="API base URL (GREYNOISE_API_URL).")
    rate_per_s: float = Field(default=1.0, gt=0, description="Requests per second at most (GREYNOISE_RATE_PER_S).")
    daily_limit: int = Field(
        default=100, ge=0, description="Requests per UTC day, shared by all runs (GREYNOISE_DAILY_LIMIT)."
    )
    timeout_s: float = Field(default=10.0, gt=0, description="Connect and read timeout of one request, seconds.")
    max_retries: int = Field(default=3, ge=0, le=10, description="Retries of one lookup (errors, 5xx, 429).")
    pass_deadline_s: float = Field(
        default=300.0,
        gt=0,
        description="Seconds one GreyNoise pass may take; IPs not reached by then wait for the retry list "
        "(GREYNOISE_PASS_DEADLINE_S).",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.api_key.strip())

    def client(self) -> GreyNoiseClient:
        # Imported here, not at module level: requests loads only when a key is set and a client is built.
        from enrichment_pipeline.core.greynoise_client import GreyNoiseClient

        return GreyNoiseClient(
            self.api_url,
            self.api_key,
            timeout_s=self.timeout_s,
            rate_per_s=self.rate_per_s,
            max_retries=self.max_retries,
            pass_deadline_s=self.pass_deadline_s,  # per lookup call: the asset's pass, each refresh chunk
        )

    def daily_budget(self, engine: Engine) -> GreyNoiseDailyBudget:
        return GreyNoiseDailyBudget(engine, self.daily_limit)
