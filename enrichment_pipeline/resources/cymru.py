"""Team Cymru bulk whois settings; operators can change them per run from the launchpad."""

from __future__ import annotations

from dagster import ConfigurableResource, Failure
from pydantic import Field

from enrichment_pipeline.core.cymru import MAX_BATCH_SIZE, MAX_PARALLEL, CymruBulkClient


class CymruResource(ConfigurableResource):
    """Bulk IP->ASN lookups over TCP port 43, `batch_size` IPs per connection."""

    # Bounds are the client's own (checked when it is built), not Field(ge=..): a field set from EnvVar.int
    # is validated while the definitions load, before the variable is read, and would fail every load.
    host: str = Field(description="Bulk whois server (CYMRU_HOST).")
    port: int = Field(default=43, description="TCP port (CYMRU_PORT).")
    batch_size: int = Field(default=500, description=f"IPs per connection, 1-{MAX_BATCH_SIZE} (CYMRU_BATCH_SIZE).")
    timeout_s: float = Field(
        default=60.0, gt=0, description="Deadline for one batch: connect, send and read (CYMRU_TIMEOUT_S)."
    )
    max_parallel: int = Field(
        default=8, description=f"Connections at once within one run, 1-{MAX_PARALLEL} (CYMRU_MAX_PARALLEL); be polite."
    )

    def client(self) -> CymruBulkClient:
        """The configured client; a setting out of bounds fails the step at once (retrying cannot help)."""
        try:
            return self.build_client()
        except ValueError as error:
            raise Failure(description=str(error), allow_retries=False) from error

    def build_client(self) -> CymruBulkClient:
        """The client, outside Dagster too (the `refresh` command); ValueError for a setting out of bounds."""
        return CymruBulkClient(
            self.host,
            self.port,
            timeout_s=self.timeout_s,
            batch_size=self.batch_size,
            max_parallel=self.max_parallel,
        )
