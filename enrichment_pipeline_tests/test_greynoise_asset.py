"""`greynoise_results` in real Dagster materializations against a loopback GreyNoise server: with and without
a key, freshness, the daily budget across runs, a rejected key, and the key absent from every log and record."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from dagster import (
    DagsterInstance,
    EnvVar,
    instance_for_test,
    materialize,
    serialize_value,
)

from enrichment_pipeline.assets import (
    cowrie_logs_ingest,
    enrichment_assets,
    greynoise_results,
)
from enrichment_pipeline.assets.greynoise import NO_KEY_NOTE
from enrichment_pipeline.core.eligibility import SKIP_IPV6, SKIP_NOT_GLOBAL
from enrichment_pipeline.core.frames import GREYNOISE_COLUMNS
from enrichment_pipeline.core.greynoise import (
    AUTH_MESSAGE,
    BUDGET_EXHAUSTED,
    skip_reason,
)
from enrichment_pipeline.core.inventory import (
    SourceUpdate,
    create_schema,
    fetch_inventory,
    make_engine,
    upsert_day,
)
from enrichment_pipeline.resources import (
    CowrieLogDirectory,
    CymruResource,
    FreshnessResource,
    GreyNoiseResource,
    InventoryDatabase,
    MaxMindResource,
)
from enrichment_pipeline.standins.cymru_server import CymruStandinServer
from enrichment_pipeline_tests.support.expected_ips import distinct_valid_ips
from enrichment_pipeline_tests.support.greynoise_server import (
    FakeGreyNoise,
    not_observed,
    status,
)

KEY = "gn-asset-secret-8d41f00d"
KEY_ENV = "GREYNOISE_API_KEY"
DAY = "2018-05-07"


@pytest.fixture(scope="module")
def running_server() -> Iterator[FakeGreyNoise]:
    with FakeGreyNoise(KEY) as fake:
        yield fake


@pytest.fixture
def server(running_server: FakeGreyNoise) -> FakeGreyNoise:
    running_server.reset()
    return running_server


@pytest.fixture
def instance_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for a file-backed Dagster instance; in RAM when possible, as Dagster commits every event."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="greynoise-test-") as directory:
        yield Path(directory)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'inventory.sqlite'}"


@pytest.fixture
def day_ips(sample_log_dir: Path) -> list[str]:
    """The day's distinct source IPs, read independently of the pipeline's reader."""
    return sorted(distinct_valid_ips(sample_log_dir / f"cowrie.json.{DAY}"))


def greynoise_resource(server: FakeGreyNoise, *, key: str | EnvVar = "", **options: object) -> GreyNoiseResource:
    options.setdefault("rate_per_s", 1000.0)
    options.setdefault("max_retries", 0)
    return GreyNoiseResource(api_key=key, api_url=server.url, **options)  # type: ignore[arg-type]


def run_greynoise(
    sample_log_dir: Path, db_url: str, greynoise: GreyNoiseResource, instance: DagsterInstance, **options: object
):
    return materialize(
        [cowrie_logs_ingest, greynoise_results],
        partition_key=DAY,
        instance=instance,
        resources={
            "cowrie_logs": CowrieLogDirectory(log_dir=str(sample_log_dir)),
            "greynoise": greynoise,
            "inventory": InventoryDatabase(url=db_url),
            "freshness": FreshnessResource(),
        },
        **options,
    )


def metadata_of(result, asset: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {name: getattr(value, "value", value) for name, value in event.materialization.metadata.items()}


def run_graph(
    sample_log_dir: Path, db_url: str, cymru_port: int, greynoise: GreyNoiseResource, instance: DagsterInstance
):
    return materialize(
        enrichment_assets,
        partition_key=DAY,
        instance=instance,
        resources={
            "cowrie_logs": CowrieLogDirectory(log_dir=str(sample_log_dir)),
            "maxmind": MaxMindResource(),
            "freshness": FreshnessResource(),
            "cymru": CymruResource(host="127.0.0.1", port=cymru_port, timeout_s=10),
            "inventory": InventoryDatabase(url=db_url),
            "greynoise": greynoise,
        },
    )


def run_records(instance: DagsterInstance, run_id: str) -> list[str]:
    """Everything the instance keeps about a run, as text: event log entries, job snapshot, run config."""
    run = instance.get_run_by_id(run_id)
    records = [serialize_value(entry) for entry in instance.all_logs(run_id)]
    return [*records, serialize_value(instance.get_job_snapshot(run.job_snapshot_id)), json.dumps(run.run_config)]


def test_with_a_key_the_graph_asks_each_global_ipv4_once_stores_the_answers_and_leaks_the_key_nowhere(
    server, sample_log_dir, db_url, day_ips, instance_dir, monkeypatch, caplog, capsys
):
    askable = [ip for ip in day_ips if skip_reason(ip) is None]
    server.script(askable[0], not_observed())
    server.script(askable[1], status(503))
    monkeypatch.setenv(KEY_ENV, KEY)
    greynoise = greynoise_resource(server, key=EnvVar(KEY_ENV))
    with CymruStandinServer() as cymru:
        # A file-backed instance for the first run, so its storage can be searched for the key below.
        with instance_for_test(temp_dir=str(instance_dir)) as instance:
            result = run_graph(sample_log_dir, db_url, cymru.address[1], greynoise, instance)
            records = run_records(instance, result.run_id)
        asked_first = server.asked()
        with DagsterInstance.ephemeral() as instance:
            repeat = run_graph(sample_log_dir, db_url, cymru.address[1], greynoise, instance)
            records += run_records(instance, repeat.run_id)
    assert result.success and repeat.success

    frame: pd.DataFrame = result.output_for_node("greynoise_results")
    assert dict(frame.dtypes.astype(str)) == {"day": "string", **GREYNOISE_COLUMNS}  # per-day rows (range runs)
    assert sorted(frame["ip"]) == day_ips
    assert sorted(asked_first) == sorted(askable)  # each askable IP exactly once
    statuses = dict(zip(frame["ip"], frame["status"], strict=False))
    assert statuses[askable[0]] == "not_observed" and statuses[askable[1]] == "failed"
    assert all(statuses[ip] == "observed" for ip in askable[2:])
    assert all(statuses[ip] == "skipped" for ip in set(day_ips) - set(askable))
    meta = metadata_of(result, "greynoise_results")
    assert meta["requests_made"] == len(asked_first) == len(askable)
    assert (meta["observed"], meta["not_observed"], meta["failed"]) == (len(askable) - 2, 1, 1)
    assert meta["budget_left"] == 100 - len(askable) and meta["daily_limit"] == 100

    rows = {row["ip_address"]: row for row in fetch_inventory(make_engine(db_url))}
    classified = frame.set_index("ip")["classification"]
    assert all(rows[ip]["greynoise_classification"] == classified[ip] for ip in askable[2:])
    assert rows[askable[0]]["enrichment"]["greynoise"]["observed"] is False
    # The repeat asks only what failed (it recovers now): everything else is fresh.
    assert server.asked()[len(asked_first) :] == [askable[1]]
    assert rows[askable[1]]["enrichment"]["greynoise"]["observed"] is True
    report = metadata_of(repeat, "daily_report")["greynoise_classifications"]
    assert "| malicious |" in report and "| not observed | 1 |" in report

    assert {seen.key for seen in server.requests} == {KEY}  # the EnvVar really reached the server
    captured = capsys.readouterr()
    assert records and all(KEY not in text for text in [caplog.text, captured.out, captured.err, *records])
    for path in instance_dir.rglob("*"):
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path


def test_without_a_key_every_row_is_disabled_nothing_is_asked_and_the_graph_still_runs(
    server, sample_log_dir, db_url, day_ips, monkeypatch
):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with CymruStandinServer() as cymru, DagsterInstance.ephemeral() as instance:
        result = run_graph(sample_log_dir, db_url, cymru.address[1], GreyNoiseResource(api_url=server.url), instance)
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]

    assert result.success
    frame = result.output_for_node("greynoise_results")
    assert sorted(frame["ip"]) == day_ips and set(frame["status"]) == {"disabled"}
    assert server.requests == []
    meta = metadata_of(result, "greynoise_results")
    assert meta["skipped_reason"] == NO_KEY_NOTE and meta["disabled"] == len(day_ips) and meta["requests_made"] == 0
    assert NO_KEY_NOTE in messages
    assert metadata_of(result, "merged_inventory")["rows_inserted"] == len(day_ips)
    assert metadata_of(result, "daily_report")["ips"] == len(day_ips)


def test_answers_younger_than_the_ttl_are_not_asked_again_and_older_ones_are(server, sample_log_dir, db_url, day_ips):
    askable = [ip for ip in day_ips if skip_reason(ip) is None]
    fresh, stale = askable[:3], askable[3:5]
    engine = make_engine(db_url)
    create_schema(engine)
    now = datetime.now(UTC)
    answer = {"observed": True, "noise": True, "riot": False, "classification": "malicious"}
    greynoise = greynoise_resource(server, key=KEY)  # FreshnessResource(): GreyNoise answers keep 7 days
    for ips, updated in ((fresh, now - timedelta(days=6)), (stale, now - timedelta(days=7, minutes=1))):
        upsert_day(engine, date(2018, 5, 1), [], [SourceUpdate(ip, greynoise=answer) for ip in ips], now=updated)

    with DagsterInstance.ephemeral() as instance:
        result = run_greynoise(sample_log_dir, db_url, greynoise, instance)

    frame = result.output_for_node("greynoise_results")
    assert sorted(server.asked()) == sorted(set(askable) - set(fresh))  # the stale ones are asked again
    assert set(frame.loc[frame["status"] == "fresh", "ip"]) == set(fresh)
    assert metadata_of(result, "greynoise_results")["fresh"] == 3


def test_the_daily_budget_holds_across_runs_and_the_rest_waits_for_the_retry_list(
    server, sample_log_dir, db_url, day_ips
):
    askable = [ip for ip in day_ips if skip_reason(ip) is None]
    assert len(askable) > 5
    greynoise = greynoise_resource(server, key=KEY, daily_limit=5)
    with DagsterInstance.ephemeral() as instance:
        first = run_greynoise(sample_log_dir, db_url, greynoise, instance)
        second = run_greynoise(sample_log_dir, db_url, greynoise, instance)

    assert len(server.requests) == 5
    frame = first.output_for_node("greynoise_results")
    assert (frame["status"] == "observed").sum() == 5
    assert set(frame.loc[frame["status"] == "failed", "error"]) == {BUDGET_EXHAUSTED}
    assert (
        metadata_of(first, "greynoise_results")["budget_left"],
        metadata_of(first, "greynoise_results")["failed"],
    ) == (0, len(askable) - 5)
    second_frame = second.output_for_node("greynoise_results")
    assert metadata_of(second, "greynoise_results")["requests_made"] == 0
    assert (second_frame["status"] == "failed").sum() == len(askable)


def test_a_rejected_key_fails_the_step_once_with_a_clear_message_and_without_the_key(
    server, sample_log_dir, db_url, monkeypatch
):
    wrong = "gn-revoked-key-1234abcd"
    monkeypatch.setenv(KEY_ENV, wrong)
    with DagsterInstance.ephemeral() as instance:
        result = run_greynoise(
            sample_log_dir, db_url, greynoise_resource(server, key=EnvVar(KEY_ENV)), instance, raise_on_error=False
        )
        records = [serialize_value(entry) for entry in instance.all_logs(result.run_id)]

    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_failure_data.user_failure_data.description == AUTH_MESSAGE
    assert len(server.requests) == 1  # stopped at the first 401, and the step was not retried
    assert all(wrong not in text for text in records)


def test_ipv6_and_private_sources_are_skipped_without_a_request(server, tmp_path, db_url):
    logs = tmp_path / "logs"
    logs.mkdir()
    sources = ["2a01:4f8:c0c:1234::5", "10.1.2.3", "8.8.8.8"]
    events = [
        {
            "eventid": "cowrie.session.connect",
            "src_ip": ip,
            "session": f"s{n}",
            "timestamp": f"{DAY}T10:00:0{n}.000000Z",
        }
        for n, ip in enumerate(sources)
    ]
    (logs / f"cowrie.json.{DAY}").write_text("\n".join(json.dumps(e) for e in events) + "\n", encoding="utf-8")
    with DagsterInstance.ephemeral() as instance:
        result = run_greynoise(logs, db_url, greynoise_resource(server, key=KEY), instance)

    frame = result.output_for_node("greynoise_results").set_index("ip")
    assert server.asked() == ["8.8.8.8"]
    assert frame.loc["2a01:4f8:c0c:1234::5", ["status", "error"]].tolist() == ["skipped", SKIP_IPV6]
    assert frame.loc["10.1.2.3", ["status", "error"]].tolist() == ["skipped", SKIP_NOT_GLOBAL]
    assert metadata_of(result, "greynoise_results")["failed"] == 0
