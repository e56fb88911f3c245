"""Every Cymru stand-in fault through the real `enrich_day` job: the run finishes, each IP ends with the
correct answer or on the retry list (never a wrong ASN), other batches are unaffected, the warning check
reports it, and a later run against a healthy server completes exactly the missing IPs."""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import (
    AssetCheckSeverity,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
)

from enrichment_pipeline.core.cymru import CymruOrigin
from enrichment_pipeline.core.inventory import (
    fetch_failures,
    fetch_inventory,
    make_engine,
)
from enrichment_pipeline.definitions import defs
from enrichment_pipeline.resources import (
    CowrieLogDirectory,
    CymruResource,
    FreshnessResource,
    GreyNoiseResource,
    InventoryDatabase,
    MaxMindResource,
    build_resources,
)
from enrichment_pipeline.standins.cymru_server import (
    CymruStandinServer,
    standin_origins,
)
from enrichment_pipeline_tests.support.synthetic_days import (
    UTC,
    event,
    public_ips,
    write_day,
)

DAY = datetime.date(2018, 5, 5)
IPS = sorted(public_ips(12, seed=5))  # the ingest asset sorts by IP text: batches are consecutive runs of 4
BATCH = 4
TIMEOUT_S = 1.5
# A run that waited for a silent or dripping server would take a minute or more; generous for a busy machine.
BOUNDED_S = 15.0
WHOLE_BATCH_FAULTS = ["reset_mid_reply", "no_reply", "drip", "close_immediately"]
LINE_FAULTS = ["garbled", "drop_ips", "error_lines"]  # the stand-in hits the odd positions of a query


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    noon = datetime.datetime(2018, 5, 5, 12, tzinfo=UTC)
    write_day(tmp_path / "logs", DAY, [event(ip, f"s{n}", noon) for n, ip in enumerate(IPS)])
    return tmp_path / "logs"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'inventory.sqlite'}"


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def enrich_day(log_dir: Path, db_url: str, cymru_port: int, instance: DagsterInstance) -> ExecuteInProcessResult:
    """The project's `enrich_day` job with its asset checks; no MaxMind ASN database, so every IP goes to Cymru."""
    resources = {
        "cowrie_logs": CowrieLogDirectory(log_dir=str(log_dir)),
        "maxmind": MaxMindResource(),
        "freshness": FreshnessResource(),
        "cymru": CymruResource(host="127.0.0.1", port=cymru_port, timeout_s=TIMEOUT_S, batch_size=BATCH),
        "inventory": InventoryDatabase(url=db_url),
        "greynoise": GreyNoiseResource(),
    }
    project = Definitions(assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, resources=resources)
    result = project.resolve_job_def("enrich_day").execute_in_process(
        partition_key=DAY.isoformat(), instance=instance, raise_on_error=False
    )
    assert result.success, [event.message for event in result.get_step_failure_events()]
    return result


def cymru_check(result: ExecuteInProcessResult):
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "no_failed_cymru_batches"]
    return evaluation


def cymru_seconds(result: ExecuteInProcessResult) -> float:
    (materialization,) = result.asset_materializations_for_node("cymru_bulk_results")
    return materialization.metadata["seconds"].value


def assert_correct_or_on_the_retry_list(db_url: str, failed: set[str]) -> None:
    engine = make_engine(db_url)
    rows = {row["ip_address"]: row for row in fetch_inventory(engine)}
    assert set(rows) == set(IPS)  # every IP has its row, answered or not
    assert {(row["ip_address"], row["source"]) for row in fetch_failures(engine)} == {(ip, "cymru") for ip in failed}
    for ip in IPS:
        if ip in failed:
            assert rows[ip]["current_asn"] is None and "cymru" not in rows[ip]["enrichment"], ip
        else:
            assert rows[ip]["current_asn"] == standin_origins(ip)[0].asn, ip
    engine.dispose()


def recover(log_dir: Path, db_url: str, standin: CymruStandinServer, instance: DagsterInstance, failed: set[str]):
    """A later run against the healthy server asks for exactly the missing IPs and completes them."""
    standin.set_fault(None)
    queries_before = len(standin.requests)
    result = enrich_day(log_dir, db_url, standin.address[1], instance)
    asked_again = {ip for query in standin.requests[queries_before:] for ip in query}
    assert asked_again == failed
    assert cymru_check(result).passed
    assert_correct_or_on_the_retry_list(db_url, failed=set())


@pytest.mark.parametrize("fault", WHOLE_BATCH_FAULTS + LINE_FAULTS)
def test_a_fault_in_one_batch_costs_only_its_ips_which_the_next_healthy_run_completes(fault, log_dir, db_url, instance):
    with CymruStandinServer() as standin:
        victim = IPS[BATCH]  # first IP of batch 2 of 3
        standin.set_fault(fault, trigger_ips=[victim])
        result = enrich_day(log_dir, db_url, standin.address[1], instance)

        queries = standin.requests
        assert sorted(len(query) for query in queries) == [BATCH] * 3
        (faulted,) = [query for query in queries if victim in query]
        failed = set(faulted) if fault in WHOLE_BATCH_FAULTS else set(faulted[1::2])
        assert_correct_or_on_the_retry_list(db_url, failed)
        check = cymru_check(result)
        assert not check.passed and check.severity == AssetCheckSeverity.WARN
        assert check.metadata["failed_ips"].value == len(failed)
        assert check.metadata["batches_failed"].value == (1 if fault in WHOLE_BATCH_FAULTS else 0)
        assert cymru_seconds(result) < BOUNDED_S  # a silent or dripping server cannot hold the run

        recover(log_dir, db_url, standin, instance, failed)


def test_a_refused_connection_puts_every_ip_on_the_retry_list_until_the_server_is_back(log_dir, db_url, instance):
    with socket.socket() as bound_not_listening:  # holds a port nobody listens on: connections are refused
        bound_not_listening.bind(("127.0.0.1", 0))
        result = enrich_day(log_dir, db_url, bound_not_listening.getsockname()[1], instance)

    assert_correct_or_on_the_retry_list(db_url, set(IPS))
    check = cymru_check(result)
    assert not check.passed and check.severity == AssetCheckSeverity.WARN
    assert check.metadata["batches_failed"].value == 3
    assert "connection refused" in check.metadata["errors"].value
    with CymruStandinServer() as standin:
        recover(log_dir, db_url, standin, instance, set(IPS))


def test_multi_origin_rows_give_the_lowest_asn_and_keep_every_origin(log_dir, db_url, instance):
    moas_ip = IPS[5]
    prefix = f"{moas_ip}/32"
    origins = [
        CymruOrigin(3356, prefix, "US", "arin", None, "LEVEL3"),
        CymruOrigin(174, prefix, "US", "arin", None, "COGENT"),
    ]
    with CymruStandinServer(answers={moas_ip: origins}) as standin:
        result = enrich_day(log_dir, db_url, standin.address[1], instance)

    assert cymru_check(result).passed
    (row,) = fetch_inventory(make_engine(db_url), [moas_ip])
    assert (row["current_asn"], row["asn_org"]) == (174, "COGENT")
    assert sorted(origin["asn"] for origin in row["enrichment"]["cymru"]["origins"]) == [174, 3356]
    assert fetch_failures(make_engine(db_url)) == []


def test_cymru_settings_from_the_environment_reach_the_run(log_dir, db_url, instance, monkeypatch):
    with CymruStandinServer(latency_s=0.2) as standin:
        for name, value in {
            "CYMRU_HOST": "127.0.0.1",
            "CYMRU_PORT": str(standin.address[1]),
            "CYMRU_BATCH_SIZE": "3",
            "CYMRU_MAX_PARALLEL": "2",
            "CYMRU_TIMEOUT_S": "5",
            "COWRIE_LOG_DIR": str(log_dir),
            "ENRICHMENT_DB_URL": db_url,
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("GREYNOISE_API_KEY", raising=False)
        project = Definitions(
            assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, resources=build_resources()
        )
        job = project.resolve_job_def("enrich_day")
        result = job.execute_in_process(partition_key=DAY.isoformat(), instance=instance)
        assert result.success
        assert sorted(len(query) for query in standin.requests) == [3] * 4
        assert standin.peak_connections == 2

        monkeypatch.setenv("CYMRU_MAX_PARALLEL", "9")  # more than Team Cymru should see: refused at run time
        project = Definitions(
            assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, resources=build_resources()
        )
        result = project.resolve_job_def("enrich_day").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance, raise_on_error=False
        )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "cymru_bulk_results"
    assert "CYMRU_MAX_PARALLEL" in failure.step_failure_data.user_failure_data.description
