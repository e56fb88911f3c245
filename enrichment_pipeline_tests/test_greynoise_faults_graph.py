"""GreyNoise faults (429 storm, 5xx, timeouts, invalid JSON, unreachable) through the real `enrich_day` job
against the loopback GreyNoise server: the run finishes, each IP ends answered or on the retry list, the
other IPs and sources are unaffected, the failures are reported, and a later healthy run completes them.
(The client-level behaviour of each fault is in test_greynoise_client.py.)"""

from __future__ import annotations

import datetime
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, Definitions, ExecuteInProcessResult

from enrichment_pipeline.core.greynoise import (
    CONNECTION_ERROR,
    INVALID_JSON,
    RATE_LIMITED,
    TIMEOUT,
    UNAVAILABLE,
    UNEXPECTED_ANSWER,
)
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
)
from enrichment_pipeline.standins.cymru_server import (
    CymruStandinServer,
    standin_origins,
)
from enrichment_pipeline_tests.support.greynoise_server import (
    FakeGreyNoise,
    Reply,
    observed,
    slow,
    status,
)
from enrichment_pipeline_tests.support.synthetic_days import (
    UTC,
    event,
    public_ips,
    write_day,
)

KEY = "gn-faults-key-0b5e7c"
DAY = datetime.date(2018, 5, 6)
IPS = sorted(public_ips(8, seed=6))  # asked in this order
RETRIES = 1
TIMEOUT_S = 0.3


def again(reply: Reply) -> list[Reply]:
    """The same reply for the first attempt and every retry."""
    return [reply] * (RETRIES + 1)


# fault -> (replies scripted per IP position, the retry-list error expected per IP position)
FAULTS: dict[str, tuple[dict[int, list[Reply]], dict[int, str]]] = {
    "5xx": ({2: again(status(503))}, {2: "HTTP 503"}),
    "timeout": ({2: again(slow(1.0, observed()))}, {2: TIMEOUT}),
    "invalid_json": (
        {2: [status(200, "<html>not json</html>")], 5: [status(200, {"ip": "1.2.3.4", "noise": True, "riot": False})]},
        {2: INVALID_JSON, 5: UNEXPECTED_ANSWER},
    ),
    # A spent quota (Retry-After beyond a minute): the pass stops there and every later IP waits too.
    "429_storm": (
        {3: [status(429, {"plan": "community", "rate-limit": "100-lookups/day"}, {"Retry-After": "86400"})]},
        {n: RATE_LIMITED for n in range(3, len(IPS))},
    ),
}


@pytest.fixture(scope="module")
def running_server() -> Iterator[FakeGreyNoise]:
    with FakeGreyNoise(KEY) as fake:
        yield fake


@pytest.fixture
def greynoise(running_server: FakeGreyNoise) -> FakeGreyNoise:
    running_server.reset()
    return running_server


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    noon = datetime.datetime(2018, 5, 6, 12, tzinfo=UTC)
    write_day(tmp_path / "logs", DAY, [event(ip, f"s{n}", noon) for n, ip in enumerate(IPS)])
    return tmp_path / "logs"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'inventory.sqlite'}"


@pytest.fixture
def cymru() -> Iterator[CymruStandinServer]:
    with CymruStandinServer() as server:
        yield server


def enrich_day(
    log_dir: Path, db_url: str, cymru: CymruStandinServer, greynoise_url: str, instance: DagsterInstance
) -> ExecuteInProcessResult:
    resources = {
        "cowrie_logs": CowrieLogDirectory(log_dir=str(log_dir)),
        "maxmind": MaxMindResource(),
        "freshness": FreshnessResource(),
        "cymru": CymruResource(host="127.0.0.1", port=cymru.address[1], timeout_s=10),
        "inventory": InventoryDatabase(url=db_url),
        "greynoise": GreyNoiseResource(
            api_key=KEY, api_url=greynoise_url, rate_per_s=1000.0, max_retries=RETRIES, timeout_s=TIMEOUT_S
        ),
    }
    project = Definitions(assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, resources=resources)
    result = project.resolve_job_def("enrich_day").execute_in_process(
        partition_key=DAY.isoformat(), instance=instance, raise_on_error=False
    )
    assert result.success, [event.message for event in result.get_step_failure_events()]
    return result


def assert_answered_or_on_the_retry_list(db_url: str, failed: dict[str, str]) -> None:
    """GreyNoise failures are exactly `failed` (ip -> error); everything else is answered, Cymru untouched."""
    engine = make_engine(db_url)
    rows = {row["ip_address"]: row for row in fetch_inventory(engine)}
    assert set(rows) == set(IPS)
    assert {row["ip_address"]: row["error"] for row in fetch_failures(engine)} == failed
    for ip, row in rows.items():
        assert row["current_asn"] == standin_origins(ip)[0].asn, ip  # the other source is unaffected
        if ip in failed:
            assert row["greynoise_updated_at"] is None and "greynoise" not in row["enrichment"], ip
        else:
            assert row["greynoise_noise"] is True and row["enrichment"]["greynoise"]["observed"] is True, ip
    engine.dispose()


def assert_reported(result: ExecuteInProcessResult, instance: DagsterInstance, failures: int) -> None:
    (materialization,) = result.asset_materializations_for_node("greynoise_results")
    assert materialization.metadata["failed"].value == failures
    warnings = [entry.user_message for entry in instance.all_logs(result.run_id) if entry.level >= logging.WARNING]
    reported = [text for text in warnings if "lookups failed, kept for retry" in text]
    expected = [f"GreyNoise: {failures} lookups failed, kept for retry"] if failures else []
    assert [text.split(" (")[0] for text in reported] == expected, warnings
    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "no_failed_greynoise_lookups"]
    assert check.passed == (failures == 0) and check.metadata["failed_ips"].value == failures


def recover(log_dir, db_url, cymru, greynoise: FakeGreyNoise, instance, failed: set[str]) -> None:
    """A later run against a healthy server asks for exactly the failed IPs and completes them."""
    greynoise.reset()
    result = enrich_day(log_dir, db_url, cymru, greynoise.url, instance)
    assert sorted(greynoise.asked()) == sorted(failed)
    assert_reported(result, instance, 0)
    assert_answered_or_on_the_retry_list(db_url, {})


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_greynoise_fault_fails_only_its_ips_and_the_next_healthy_run_completes_them(
    fault, greynoise, cymru, log_dir, db_url
):
    scripts, errors = FAULTS[fault]
    for position, replies in scripts.items():
        greynoise.script(IPS[position], *replies)
    failed = {IPS[position]: error for position, error in errors.items()}
    with DagsterInstance.ephemeral() as instance:
        result = enrich_day(log_dir, db_url, cymru, greynoise.url, instance)
        assert_answered_or_on_the_retry_list(db_url, failed)
        assert_reported(result, instance, len(failed))
        recover(log_dir, db_url, cymru, greynoise, instance, set(failed))


def test_an_unreachable_greynoise_stops_after_five_failures_and_everything_waits_for_the_retry_list(
    greynoise, cymru, log_dir, db_url
):
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{bound_not_listening.getsockname()[1]}"
        with DagsterInstance.ephemeral() as instance:
            result = enrich_day(log_dir, db_url, cymru, dead_url, instance)
            failed = {ip: CONNECTION_ERROR if n < 5 else UNAVAILABLE for n, ip in enumerate(IPS)}
            assert_answered_or_on_the_retry_list(db_url, failed)
            assert_reported(result, instance, len(IPS))
            recover(log_dir, db_url, cymru, greynoise, instance, set(IPS))
