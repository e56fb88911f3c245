"""The stale refresh: core.refresh against the loopback Cymru stand-in and a real inventory, the
`refresh_stale` job run by Dagster, and its schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dagster import (
    DagsterInstance,
    DefaultScheduleStatus,
    RunRequest,
    build_schedule_context,
)
from sqlalchemy import Engine, select

from enrichment_pipeline.core.cymru import CymruBulkClient
from enrichment_pipeline.core.freshness import FreshnessPolicy, MaxMindBuilds
from enrichment_pipeline.core.greynoise import (
    BUDGET_EXHAUSTED,
    GreyNoiseAuthError,
)
from enrichment_pipeline.core.greynoise_client import GreyNoiseClient
from enrichment_pipeline.core.inventory import (
    DAILY_ACTIVITY,
    GreyNoiseDailyBudget,
    fetch_failures,
    fetch_inventory,
)
from enrichment_pipeline.core.maxmind import MaxMindLookup
from enrichment_pipeline.core.reenrich import (
    budgeted_greynoise,
    plan_chunk,
    refresh,
    select_stalest,
)
from enrichment_pipeline.jobs import refresh_stale
from enrichment_pipeline.resources import (
    CymruResource,
    FreshnessResource,
    GreyNoiseResource,
    InventoryDatabase,
    MaxMindResource,
)
from enrichment_pipeline.schedules import refresh_stale_schedule
from enrichment_pipeline.standins.cymru_server import CymruStandinServer
from enrichment_pipeline_tests.support.cymru_standin import sent
from enrichment_pipeline_tests.support.greynoise_server import (
    FakeGreyNoise,
    not_observed,
    status,
)
from enrichment_pipeline_tests.support.refresh_inventory import (
    ALL,
    GLOBAL_V4,
    KEY,
    NOT_ASKABLE,
    T0,
    WITH_ASN,
    WITHOUT_ASN,
    seed,
)


def policy_for(geoip: MaxMindLookup) -> FreshnessPolicy:
    return FreshnessPolicy.from_days(7, 30, 7, MaxMindBuilds.of(geoip))


def client(server: CymruStandinServer) -> CymruBulkClient:
    return CymruBulkClient("127.0.0.1", server.address[1], timeout_s=5, batch_size=100)


def daily_rows(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        return sorted(tuple(row) for row in conn.execute(select(DAILY_ACTIVITY)))


def run_refresh(engine, ips, geoip, server, now, greynoise=None, **options):
    return refresh(
        engine,
        ips,
        maxmind=geoip,
        cymru=client(server),
        greynoise=greynoise,
        policy=policy_for(geoip),
        clock=lambda: now,
        **{"chunk_size": 1000, **options},
    )


def greynoise_lookup(server: FakeGreyNoise, engine: Engine, *, key: str = KEY, daily_limit: int = 100):
    gn_client = GreyNoiseClient(server.url, key, rate_per_s=1000, max_retries=0)
    return budgeted_greynoise(gn_client, GreyNoiseDailyBudget(engine, daily_limit))


def test_refresh_of_expired_ips_asks_cymru_only_without_a_maxmind_asn_and_keeps_activity(sqlite_engine, geoip, standin):
    seed(sqlite_engine, geoip, T0)
    activity_before = daily_rows(sqlite_engine)
    now = T0 + timedelta(days=31)

    selected = select_stalest(sqlite_engine, 10, policy_for(geoip), now=now, greynoise_enabled=False)
    report = run_refresh(sqlite_engine, selected, geoip, standin, now)

    assert sorted(selected) == ALL
    assert sent(standin) == sorted(WITHOUT_ASN)
    assert report.counts()["cymru_asked"] == 3 and report.counts()["maxmind_rewritten"] == 5
    rows = {row["ip_address"]: row for row in fetch_inventory(sqlite_engine)}
    assert all(rows[ip]["maxmind_updated_at"] == now for ip in ALL)
    assert all(
        rows[ip]["cymru_updated_at"] == now and rows[ip]["enrichment"]["cymru"]["as_name"] != "OLD"
        for ip in WITHOUT_ASN
    )
    assert all("cymru" not in rows[ip]["enrichment"] for ip in WITH_ASN)
    assert daily_rows(sqlite_engine) == activity_before  # no day's activity changed
    assert all(rows[ip]["session_count"] == 2 for ip in ALL)
    assert select_stalest(sqlite_engine, 10, policy_for(geoip), now=now, greynoise_enabled=False) == []


def test_only_the_stale_source_is_asked_and_fresh_ips_cost_nothing(sqlite_engine, geoip, standin):
    seed(sqlite_engine, geoip, T0)

    report = run_refresh(sqlite_engine, ALL, geoip, standin, T0 + timedelta(days=1))
    assert standin.requests == [] and report.counts()["maxmind_rewritten"] == 0

    # After 8 days MaxMind (TTL 7) is stale but Cymru (TTL 30) is not.
    later = T0 + timedelta(days=8)
    assert sorted(select_stalest(sqlite_engine, 10, policy_for(geoip), now=later, greynoise_enabled=False)) == ALL
    report = run_refresh(sqlite_engine, ALL, geoip, standin, later)
    assert standin.requests == []
    assert report.counts()["maxmind_rewritten"] == 5
    rows = fetch_inventory(sqlite_engine)
    assert {
        (row["maxmind_updated_at"], row["cymru_updated_at"]) for row in rows if row["ip_address"] in WITHOUT_ASN
    } == {(later, T0)}


def test_forced_refresh_asks_every_applicable_source(sqlite_engine, geoip, standin):
    seed(sqlite_engine, geoip, T0)

    plan = plan_chunk(sqlite_engine, ALL, geoip, policy_for(geoip), now=T0, greynoise_enabled=False, force=True)
    run_refresh(sqlite_engine, [WITHOUT_ASN[0], WITH_ASN[0]], geoip, standin, T0 + timedelta(minutes=1), force=True)

    assert (plan.maxmind_rewritten, sorted(plan.cymru), plan.greynoise) == (ALL, sorted(WITHOUT_ASN), [])
    assert sent(standin) == [WITHOUT_ASN[0]]


def test_refresh_works_in_chunks_each_written_on_its_own(sqlite_engine, geoip, standin):
    seed(sqlite_engine, geoip, T0)
    now = T0 + timedelta(days=31)
    written: list[list[str]] = []

    report = run_refresh(
        sqlite_engine, ALL, geoip, standin, now, chunk_size=2, on_chunk=lambda chunk: written.append(chunk.plan.ips)
    )

    assert written == [ALL[0:2], ALL[2:4], ALL[4:5]]
    assert len(report.chunks) == 3
    assert [sorted(request) for request in standin.requests] == sorted(
        [sorted(set(ips) & set(WITHOUT_ASN)) for ips in written if set(ips) & set(WITHOUT_ASN)]
    )


def test_failed_refresh_backs_off_then_recovers(sqlite_engine, geoip, standin):
    seed(sqlite_engine, geoip, T0)
    now = T0 + timedelta(days=31)
    policy = policy_for(geoip)
    standin.set_fault("reset_mid_reply")

    report = run_refresh(sqlite_engine, ALL, geoip, standin, now)

    assert report.counts()["cymru_failed"] == 3
    failures = fetch_failures(sqlite_engine)
    assert {row["ip_address"] for row in failures} == set(WITHOUT_ASN)
    assert all(row["next_retry_at"] == now + timedelta(minutes=15) for row in failures)
    # The old Cymru answer is kept, still stale: but the IPs wait for their retry time.
    assert select_stalest(sqlite_engine, 10, policy, now=now + timedelta(minutes=14), greynoise_enabled=False) == []
    due = select_stalest(sqlite_engine, 10, policy, now=now + timedelta(minutes=15), greynoise_enabled=False)
    assert sorted(due) == sorted(WITHOUT_ASN)

    standin.set_fault(None)
    asked_before = len(standin.requests)
    run_refresh(sqlite_engine, WITHOUT_ASN, geoip, standin, now + timedelta(minutes=14))  # named, not forced
    assert len(standin.requests) == asked_before  # still backing off: Cymru is not asked
    report = run_refresh(sqlite_engine, due, geoip, standin, now + timedelta(minutes=15))
    assert sent(standin, asked_before) == sorted(WITHOUT_ASN)
    assert report.counts()["failures_cleared"] == 3 and fetch_failures(sqlite_engine) == []


def test_refresh_job_runs_in_dagster_and_reports_counts(tmp_path, geoip, standin, monkeypatch):
    from enrichment_pipeline.core import freshness

    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    resources = {
        "maxmind": MaxMindResource(asn_db=geoip.asn_info.path),
        "freshness": FreshnessResource(),
        "cymru": CymruResource(host="127.0.0.1", port=standin.address[1], timeout_s=5),
        "inventory": InventoryDatabase(url=db_url),
        "greynoise": GreyNoiseResource(),  # no key: GreyNoise sits this run out
    }
    engine = resources["inventory"].engine()
    seed(engine, geoip, T0)
    monkeypatch.setattr(freshness, "utc_now", lambda: T0 + timedelta(days=31))
    run_config = {"ops": {"refresh_stale_ips": {"config": {"max_ips": 4, "chunk_size": 3}}}}

    with DagsterInstance.ephemeral() as instance:
        result = refresh_stale.execute_in_process(resources=resources, instance=instance, run_config=run_config)

    assert result.success
    (output,) = [event for event in result.all_node_events if event.is_successful_output]
    metadata = {key: value.value for key, value in output.event_specific_data.metadata.items()}
    assert (metadata["selected"], metadata["chunks"], metadata["maxmind_rewritten"]) == (4, 2, 4)
    assert metadata["cymru_asked"] == len(sent(standin)) >= 1
    assert set(sent(standin)) <= set(WITHOUT_ASN)
    assert len([row for row in fetch_inventory(engine) if row["maxmind_updated_at"] > T0]) == 4


def test_schedule_runs_the_refresh_job_every_six_hours_and_is_on_by_default():
    assert refresh_stale_schedule.cron_schedule == "0 */6 * * *"
    assert refresh_stale_schedule.execution_timezone == "UTC"
    assert refresh_stale_schedule.default_status == DefaultScheduleStatus.RUNNING
    assert refresh_stale_schedule.job_name == "refresh_stale"

    with DagsterInstance.ephemeral() as instance:
        context = build_schedule_context(
            instance=instance, scheduled_execution_time=datetime(2018, 5, 7, 6, tzinfo=UTC)
        )
        (request,) = refresh_stale_schedule.evaluate_tick(context).run_requests
    assert isinstance(request, RunRequest)


# --- GreyNoise in the refresh ------------------------------------------------------------------------------


def test_refresh_asks_greynoise_only_for_stale_global_ipv4_and_stores_the_verdict(
    sqlite_engine, geoip, standin, refresh_greynoise
):
    ips = GLOBAL_V4 + NOT_ASKABLE
    seed(sqlite_engine, geoip, T0, ips)  # MaxMind and Cymru fresh, GreyNoise never asked
    refresh_greynoise.script(GLOBAL_V4[1], not_observed())
    now = T0 + timedelta(hours=1)
    policy = policy_for(geoip)

    assert select_stalest(sqlite_engine, 10, policy, now=now, greynoise_enabled=False) == []
    due = select_stalest(sqlite_engine, 10, policy, now=now, greynoise_enabled=True)
    assert sorted(due) == sorted(GLOBAL_V4)
    report = run_refresh(
        sqlite_engine, due, geoip, standin, now, greynoise=greynoise_lookup(refresh_greynoise, sqlite_engine)
    )

    assert sorted(refresh_greynoise.asked()) == sorted(GLOBAL_V4) and standin.requests == []
    assert report.counts()["greynoise_answered"] == 2
    rows = {row["ip_address"]: row for row in fetch_inventory(sqlite_engine)}
    assert rows[GLOBAL_V4[0]]["greynoise_noise"] is True and rows[GLOBAL_V4[0]]["greynoise_classification"]
    assert rows[GLOBAL_V4[1]]["greynoise_noise"] is False
    assert rows[GLOBAL_V4[1]]["enrichment"]["greynoise"]["observed"] is False  # 404: a cacheable answer
    assert all(rows[ip]["greynoise_updated_at"] is None for ip in NOT_ASKABLE)
    assert fetch_failures(sqlite_engine) == []  # skipped is not failed
    assert select_stalest(sqlite_engine, 10, policy, now=now, greynoise_enabled=True) == []

    # Refreshing the same IPs again asks nothing: the answers (404 included) are fresh.
    run_refresh(sqlite_engine, ips, geoip, standin, now, greynoise=greynoise_lookup(refresh_greynoise, sqlite_engine))
    assert len(refresh_greynoise.requests) == 2


def test_greynoise_failures_and_the_spent_budget_go_to_the_retry_list(sqlite_engine, geoip, standin, refresh_greynoise):
    seed(sqlite_engine, geoip, T0, GLOBAL_V4)
    refresh_greynoise.script(GLOBAL_V4[0], status(503))
    now = T0 + timedelta(hours=1)

    report = run_refresh(
        sqlite_engine,
        GLOBAL_V4,
        geoip,
        standin,
        now,
        greynoise=greynoise_lookup(refresh_greynoise, sqlite_engine, daily_limit=1),
    )

    assert refresh_greynoise.asked() == [GLOBAL_V4[0]]  # the budget allowed one request
    assert report.counts()["greynoise_failed"] == 2
    errors = {row["ip_address"]: row["error"] for row in fetch_failures(sqlite_engine)}
    assert errors == {GLOBAL_V4[0]: "HTTP 503", GLOBAL_V4[1]: BUDGET_EXHAUSTED}
    assert all(row["source"] == "greynoise" for row in fetch_failures(sqlite_engine))


def test_a_rejected_key_stops_the_refresh_after_saving_the_chunk(sqlite_engine, geoip, standin, refresh_greynoise):
    seed(sqlite_engine, geoip, T0, GLOBAL_V4 + WITHOUT_ASN)
    now = T0 + timedelta(days=31)
    wrong_key = greynoise_lookup(refresh_greynoise, sqlite_engine, key="not-the-key")

    with pytest.raises(GreyNoiseAuthError) as raised:
        run_refresh(sqlite_engine, GLOBAL_V4 + WITHOUT_ASN, geoip, standin, now, greynoise=wrong_key, chunk_size=2)

    assert "not-the-key" not in str(raised.value) and "401" in str(raised.value)
    assert len(refresh_greynoise.requests) == 1  # the first 401 stopped the pass
    rows = {row["ip_address"]: row for row in fetch_inventory(sqlite_engine)}
    assert all(rows[ip]["maxmind_updated_at"] == now for ip in GLOBAL_V4)  # the first chunk was saved
    assert all(rows[ip]["maxmind_updated_at"] == T0 for ip in WITHOUT_ASN)  # no further chunk was run


def test_refresh_job_with_a_greynoise_key(tmp_path, geoip, standin, refresh_greynoise, monkeypatch):
    from dagster import EnvVar

    from enrichment_pipeline.core import freshness

    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    monkeypatch.setenv("TEST_GREYNOISE_KEY", KEY)
    resources = {
        "maxmind": MaxMindResource(asn_db=geoip.asn_info.path),
        "freshness": FreshnessResource(),
        "cymru": CymruResource(host="127.0.0.1", port=standin.address[1], timeout_s=5),
        "inventory": InventoryDatabase(url=db_url),
        "greynoise": GreyNoiseResource(
            api_key=EnvVar("TEST_GREYNOISE_KEY"), api_url=refresh_greynoise.url, rate_per_s=1000
        ),
    }
    seed(resources["inventory"].engine(), geoip, T0, GLOBAL_V4 + NOT_ASKABLE)
    monkeypatch.setattr(freshness, "utc_now", lambda: T0 + timedelta(hours=2))

    with DagsterInstance.ephemeral() as instance:
        result = refresh_stale.execute_in_process(resources=resources, instance=instance)
        logs = [entry.user_message for entry in instance.all_logs(result.run_id)]

    assert result.success
    assert sorted(refresh_greynoise.asked()) == sorted(GLOBAL_V4) and standin.requests == []
    assert not any(KEY in message for message in logs)
    assert GreyNoiseDailyBudget(resources["inventory"].engine(), 100).used((T0 + timedelta(hours=2)).date()) == 2
