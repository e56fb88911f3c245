"""The op of the `refresh_stale` job: re-enrich the inventory's most overdue IPs (any day). A thin wrapper of
`core.reenrich`, which the `enrichment-pipeline refresh` command runs without Dagster."""

from dagster import Config, Failure, OpExecutionContext, Out, Output, op
from pydantic import Field

from enrichment_pipeline.core import freshness as clock
from enrichment_pipeline.core.freshness import MaxMindBuilds
from enrichment_pipeline.core.greynoise import GreyNoiseAuthError
from enrichment_pipeline.core.maxmind import MaxMindError
from enrichment_pipeline.core.reenrich import (
    ChunkOutcome,
    budgeted_greynoise,
    refresh,
    select_stalest,
)
from enrichment_pipeline.resources import (
    CymruResource,
    FreshnessResource,
    GreyNoiseResource,
    InventoryDatabase,
    MaxMindResource,
)
from enrichment_pipeline.settings import setting


class RefreshConfig(Config):
    max_ips: int = Field(
        default=int(setting("REFRESH_MAX_IPS")), ge=0, description="IPs one run re-enriches at most (REFRESH_MAX_IPS)."
    )
    chunk_size: int = Field(
        default=int(setting("REFRESH_CHUNK_SIZE")),
        ge=1,
        description="IPs looked up and written per transaction (REFRESH_CHUNK_SIZE).",
    )


@op(pool="cymru", out=Out(description="Counts of the refresh run (metadata only)."))
def refresh_stale_ips(
    context: OpExecutionContext,
    config: RefreshConfig,
    maxmind: MaxMindResource,
    cymru: CymruResource,
    greynoise: GreyNoiseResource,
    inventory: InventoryDatabase,
    freshness: FreshnessResource,
) -> Output[None]:
    """Due retries first, then the IPs whose answers expired longest ago; only stale sources are asked.
    GreyNoise takes part when its key is set, within the same daily budget as the daily runs."""
    try:
        lookup = maxmind.lookup()
    except MaxMindError as error:  # bad configuration: retrying cannot help
        raise Failure(description=str(error), allow_retries=False) from error
    policy = freshness.policy(MaxMindBuilds.of(lookup))
    engine = inventory.engine()
    if not greynoise.enabled:
        context.log.info("GREYNOISE_API_KEY is not set: the refresh skips GreyNoise")
    selected = select_stalest(engine, config.max_ips, policy, now=clock.utc_now(), greynoise_enabled=greynoise.enabled)
    context.log.info(f"refresh: {len(selected)} IPs due (at most {config.max_ips}), chunks of {config.chunk_size}")

    def report(chunk: ChunkOutcome) -> None:
        plan = chunk.plan
        context.log.info(
            f"refresh chunk: {len(plan.ips)} IPs; MaxMind rewritten {len(plan.maxmind_rewritten)},"
            f" Cymru asked {len(plan.cymru)} ({chunk.cymru_failed} failed),"
            f" GreyNoise asked {len(plan.greynoise)} ({chunk.greynoise_failed} failed); {chunk.seconds:.1f} s"
        )

    client = greynoise.client() if greynoise.enabled else None
    try:
        result = refresh(
            engine,
            selected,
            maxmind=lookup,
            cymru=cymru.client(),
            greynoise=budgeted_greynoise(client, greynoise.daily_budget(engine)) if client else None,
            policy=policy,
            chunk_size=config.chunk_size,
            on_chunk=report,
        )
    except GreyNoiseAuthError as error:  # the chunk's other answers are saved; a bad key stays bad
        raise Failure(description=str(error), allow_retries=False) from error
    finally:
        if client is not None:
            client.close()
    return Output(None, metadata=result.counts())
