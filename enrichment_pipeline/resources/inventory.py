"""The IP inventory database (any SQLAlchemy URL)."""

from __future__ import annotations

from functools import lru_cache

from dagster import ConfigurableResource
from pydantic import Field
from sqlalchemy.engine import Engine

from enrichment_pipeline.core.inventory import create_schema, make_engine


@lru_cache(maxsize=8)
def _engine_for(url: str) -> Engine:
    # One engine (connection pool) per process and URL, its schema created once, when first used.
    engine = make_engine(url)
    create_schema(engine)
    return engine


class InventoryDatabase(ConfigurableResource):
    """Holds `ip_inventory` and the project's other tables (ENRICHMENT_DB_URL)."""

    url: str = Field(description="SQLAlchemy URL, e.g. sqlite:///path or postgresql+psycopg2://user@host/db.")

    def engine(self) -> Engine:
        """The process's engine for this URL; the schema is created on first use, once per process (not at
        resource setup: a run that fails before touching the inventory leaves no database behind)."""
        return _engine_for(self.url)
