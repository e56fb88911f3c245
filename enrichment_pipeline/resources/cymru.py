"""Team Cymru bulk whois settings; operators can change them per run from the launchpad."""

from __future__ import annotations

from dagster import ConfigurableResource, Failure
from pydantic import Field

from enrichment_pipeline.core.whois import CymruBulkClient

MAX_BATCH_SIZE = 10_000
MAX_PARALLEL = 8  # Team Cymru must not see a flood of connections


class CymruResource(ConfigurableResource):
    """Bulk IP->ASN lookups over TCP port 43, `batch_size` IPs per connection."""

    # The integer bounds are checked in client(), not as Field(ge=..): a field set from EnvVar.int is
    # validated while the definitions load, before the variable is read, and would fail every load.
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
        problems = []
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            problems.append(f"batch_size (CYMRU_BATCH_SIZE) must be 1-{MAX_BATCH_SIZE}, got {self.batch_size}")
        if not 1 <= self.max_parallel <= MAX_PARALLEL:
            problems.append(f"max_parallel (CYMRU_MAX_PARALLEL) must be 1-{MAX_PARALLEL}, got {self.max_parallel}")
        if problems:
            raise Failure(description="; ".join(problems), allow_retries=False)
        return CymruBulkClient(
            self.host,
            self.port,
            timeout_s=self.timeout_s,
            batch_size=self.batch_size,
            max_parallel=self.max_parallel,
        )
