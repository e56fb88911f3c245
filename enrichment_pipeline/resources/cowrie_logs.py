"""Where the rotated Cowrie logs live."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from enrichment_pipeline.core.cowrie_log import day_log_path


class CowrieLogDirectory(ConfigurableResource):
    """The directory Cowrie rotates `cowrie.json.YYYY-MM-DD[.gz]` into (env COWRIE_LOG_DIR)."""

    log_dir: str = Field(description="Directory holding rotated Cowrie JSON logs (COWRIE_LOG_DIR).")

    def path_for(self, day: date) -> Path:
        return day_log_path(self.log_dir, day)
