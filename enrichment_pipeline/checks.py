"""Per-day asset checks, shown next to their assets in the UI and run with every materialization of them:
every ingested IP is in the inventory, enough of the day's IPs have an ASN (one check step after the merge),
no Cymru batch or GreyNoise lookup failed (evaluated by the lookup's own step, from what it just did)."""

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date

import pandas as pd
from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    Backoff,
    Failure,
    OpExecutionContext,
    Output,
    PreviewWarning,
    RetryPolicy,
    multi_asset_check,
)
from sqlalchemy import Engine, select

from enrichment_pipeline.core.frames import CYMRU_FAILED, split_days
from enrichment_pipeline.core.greynoise import FAILED as GREYNOISE_FAILED
from enrichment_pipeline.core.inventory import DAILY_ACTIVITY, INVENTORY
from enrichment_pipeline.partitions import ingest_days
from enrichment_pipeline.resources import InventoryDatabase
from enrichment_pipeline.settings import setting

ASN_COVERAGE_ENV = "ASN_COVERAGE_MIN"
SAMPLE_SIZE = 10  # IPs or errors listed in a check's metadata
# A check only reads; a retry helps against a database that is briefly busy or unreachable.
READ_RETRY = RetryPolicy(max_retries=2, delay=5, backoff=Backoff.EXPONENTIAL)
# Partitioned checks are a "preview" feature of Dagster 1.13; the exact pin in pyproject.toml guards it.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=PreviewWarning)


def asn_coverage_min() -> float:
    """ASN_COVERAGE_MIN: the share (0..1) of a day's IPs that should have an ASN; below it the check warns."""
    raw = setting(ASN_COVERAGE_ENV)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"Environment variable {ASN_COVERAGE_ENV} must be a number from 0 to 1, got {raw!r}")
    return value


@dataclass(frozen=True)
class DayCoverage:
    """How a day's ingested IPs are represented in the inventory."""

    ips: int
    missing: list[str]  # ingested IPs with no inventory row carrying this day's activity, sorted
    with_asn: int

    @property
    def share_with_asn(self) -> float:
        return self.with_asn / self.ips if self.ips else 1.0


def day_coverage(engine: Engine, day: date, ips: Iterable[str]) -> DayCoverage:
    """Compare the day's ingested IPs with the inventory rows that have an `ip_daily_activity` row for it."""
    return coverage_by_day(engine, {day: ips})[day]


def coverage_by_day(engine: Engine, ingested: Mapping[date, Iterable[str]]) -> dict[date, DayCoverage]:
    """`day_coverage` of several days in one query: a range run checks each of its days."""
    query = (
        select(DAILY_ACTIVITY.c.day, INVENTORY.c.ip_address, INVENTORY.c.current_asn)
        .join(DAILY_ACTIVITY, DAILY_ACTIVITY.c.ip_address == INVENTORY.c.ip_address)
        .where(DAILY_ACTIVITY.c.day.in_(sorted(ingested)))
    )
    stored: dict[date, dict[str, int | None]] = {day: {} for day in ingested}
    with engine.connect() as conn:
        for day, ip, asn in conn.execute(query):
            stored[day][ip] = asn
    coverage = {}
    for day, ips in ingested.items():
        expected, found = set(ips), stored[day]
        with_asn = sum(1 for ip in expected if found.get(ip) is not None)
        coverage[day] = DayCoverage(ips=len(expected), missing=sorted(expected - found.keys()), with_asn=with_asn)
    return coverage


def _run_coverage(
    context: AssetCheckExecutionContext, inventory: InventoryDatabase, ingested: pd.DataFrame
) -> dict[str, DayCoverage]:
    """The coverage of each day of the run, by partition key."""
    days = context.op_execution_context.partition_keys
    ips = {date.fromisoformat(day): rows["ip"] for day, rows in split_days(ingested, days).items()}
    return {day.isoformat(): coverage for day, coverage in coverage_by_day(inventory.engine(), ips).items()}


def each_day_of_checks(
    run: OpExecutionContext, evaluations: Mapping[str, Callable[[str], AssetCheckResult]]
) -> list[AssetCheckResult]:
    """Evaluate the step's selected checks (`evaluations` by check name) for every day of the run.

    A one-day run returns their results, as a check step usually does. A range run (a batched backfill)
    records one evaluation per check and day against the day's partition, so the UI shows each day's result,
    and returns nothing; a blocking check that fails any day then fails the step, which keeps what depends
    on its asset from running, as a failed blocking result would.
    """
    specs = {spec.name: spec for spec in run.assets_def.check_specs}  # only the selected ones
    if run.has_partition_key:
        return [
            AssetCheckResult(**_fields(evaluations[name](run.partition_key)), asset_key=spec.asset_key, check_name=name)
            for name, spec in specs.items()
        ]
    failed: dict[str, list[str]] = {}
    for day in run.partition_keys:
        for name, spec in specs.items():
            result = evaluations[name](day)
            run.log_event(
                AssetCheckEvaluation(
                    **_fields(result),
                    asset_key=spec.asset_key,
                    check_name=spec.name,
                    blocking=spec.blocking,
                    partition=day,
                )
            )
            if spec.blocking and not result.passed and result.severity == AssetCheckSeverity.ERROR:
                failed.setdefault(name, []).append(day)
    if failed:
        raise Failure(
            description="; ".join(
                f"{name} failed for {len(days)} day(s) of the run: {', '.join(days)}" for name, days in failed.items()
            )
        )
    return []


def report_checks(
    context: AssetExecutionContext | AssetCheckExecutionContext,
    evaluations: Mapping[str, Callable[[str], AssetCheckResult]],
) -> Iterator[AssetCheckResult | Output]:
    """A step's checks (an asset's `check_specs`, or a check step's own), yielded after any asset result: each
    day's evaluations as `each_day_of_checks` makes them; a range run then yields the empty output each
    selected check of the step owes (without it, Dagster warns that a blocking check "emitted no result" and
    will not gate, although a failed day has failed the step already)."""
    run = context.op_execution_context
    yield from each_day_of_checks(run, evaluations)
    if not run.has_partition_key:
        for output_name in run.assets_def.check_specs_by_output_name:
            if output_name in run.selected_output_names:
                yield Output(None, output_name=output_name)


def _fields(result: AssetCheckResult) -> dict:
    """What an evaluation says, to be recorded against a check (and a day) of the caller's choosing."""
    return {
        "passed": result.passed,
        "severity": result.severity,
        "description": result.description,
        "metadata": result.metadata,
    }


# Both read the same coverage of the day in the inventory: one step, one query, run together.
INVENTORY_CHECKS = [
    AssetCheckSpec(
        "every_ingested_ip_in_inventory",
        asset="merged_inventory",
        partitions_def=ingest_days,
        additional_deps=["cowrie_source_ips"],  # loaded through `ins` below
        # Blocking: what is built on top of the inventory (reports) waits for, and skips on, a broken day.
        blocking=True,
        description="Every source IP read from the day's log has an ip_inventory row with that day's activity.",
    ),
    AssetCheckSpec(
        "asn_coverage",
        asset="merged_inventory",
        partitions_def=ingest_days,
        additional_deps=["cowrie_source_ips"],  # loaded through `ins` below
        description=(
            "The share of the day's IPs with an ASN (MaxMind or Cymru) is at least ASN_COVERAGE_MIN (warns below)."
        ),
    ),
]


@multi_asset_check(
    specs=INVENTORY_CHECKS,
    ins={"cowrie_source_ips": AssetIn("cowrie_source_ips")},
    retry_policy=READ_RETRY,
    can_subset=True,  # either check can run alone
)
def inventory_coverage(
    context: AssetCheckExecutionContext, cowrie_source_ips: pd.DataFrame, inventory: InventoryDatabase
) -> Iterator[AssetCheckResult | Output]:
    """The day's ingested IPs against the inventory: `every_ingested_ip_in_inventory` and `asn_coverage`."""
    threshold = asn_coverage_min()
    coverage = _run_coverage(context, inventory, cowrie_source_ips)
    evaluations = {
        "every_ingested_ip_in_inventory": lambda day: _all_in_inventory(coverage[day]),
        "asn_coverage": lambda day: _coverage(coverage[day], threshold),
    }
    yield from report_checks(context, evaluations)


def _all_in_inventory(coverage: DayCoverage) -> AssetCheckResult:
    return AssetCheckResult(
        passed=not coverage.missing,
        severity=AssetCheckSeverity.ERROR,
        description=f"{len(coverage.missing)} of {coverage.ips} ingested IPs missing from ip_inventory",
        metadata={
            "ingested_ips": coverage.ips,
            "missing_ips": len(coverage.missing),
            "missing_sample": ", ".join(coverage.missing[:SAMPLE_SIZE]),
        },
    )


def _coverage(coverage: DayCoverage, threshold: float) -> AssetCheckResult:
    return AssetCheckResult(
        passed=coverage.share_with_asn >= threshold,
        severity=AssetCheckSeverity.WARN,
        description=f"{coverage.share_with_asn:.1%} of the day's IPs have an ASN (minimum {threshold:.0%})",
        metadata={
            "ips": coverage.ips,
            "ips_with_asn": coverage.with_asn,
            "share_with_asn": round(coverage.share_with_asn, 4),
            "minimum_share": threshold,
        },
    )


# The lookups' checks run in the step that materializes their asset (`check_specs`), from the answers it just
# got: a failed batch or lookup is a fact of that materialization, not something to read back afterwards.
NO_FAILED_CYMRU_BATCHES = AssetCheckSpec(
    "no_failed_cymru_batches",
    asset="cymru_bulk_results",
    partitions_def=ingest_days,
    description="No Team Cymru batch failed (warns otherwise: its IPs are on the retry list, asked again later).",
)
NO_FAILED_GREYNOISE_LOOKUPS = AssetCheckSpec(
    "no_failed_greynoise_lookups",
    asset="greynoise_results",
    partitions_def=ingest_days,
    description="No GreyNoise lookup failed (warns otherwise: those IPs are on the retry list, asked again later).",
)


def cymru_failures(batches_failed: int, answers: pd.DataFrame) -> AssetCheckResult:
    """`no_failed_cymru_batches` of a day: the run's failed batches and the day's IPs left without an answer."""
    failed = answers.loc[answers["status"] == CYMRU_FAILED]
    errors = failed["error"].dropna().unique().tolist()[:SAMPLE_SIZE]
    return AssetCheckResult(
        passed=len(failed) == 0 and not batches_failed,
        severity=AssetCheckSeverity.WARN,
        description=f"{batches_failed} failed batches, {len(failed)} IPs without a Cymru answer",
        metadata={"batches_failed": batches_failed, "failed_ips": len(failed), "errors": "; ".join(errors)},
    )


def greynoise_failures(answers: pd.DataFrame) -> AssetCheckResult:
    """`no_failed_greynoise_lookups` of a day: its IPs whose lookup failed."""
    failed = answers.loc[answers["status"] == GREYNOISE_FAILED]
    errors = failed["error"].dropna().unique().tolist()[:SAMPLE_SIZE]
    return AssetCheckResult(
        passed=failed.empty,
        severity=AssetCheckSeverity.WARN,
        description=f"{len(failed)} IPs without a GreyNoise answer",
        metadata={"failed_ips": len(failed), "errors": "; ".join(errors)},
    )
