"""Offline MaxMind databases (City + optional ASN)."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from enrichment_pipeline.core.maxmind import MaxMindLookup


class MaxMindResource(ConfigurableResource):
    """Paths of the MaxMind databases; readers are shared per process by `core.maxmind`."""

    city_db: str = Field(
        default="", description="GeoLite2/GeoIP2 City mmdb (GEOIP_CITY_DB); empty: bundled GeoLite2-City."
    )
    asn_db: str = Field(default="", description="GeoLite2 ASN mmdb (GEOIP_ASN_DB); empty or missing: no MaxMind ASN.")

    def lookup(self) -> MaxMindLookup:
        return MaxMindLookup(self.city_db or None, self.asn_db or None)
