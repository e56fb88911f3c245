"""Team Cymru bulk whois settings; operators can change them per run from the launchpad."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from enrichment_pipeline.core.whois import CymruBulkClient


class CymruResource(ConfigurableResource):
    """Bulk IP->ASN lookups over TCP port 43, `batch_size` IPs per connection."""

    host: str = Field(description="Bulk whois server (CYMRU_HOST).")
    port: int = Field(default=43, description="TCP port (CYMRU_PORT).")
    batch_size: int = Field(default=500, ge=1, le=10_000, description="IPs per connection (CYMRU_BATCH_SIZE).")
    timeout_s: float = Field(
        default=60.0, gt=0, description="Deadline for one batch: connect, send and read (CYMRU_TIMEOUT_S)."
    )
    max_parallel: int = Field(
        default=8, ge=1, le=8, description="Connections at once within one run (CYMRU_MAX_PARALLEL); be polite."
    )

    def client(self) -> CymruBulkClient:
        return CymruBulkClient(
            self.host,
            self.port,
            timeout_s=self.timeout_s,
            batch_size=self.batch_size,
            max_parallel=self.max_parallel,
        )
