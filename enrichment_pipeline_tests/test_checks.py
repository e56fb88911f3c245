"""The per-day asset checks: run by real `enrich_day` materializations of a real sample day (Cymru stand-in on
loopback, faults injected), by themselves after the inventory was damaged, and their query on both databases."""

from datetime import UTC, date, datetime

import pytest
from dagster import (
    AssetCheckSeverity,
    AssetSelection,
    Definitions,
    define_asset_job,
    instance_for_test,
)
from sqlalchemy import delete

from enrichment_pipeline.checks import (
    ASN_COVERAGE_ENV,
    INVENTORY_CHECKS,
    asn_coverage_min,
    day_coverage,
    inventory_coverage,
)
from enrichment_pipeline.core.inventory import (
    DAILY_ACTIVITY,
    INVENTORY,
    DayActivity,
    SourceUpdate,
    upsert_day,
)
from enrichment_pipeline.definitions import defs
from enrichment_pipeline.resources import (
    CowrieLogDirectory,
    CymruResource,
    FreshnessResource,
    InventoryDatabase,
    MaxMindResource,
)
from enrichment_pipeline_tests.support.expected_ips import distinct_valid_ips

DAY = "2018-05-07"  # 36 distinct source IPs, all globally routable: the stand-in routes every one


@pytest.fixture
def project(tmp_path, sample_log_dir, standin) -> Definitions:
    """The project's own definitions (job, assets, checks) with resources on the sample logs and the stand-in."""
    resources = {
        **defs.resources,
        "cowrie_logs": CowrieLogDirectory(log_dir=str(sample_log_dir)),
        "maxmind": MaxMindResource(),  # no ASN database: every IP goes to Cymru
        "freshness": FreshnessResource(),
        "cymru": CymruResource(host="127.0.0.1", port=standin.address[1], timeout_s=5, batch_size=10),
        "inventory": InventoryDatabase(url=f"sqlite:///{tmp_path / 'inventory.sqlite'}"),
    }
    return Definitions(assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, resources=resources)


def run_enrich_day(project: Definitions, instance) -> dict[str, object]:
    """Execute the `enrich_day` job for DAY; its check evaluations by check name."""
    result = project.resolve_job_def("enrich_day").execute_in_process(partition_key=DAY, instance=instance)
    assert result.success
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def test_the_daily_job_runs_every_check_and_a_clean_day_passes_them(project):
    with instance_for_test() as instance:
        checks = run_enrich_day(project, instance)
    assert set(checks) == {
        "every_ingested_ip_in_inventory",
        "asn_coverage",
        "no_failed_cymru_batches",
        "no_failed_greynoise_lookups",
    }
    assert checks["no_failed_greynoise_lookups"].passed
    assert all(evaluation.passed for evaluation in checks.values())
    assert checks["every_ingested_ip_in_inventory"].metadata["ingested_ips"].value == 36
    assert checks["asn_coverage"].metadata["share_with_asn"].value == 1.0
    assert checks["no_failed_cymru_batches"].metadata["batches_failed"].value == 0
    assert checks["asn_coverage"].partition == DAY


def test_a_failed_cymru_batch_warns_and_lowers_asn_coverage_below_the_threshold(project, standin, sample_log_dir):
    victim = sorted(distinct_valid_ips(sample_log_dir / f"cowrie.json.{DAY}"))[0]
    standin.set_fault("reset_mid_reply", trigger_ips=[victim])
    with instance_for_test() as instance:
        checks = run_enrich_day(project, instance)

    cymru = checks["no_failed_cymru_batches"]
    assert not cymru.passed and cymru.severity == AssetCheckSeverity.WARN
    assert cymru.metadata["batches_failed"].value == 1
    failed_ips = cymru.metadata["failed_ips"].value
    assert failed_ips == 10  # the reset cut the whole batch of 10 short

    coverage = checks["asn_coverage"]
    assert coverage.metadata["ips_with_asn"].value == 36 - failed_ips
    assert not coverage.passed  # 26 of 36 answered when the whole batch failed: 72% < 90%
    assert coverage.severity == AssetCheckSeverity.WARN
    # Every IP is still in the inventory (failed lookups included, without an ASN).
    assert checks["every_ingested_ip_in_inventory"].passed


def test_the_coverage_threshold_comes_from_the_environment(project, standin, sample_log_dir, monkeypatch):
    victim = sorted(distinct_valid_ips(sample_log_dir / f"cowrie.json.{DAY}"))[0]
    standin.set_fault("reset_mid_reply", trigger_ips=[victim])
    monkeypatch.setenv(ASN_COVERAGE_ENV, "0.5")
    with instance_for_test() as instance:
        checks = run_enrich_day(project, instance)
    assert checks["asn_coverage"].passed and checks["asn_coverage"].metadata["minimum_share"].value == 0.5
    assert not checks["no_failed_cymru_batches"].passed


def test_an_ip_missing_from_the_inventory_fails_the_error_check(project, tmp_path):
    with instance_for_test() as instance:
        run_enrich_day(project, instance)
        engine = project.resources["inventory"].engine()
        victim = "113.162.172.77"
        with engine.begin() as conn:  # damage the inventory behind the pipeline's back
            conn.execute(delete(DAILY_ACTIVITY).where(DAILY_ACTIVITY.c.ip_address == victim))
            conn.execute(delete(INVENTORY).where(INVENTORY.c.ip_address == victim))

        # Ingest again plus the inventory's two checks (one step), without the merge that would repair the row.
        # (Dagster 1.13 cannot run partitioned checks without a partitioned asset in the same run.)
        job = ingest_and_check_job(project, inventory_coverage)
        result = job.execute_in_process(partition_key=DAY, instance=instance, raise_on_error=False)
    evaluations = {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}
    missing = evaluations["every_ingested_ip_in_inventory"]
    assert not missing.passed and missing.severity == AssetCheckSeverity.ERROR
    assert missing.metadata["missing_ips"].value == 1 and missing.metadata["missing_sample"].value == victim
    assert evaluations["asn_coverage"].metadata["ips_with_asn"].value == 35


# --- the coverage query on SQLite and PostgreSQL ------------------------------------------------------------


def test_day_coverage_counts_missing_ips_and_ips_with_an_asn_for_that_day_only(engine):
    now = datetime(2018, 5, 9, tzinfo=UTC)
    seen = lambda ip: DayActivity(ip, 1, 1, now, now)  # noqa: E731
    routed = {"status": "routed", "asn": 64500, "as_name": "X", "country_code": "DE"}
    unrouted = {"status": "unrouted", "asn": None, "as_name": None, "country_code": ""}
    upsert_day(
        engine,
        date(2018, 5, 6),
        [seen("198.51.100.1"), seen("198.51.100.2"), seen("2001:db8::1")],
        [SourceUpdate("198.51.100.1", cymru=routed), SourceUpdate("2001:db8::1", cymru=unrouted)],
        now=now,
    )
    upsert_day(engine, date(2018, 5, 7), [seen("198.51.100.3")], [SourceUpdate("198.51.100.3", cymru=routed)], now=now)

    day = ["198.51.100.1", "198.51.100.2", "2001:db8::1", "198.51.100.3", "203.0.113.9"]
    coverage = day_coverage(engine, date(2018, 5, 6), day)
    # .3 is in the inventory, but not with this day's activity; .9 is nowhere.
    assert coverage.missing == ["198.51.100.3", "203.0.113.9"]
    assert (coverage.ips, coverage.with_asn) == (5, 1)
    assert coverage.share_with_asn == pytest.approx(0.2)
    assert day_coverage(engine, date(2018, 5, 8), []).share_with_asn == 1.0  # an empty day is fully covered


def test_the_coverage_threshold_must_be_a_share(monkeypatch):
    assert asn_coverage_min() == 0.9
    for bad in ["90", "-0.1", "ninety", "nan"]:
        monkeypatch.setenv(ASN_COVERAGE_ENV, bad)
        with pytest.raises(ValueError, match=ASN_COVERAGE_ENV):
            asn_coverage_min()


def test_either_inventory_check_runs_alone(project):
    """The two inventory checks share one step (one coverage query) but stay selectable one by one."""
    asn_only = next(spec for spec in INVENTORY_CHECKS if spec.name == "asn_coverage")
    job = ingest_and_check_job(project, asn_only.key)
    with instance_for_test() as instance:
        run_enrich_day(project, instance)
        result = job.execute_in_process(partition_key=DAY, instance=instance)
    assert result.success
    assert [evaluation.check_name for evaluation in result.get_asset_check_evaluations()] == ["asn_coverage"]


def ingest_and_check_job(project: Definitions, *checks):
    """The day's ingest plus `checks` (check definitions or keys), without the merge."""
    selection = AssetSelection.assets("cowrie_source_ips", "cowrie_sensor_activity") | AssetSelection.checks(*checks)
    return Definitions(
        assets=project.assets,
        asset_checks=project.asset_checks,
        jobs=[define_asset_job("ingest_and_check", selection)],
        resources=project.resources,
    ).resolve_job_def("ingest_and_check")
