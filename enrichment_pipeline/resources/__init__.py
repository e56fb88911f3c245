"""Dagster resources: typed configuration plus a factory for each core client."""

from enrichment_pipeline.resources.cowrie_logs import CowrieLogDirectory
from enrichment_pipeline.resources.cymru import CymruResource
from enrichment_pipeline.resources.geoip import GeoIpResource
from enrichment_pipeline.resources.greynoise import GreyNoiseResource
from enrichment_pipeline.resources.inventory import InventoryDatabase

__all__ = ["CowrieLogDirectory", "CymruResource", "GeoIpResource", "GreyNoiseResource", "InventoryDatabase"]
