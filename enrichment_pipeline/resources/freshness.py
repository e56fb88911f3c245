"""How long each source's stored answer stays fresh: the one home of the three TTLs."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from enrichment_pipeline.core.freshness import FreshnessPolicy, MaxMindBuilds


class FreshnessResource(ConfigurableResource):
    """Per-source TTLs in days; a MaxMind answer also goes stale when the database builds change."""

    maxmind_ttl_days: float = Field(
        default=7.0,
        ge=0,
        description="A MaxMind answer from the same database builds is kept this long (MAXMIND_TTL_DAYS).",
    )
    cymru_ttl_days: float = Field(
        default=30.0,
        ge=0,
        description="A Cymru answer (routed or unrouted) is not asked again for this long (CYMRU_TTL_DAYS).",
    )
    greynoise_ttl_days: float = Field(
        default=7.0, ge=0, description="A GreyNoise answer is not asked again for this long (GREYNOISE_TTL_DAYS)."
    )

    def policy(self, maxmind_builds: MaxMindBuilds | None = None) -> FreshnessPolicy:
        return FreshnessPolicy.from_days(
            self.maxmind_ttl_days, self.cymru_ttl_days, self.greynoise_ttl_days, maxmind_builds
        )
