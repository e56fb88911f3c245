"""The daily schedule: which partition a tick requests, in which timezone it fires, and when it skips."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from dagster import (
    AssetMaterialization,
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRequest,
    SkipReason,
    build_schedule_context,
    instance_for_test,
)
from dagster._core.test_utils import create_run_for_test

from enrichment_pipeline.definitions import defs, enrich_day_job
from enrichment_pipeline.schedules import (
    CRON_ENV,
    SCHEDULE_NAME,
    TIMEZONE_ENV,
    build_daily_schedule,
)


def tick(schedule, when: datetime, instance=None):
    return schedule(build_schedule_context(instance=instance, scheduled_execution_time=when))


@pytest.fixture
def schedule():
    return defs.resolve_schedule_def(SCHEDULE_NAME)


def test_a_tick_requests_the_previous_day_as_a_partition_of_the_whole_graph(schedule):
    request = tick(schedule, datetime(2018, 5, 8, 0, 30, tzinfo=UTC))
    assert isinstance(request, RunRequest)
    assert request.partition_key == "2018-05-07"
    assert request.run_key == "2018-05-07"  # the same day twice is a no-op
    assert schedule.job_name == "enrich_day"
    assert tick(schedule, datetime(2018, 5, 8, 23, 59, tzinfo=UTC)).partition_key == "2018-05-07"
    assert tick(schedule, datetime(2018, 5, 9, 0, 0, tzinfo=UTC)).partition_key == "2018-05-08"


def test_defaults_daily_after_midnight_utc_and_running(schedule):
    assert schedule.cron_schedule == "30 0 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING


def test_before_the_first_day_has_ended_a_tick_skips(schedule):
    assert isinstance(tick(schedule, datetime(2018, 5, 1, 12, 0, tzinfo=UTC)), SkipReason)


def test_the_timezone_sets_when_it_fires_but_a_day_is_only_requested_once_it_has_ended_in_utc(monkeypatch):
    monkeypatch.setenv(TIMEZONE_ENV, "Europe/Berlin")
    monkeypatch.setenv(CRON_ENV, "30 2 * * *")
    schedule = build_daily_schedule(enrich_day_job)
    assert schedule.execution_timezone == "Europe/Berlin" and schedule.cron_schedule == "30 2 * * *"
    berlin = ZoneInfo("Europe/Berlin")
    # 02:30 CEST is 00:30 UTC: the 7th has ended.
    assert tick(schedule, datetime(2018, 5, 8, 2, 30, tzinfo=berlin)).partition_key == "2018-05-07"
    # 01:30 CEST is 23:30 UTC on the 7th: the 7th is still running, so the newest ended day is the 6th.
    assert tick(schedule, datetime(2018, 5, 8, 1, 30, tzinfo=berlin)).partition_key == "2018-05-06"


@pytest.mark.parametrize("bad", ["Mars/Olympus_Mons", "../../etc/passwd"])
def test_an_unknown_timezone_fails_when_the_definitions_load(monkeypatch, bad):
    monkeypatch.setenv(TIMEZONE_ENV, bad)
    with pytest.raises(ValueError, match=TIMEZONE_ENV):
        build_daily_schedule(enrich_day_job)


def test_a_day_already_in_the_inventory_or_being_run_is_skipped(schedule):
    when = datetime(2018, 5, 8, 0, 30, tzinfo=UTC)
    with instance_for_test() as instance:
        assert isinstance(tick(schedule, when, instance), RunRequest)

        run = create_run_for_test(
            instance, job_name="enrich_day", tags={"dagster/partition": "2018-05-07"}, status=DagsterRunStatus.STARTED
        )
        skipped = tick(schedule, when, instance)
        assert isinstance(skipped, SkipReason) and run.run_id in skipped.skip_message

        instance.report_run_canceled(run)
        assert isinstance(tick(schedule, when, instance), RunRequest)  # a cancelled run covers nothing

        instance.report_runless_asset_event(AssetMaterialization("merged_inventory", partition="2018-05-07"))
        skipped = tick(schedule, when, instance)
        assert isinstance(skipped, SkipReason) and "already in the inventory" in skipped.skip_message
        assert isinstance(tick(schedule, datetime(2018, 5, 9, 0, 30, tzinfo=UTC), instance), RunRequest)


def test_a_day_inside_a_running_backfill_range_is_skipped(schedule):
    when = datetime(2018, 5, 8, 0, 30, tzinfo=UTC)
    with instance_for_test() as instance:
        range_tags = {
            "dagster/asset_partition_range_start": "2018-05-01",
            "dagster/asset_partition_range_end": "2018-05-07",
        }
        run = create_run_for_test(instance, job_name="__ASSET_JOB", tags=range_tags, status=DagsterRunStatus.STARTED)
        skipped = tick(schedule, when, instance)
        assert isinstance(skipped, SkipReason) and run.run_id in skipped.skip_message
        assert "2018-05-01..2018-05-07" in skipped.skip_message
        # The next day is outside the range: requested.
        assert isinstance(tick(schedule, datetime(2018, 5, 9, 0, 30, tzinfo=UTC), instance), RunRequest)
