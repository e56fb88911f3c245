"""A GreyNoise endpoint that stalls (reads a request, never answers) cannot hold a pass for long: the pass stops
after a few timeouts in total or at its deadline, each IP not reached waits on the retry list with a fixed reason,
and the run stays green. Client level and through the real `enrich_day` job, against a loopback server."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, Definitions
from werkzeug import Response

from enrichment_pipeline.core.eligibility import SKIP_IPV6, SKIP_NOT_GLOBAL
from enrichment_pipeline.core.greynoise import (
    _MAX_TIMEOUTS_PER_PASS,
    DEADLINE_PASSED,
    RATE_LIMITED,
    TIMEOUT,
    TOO_MANY_TIMEOUTS,
)
from enrichment_pipeline.core.greynoise_client import GreyNoiseClient
from enrichment_pipeline.core.inventory import fetch_failures, fetch_inventory, make_engine
from enrichment_pipeline.definitions import defs
from enrichment_pipeline.resources import (
    CowrieLogDirectory,
    CymruResource,
    FreshnessResource,
    GreyNoiseResource,
    InventoryDatabase,
    MaxMindResource,
)
from enrichment_pipeline.standins.cymru_server import CymruStandinServer
from enrichment_pipeline_tests.support.greynoise_server import FakeGreyNoise, Reply, observed, status
from enrichment_pipeline_tests.support.synthetic_days import UTC, event, public_ips, write_day

KEY = "gn-stalls-key-71c2e9"
DAY = datetime.date(2018, 5, 8)
IPS = public_ips(20, seed=13)  # asked in this order
STALL_EVERY = 3
TIMEOUT_S = 0.3


@pytest.fixture(scope="module")
def running_server() -> Iterator[FakeGreyNoise]:
    with FakeGreyNoise(KEY) as fake:  # stalled handlers are released when the module's server shuts down
        yield fake


@pytest.fixture
def server(running_server: FakeGreyNoise) -> FakeGreyNoise:
    running_server.reset()
    return running_server


def client_for(server: FakeGreyNoise, **options: object) -> GreyNoiseClient:
    options.setdefault("rate_per_s", 1000.0)
    options.setdefault("max_retries", 0)
    return GreyNoiseClient(server.url, KEY, **options)  # type: ignore[arg-type]


def ticking(now: list[float], step_s: float, then: Reply) -> Reply:
    """Each request moves the client's injected clock on by `step_s`: a slow server without real waiting."""

    def reply(ip: str) -> Response:
        now[0] += step_s
        return then(ip)

    return reply


def test_stalls_between_successes_stop_the_pass_after_the_timeout_limit_counted_in_total(server, caplog):
    server.reset(stall_every=STALL_EVERY)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), client_for(server, timeout_s=TIMEOUT_S) as client:
        result = client.lookup(IPS)
    elapsed = time.monotonic() - started

    asked = IPS[: STALL_EVERY * _MAX_TIMEOUTS_PER_PASS]
    stalled = asked[STALL_EVERY - 1 :: STALL_EVERY]
    assert server.asked() == asked  # answers in between did not reset the count
    assert set(result.answers) == set(asked) - set(stalled)
    assert result.failed == {ip: TIMEOUT for ip in stalled} | {ip: TOO_MANY_TIMEOUTS for ip in IPS[len(asked) :]}
    assert result.stop_reason == TOO_MANY_TIMEOUTS and result.not_reached == len(IPS) - len(asked)
    # Three stalls, not the six of the whole list (or 20 x TIMEOUT_S were every IP to stall).
    assert elapsed < _MAX_TIMEOUTS_PER_PASS * TIMEOUT_S + 1.5, elapsed
    assert any("timed out" in record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)
    assert KEY not in caplog.text


def test_at_the_deadline_the_pass_stops_and_every_ip_is_accounted_for_exactly_once(server):
    now = [0.0]
    server.reset(default=ticking(now, 1.0, observed()))
    ips = [*IPS[:2], "10.1.2.3", *IPS[2:5], "2001:db8::1", *IPS[5:10], "192.168.7.7"]
    with client_for(server, timeout_s=5.0, pass_deadline_s=4.5, clock=lambda: now[0], sleep=lambda _s: None) as client:
        result = client.lookup(ips)

    assert server.asked() == IPS[:5]  # one simulated second each: the sixth would start after 4.5 s
    assert set(result.answers) == set(IPS[:5])
    assert result.failed == dict.fromkeys(IPS[5:10], DEADLINE_PASSED)
    assert result.skipped == {"10.1.2.3": SKIP_NOT_GLOBAL, "2001:db8::1": SKIP_IPV6, "192.168.7.7": SKIP_NOT_GLOBAL}
    outcomes = [*result.answers, *result.skipped, *result.failed]
    assert sorted(outcomes) == sorted(ips)  # each IP exactly once
    assert result.requests_made == 5 and result.stop_reason == DEADLINE_PASSED and result.not_reached == 5


def test_a_stalled_request_is_cut_at_the_deadline_not_at_its_own_timeout(server):
    server.reset(stall_every=STALL_EVERY)
    started = time.monotonic()
    with client_for(server, timeout_s=5.0, pass_deadline_s=1.0) as client:
        result = client.lookup(IPS)
    elapsed = time.monotonic() - started

    assert elapsed < 2.5, elapsed  # the third request alone would otherwise hold the pass for 5 s
    assert server.asked() == IPS[:3]
    assert set(result.answers) == set(IPS[:2])
    assert result.failed == {IPS[2]: TIMEOUT} | dict.fromkeys(IPS[3:], DEADLINE_PASSED)


@pytest.mark.parametrize("deadline_s", [600.0, 10.0])
def test_a_retry_after_beyond_the_deadline_ends_the_pass_instead_of_waiting(server, deadline_s):
    server.script(IPS[0], status(429, {"plan": "community"}, {"Retry-After": "30"}))
    waits: list[float] = []  # injected sleep: no real waiting
    with client_for(server, max_retries=1, pass_deadline_s=deadline_s, sleep=waits.append) as client:
        result = client.lookup(IPS[:3])
    if deadline_s > 30:  # room for the wait: taken, then the IP is answered
        assert 30.0 in waits and set(result.answers) == set(IPS[:3])
    else:  # like a Retry-After beyond a minute: the pass ends at once, the rest waits for the retry list
        assert max(waits, default=0) < 1 and server.asked() == IPS[:1]
        assert result.failed == dict.fromkeys(IPS[:3], RATE_LIMITED)


# Through the graph ------------------------------------------------------------------------------------------


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    noon = datetime.datetime(2018, 5, 8, 12, tzinfo=UTC)
    write_day(tmp_path / "logs", DAY, [event(ip, f"s{n}", noon) for n, ip in enumerate(IPS)])
    return tmp_path / "logs"


def enrich_day(log_dir: Path, db_url: str, cymru_port: int, server: FakeGreyNoise, instance, **greynoise: object):
    resources = {
        "cowrie_logs": CowrieLogDirectory(log_dir=str(log_dir)),
        "maxmind": MaxMindResource(),
        "freshness": FreshnessResource(),
        "cymru": CymruResource(host="127.0.0.1", port=cymru_port, timeout_s=10),
        "inventory": InventoryDatabase(url=db_url),
        "greynoise": GreyNoiseResource(
            api_key=KEY, api_url=server.url, rate_per_s=1000.0, max_retries=0, timeout_s=TIMEOUT_S, **greynoise
        ),
    }
    project = Definitions(assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, resources=resources)
    result = project.resolve_job_def("enrich_day").execute_in_process(
        partition_key=DAY.isoformat(), instance=instance, raise_on_error=False
    )
    assert result.success, [event.message for event in result.get_step_failure_events()]
    return result


def greynoise_metadata(result) -> dict:
    (materialization,) = result.asset_materializations_for_node("greynoise_results")
    return {name: getattr(value, "value", value) for name, value in materialization.metadata.items()}


def test_through_the_graph_a_stalling_greynoise_stops_at_the_deadline_and_the_rest_waits_for_the_retry_list(
    server, log_dir, tmp_path
):
    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    server.reset(stall_every=STALL_EVERY)
    with CymruStandinServer() as cymru, DagsterInstance.ephemeral() as instance:
        result = enrich_day(log_dir, db_url, cymru.address[1], server, instance, pass_deadline_s=0.5)
        asked = server.asked()
        meta = greynoise_metadata(result)
        # 0.5 s holds at most two stalls (0.3 s, then the rest of the deadline): six requests at most.
        assert len(set(asked)) == len(asked) and 3 <= len(asked) <= 2 * STALL_EVERY
        not_reached = sorted(set(IPS) - set(asked))
        assert meta["stopped_early"] == DEADLINE_PASSED and meta["not_reached"] == len(not_reached)
        assert meta["failed"] == len(IPS) - len(asked) + len(asked) // STALL_EVERY
        assert meta["seconds"] < 0.5 + TIMEOUT_S + 1.5, meta["seconds"]
        (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "no_failed_greynoise_lookups"]
        assert not check.passed  # a warning, the run itself is green

        engine = make_engine(db_url)
        retry_list = {row["ip_address"]: (row["source"], row["error"]) for row in fetch_failures(engine)}
        stalled = asked[STALL_EVERY - 1 :: STALL_EVERY]
        expected = {ip: ("greynoise", TIMEOUT) for ip in stalled} | dict.fromkeys(
            not_reached, ("greynoise", DEADLINE_PASSED)
        )
        assert retry_list == expected
        assert {row["ip_address"] for row in fetch_inventory(engine)} == set(IPS)

        # Healthy again: the next run asks for exactly the IPs on the retry list and completes them.
        server.reset()
        healed = greynoise_metadata(enrich_day(log_dir, db_url, cymru.address[1], server, instance))
        assert sorted(server.asked()) == sorted(expected)
        assert healed["stopped_early"] == "" and healed["not_reached"] == 0 and fetch_failures(engine) == []
        engine.dispose()
