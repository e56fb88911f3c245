"""The IP inventory database (any SQLAlchemy URL)."""

from __future__ import annotations

from functools import lru_cache

from dagster import ConfigurableResource
from pydantic import Field
from sqlalchemy.engine import Engine

from enrichment_pipeline.core.inventory import create_schema, make_engine


@lru_cache(maxsize=8)
def _engine_for(url: str) -> Engine:
    # One engine (connection pool) per process and URL.
    return make_engine(url)


class InventoryDatabase(ConfigurableResource):
    """Holds `ip_inventory` and `ip_daily_activity` (ENRICHMENT_DB_URL)."""

    url: str = Field(description="SQLAlchemy URL, e.g. sqlite:///path or postgresql+psycopg2://user@host/db.")

    def engine(self) -> Engine:
        """The shared engine, with the schema created if missing (idempotent, a few catalog queries)."""
        engine = _engine_for(self.url)
        create_schema(engine)
        return engine
