"""A run killed with SIGKILL while its step holds the `cymru` pool slot must not keep the slot: within a bounded
time the run is FAILURE and another run's Cymru step gets the slot and queries Team Cymru.

Real parts: `dagster-webserver` and `dagster-daemon` on a temporary DAGSTER_HOME holding the committed
dagster_home/dagster.yaml verbatim (pool `cymru` limited to one step, run monitoring, run retries), runs of
`enrich_day` for one sample day launched through GraphQL as the UI does (or the README's CLI command), a
Cymru stand-in that never answers (so the Cymru step sits on its slot), and a real `kill -9`:
- of the run worker alone: the code server that spawned it marks the run failed; the daemon gives the slot
  back `free_slots_after_run_end_seconds` after, at its next look (`run_monitoring.poll_interval_seconds`);
- of the daemon's whole process group, run worker and code server included (a crash), then a new daemon:
  nothing else would ever mark that run failed -- the `dead_run_reaper` sensor does;
- of a CLI run (`dagster asset materialize`), which no code server watches: the reaper again.
Then the pure decision of the reaper (`run_reaper.judge`) against every kind of process it may meet."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, build_sensor_context, instance_for_test

from enrichment_pipeline import run_reaper
from enrichment_pipeline.run_reaper import (
    CLOCK_TOLERANCE_S,
    PLACEMENT_WINDOW_S,
    REAPER_NAME,
    ProcessInfo,
    StartedRun,
    Worker,
    dead_run_reaper,
    dump_cursor,
    judge,
    load_cursor,
    probe_process,
)
from enrichment_pipeline.standins.cymru_server import CymruStandinServer
from enrichment_pipeline_tests.support.dagster_services import (
    PROJECT_ROOT,
    DagsterServices,
    ServiceError,
    wait_for,
)

pytestmark = pytest.mark.timeout(300)

JOB = "enrich_day"
DAY = "2018-05-07"
TO_THE_CYMRU_STEP_S = 120  # a fresh daemon launching the run, the steps before Cymru
# From the kill to another run's Cymru step holding the slot. What it takes: the run marked failed (~1 s by
# its code server; up to the reaper's INTERVAL_S plus a daemon restart), free_slots_after_run_end_seconds
# (30 s), the daemon's next look (poll_interval_seconds: 10 s; Dagster's default 120 s), the queued run
# launched and through its first steps. With Dagster's default poll interval it is ~100 s.
SLOT_BACK_S = 75
SLOT_BACK_WITHOUT_A_WORKER_S = 110  # the same after a daemon crash, or for a CLI run: the reaper's turn first
PIPELINE_PREFIXES = ("COWRIE_", "CYMRU_", "GEOIP_", "GREYNOISE_", "ENRICHMENT_", "MAXMIND_", "DAGSTER_")


@pytest.fixture
def never_answers() -> Iterator[CymruStandinServer]:
    with CymruStandinServer(latency_s=3600) as server:
        yield server


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A DAGSTER_HOME holding the committed default instance config, unchanged."""
    directory = tmp_path / "dagster_home"
    directory.mkdir()
    shutil.copyfile(PROJECT_ROOT / "dagster_home" / "dagster.yaml", directory / "dagster.yaml")
    return directory


@pytest.fixture
def env(tmp_path: Path, sample_log_dir: Path, never_answers: CymruStandinServer) -> dict[str, str]:
    logs = tmp_path / "cowrie"
    logs.mkdir()
    shutil.copyfile(sample_log_dir / f"cowrie.json.{DAY}", logs / f"cowrie.json.{DAY}")
    return {
        "COWRIE_LOG_DIR": str(logs),
        "CYMRU_HOST": "127.0.0.1",
        "CYMRU_PORT": str(never_answers.address[1]),
        "CYMRU_TIMEOUT_S": "3600",  # the Cymru step waits for the answer, holding its slot, until killed
        "GEOIP_ASN_DB": "",
        "GREYNOISE_API_KEY": "",
        "GREYNOISE_API_URL": "http://127.0.0.1:9",
        "ENRICHMENT_DB_URL": f"sqlite:///{tmp_path / 'inventory.sqlite'}",
    }


@pytest.fixture
def services(home: Path, env: dict[str, str]) -> Iterator[DagsterServices]:
    """Webserver and daemon; of the automation only the reaper runs (the log sensor would start runs)."""
    with DagsterServices(home, env) as running:
        with diagnosed(running):
            running.start_webserver()
            assert REAPER_NAME in running.stop_all_automation()  # it is RUNNING by default
            running.start_sensor(REAPER_NAME)
            running.start_daemon()
        yield running


@contextlib.contextmanager
def diagnosed(services: DagsterServices) -> Iterator[None]:
    """A failure inside carries the tail of the services' logs."""
    try:
        yield
    except (AssertionError, ServiceError) as error:
        raise AssertionError(f"{error}\n{services.logs()}") from error


@pytest.fixture
def instance(home: Path, services: DagsterServices) -> Iterator[DagsterInstance]:
    with DagsterInstance.from_config(str(home)) as loaded:
        yield loaded


def cymru_holders(instance: DagsterInstance) -> list[str]:
    return [slot.run_id for slot in instance.event_log_storage.get_concurrency_info("cymru").claimed_slots]


def holds_the_slot(instance: DagsterInstance, cymru: CymruStandinServer, run_id: str | None = None):
    """A probe: the run id holding the cymru slot once its Cymru step has queried the stand-in (any run's if
    run_id is None)."""

    def probe() -> str | None:
        holders = cymru_holders(instance)
        if cymru.requests and holders and (run_id is None or holders == [run_id]):
            return holders[0]
        return None

    return probe


def worker_pid(instance: DagsterInstance, run_id: str) -> int:
    """The run worker: the process that wrote the run's RUN_START event."""
    (record,) = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_START).records
    pid = record.event_log_entry.dagster_event.pid
    assert pid is not None
    return pid


def status(instance: DagsterInstance, run_id: str) -> DagsterRunStatus:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return run.status


def failure_message(instance: DagsterInstance, run_id: str) -> str:
    (record,) = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
    return record.event_log_entry.message


def expect_the_slot_back(
    instance: DagsterInstance, cymru: CymruStandinServer, killed: str, killed_at: float, within_s: float
) -> str:
    """The killed run is FAILURE and another run's Cymru step holds the slot and has queried the stand-in,
    both within `within_s` of the kill; returns the run now holding the slot."""
    queries_before = len(cymru.requests)

    def another_run_queries() -> str | None:
        holders = cymru_holders(instance)
        if holders and killed not in holders and len(cymru.requests) > queries_before:
            return holders[0]
        return None

    remaining = lambda: max(1.0, killed_at + within_s - time.monotonic())  # noqa: E731
    wait_for(
        "the killed run to be FAILURE",
        lambda: True if status(instance, killed) == DagsterRunStatus.FAILURE else None,
        remaining(),
    )
    try:
        holder = wait_for("another run's Cymru step to get the cymru slot", another_run_queries, remaining())
    except ServiceError as error:
        raise ServiceError(f"{error}; the slot is held by {cymru_holders(instance)} (killed: {killed})") from error
    return holder


# --- real runs, killed ----------------------------------------------------------------------------------------
def test_a_killed_run_worker_fails_its_run_and_the_cymru_slot_is_back_for_the_next_run(
    services, instance, never_answers
):
    with diagnosed(services):
        first = services.launch_run(JOB, {"dagster/partition": DAY})
        wait_for("the first run's Cymru step to hold the slot", holds_the_slot(instance, never_answers, first), 120)
        second = services.launch_run(JOB, {"dagster/partition": DAY})  # queued: its Cymru step needs the slot

        os.kill(worker_pid(instance, first), signal.SIGKILL)
        holder = expect_the_slot_back(instance, never_answers, first, time.monotonic(), SLOT_BACK_S)

        retries = [run.run_id for run in instance.get_runs() if run.tags.get("dagster/parent_run_id") == first]
        assert holder in {second, *retries}
        assert "terminated by signal 9" in "".join(
            event.message for event in instance.all_logs(first, of_type=DagsterEventType.ENGINE_EVENT)
        )


def test_a_run_whose_daemon_crashed_with_it_is_failed_by_the_reaper_and_the_slot_is_back(
    services, instance, never_answers
):
    with diagnosed(services):
        first = services.launch_run(JOB, {"dagster/partition": DAY})
        wait_for("the first run's Cymru step to hold the slot", holds_the_slot(instance, never_answers, first), 120)
        services.launch_run(JOB, {"dagster/partition": DAY})
        pid = worker_pid(instance, first)

        services.crash_and_restart_daemon()  # the run worker and its code server die with the daemon
        killed_at = time.monotonic()
        gone = probe_process(pid)  # or a zombie nobody reaps (its parent died too)
        assert gone is None or gone.zombie
        expect_the_slot_back(instance, never_answers, first, killed_at, SLOT_BACK_WITHOUT_A_WORKER_S)
        assert REAPER_NAME in failure_message(instance, first)


def test_a_killed_cli_run_is_failed_by_the_reaper_and_the_slot_is_back(
    services, instance, never_answers, home, env, tmp_path
):
    with diagnosed(services):
        with cli_run(home, env, tmp_path / "cli.log") as process:
            first = wait_for("the CLI run's Cymru step to hold the slot", holds_the_slot(instance, never_answers), 120)
            assert worker_pid(instance, first) == process.pid
            second = services.launch_run(JOB, {"dagster/partition": DAY})
            # The reaper judges a CLI run only once it has seen its worker alive here (it could be another host's).
            wait_for(
                "the reaper to have seen the CLI run's worker alive",
                lambda: True if first in load_cursor(services.sensor_cursor(REAPER_NAME)) else None,
                2 * run_reaper.INTERVAL_S + 10,
            )
            assert status(instance, first) == DagsterRunStatus.STARTED  # alive: untouched
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            killed_at = time.monotonic()

        holder = expect_the_slot_back(instance, never_answers, first, killed_at, SLOT_BACK_WITHOUT_A_WORKER_S)
        assert holder == second or instance.get_run_by_id(holder).tags.get("dagster/parent_run_id") == first
        assert REAPER_NAME in failure_message(instance, first)


@contextlib.contextmanager
def cli_run(home: Path, env: dict[str, str], output: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The README's command for DAY on this instance, in its own process group (killed on the way out)."""
    child_env = {name: value for name, value in os.environ.items() if not name.startswith(PIPELINE_PREFIXES)}
    child_env.update(env, DAGSTER_HOME=str(home))
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "enrichment_pipeline.definitions"]
    command += ["--select", "*merged_inventory", "--partition", DAY]
    with open(output, "ab") as sink:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=child_env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


# --- the reaper's decision ---------------------------------------------------------------------------------------
RUN_START = 1_000_000.0
PID = 4242


def process(start_time: float, *, ticks: int = 7, zombie: bool = False, ours: bool = True) -> ProcessInfo:
    return ProcessInfo(start_ticks=ticks, start_time=start_time, zombie=zombie, of_this_instance=ours)


def run(*, here: bool, pid: int | None = PID, run_id: str = "r") -> StartedRun:
    return StartedRun(run_id=run_id, start_time=RUN_START, pid=pid, launched_here=here)


def probing(processes: dict[int, ProcessInfo]):
    return lambda pid: processes.get(pid)


def test_a_daemon_launched_run_is_dead_when_its_pid_is_gone_a_zombie_or_a_later_process():
    for gone in ({}, {PID: process(RUN_START - 3, zombie=True)}, {PID: process(RUN_START + CLOCK_TOLERANCE_S + 1)}):
        assert judge([run(here=True)], {}, probing(gone)).dead == {"r": PID}
    alive = judge([run(here=True)], {}, probing({PID: process(RUN_START - 3, ours=False)}))
    assert (alive.dead, alive.workers) == ({}, {"r": Worker(PID, 7)})
    # A clock stepped forward after the start is no reason to fail a live run.
    assert judge([run(here=True)], {}, probing({PID: process(RUN_START + CLOCK_TOLERANCE_S - 1)})).dead == {}


def test_a_run_from_elsewhere_is_judged_only_after_its_worker_was_seen_alive_here():
    never_seen = run(here=False)
    assert judge([never_seen], {}, probing({})) == judge([], {}, probing({}))  # could be another host's
    for not_ours in (process(RUN_START - 3, ours=False), process(RUN_START - PLACEMENT_WINDOW_S - 1)):
        verdict = judge([never_seen], {}, probing({PID: not_ours}))
        assert (verdict.dead, verdict.workers) == ({}, {})

    seen = judge([never_seen], {}, probing({PID: process(RUN_START - 3)}))
    assert seen.workers == {"r": Worker(PID, 7)} and seen.dead == {}
    assert judge([never_seen], seen.workers, probing({PID: process(RUN_START - 3)})).workers == seen.workers
    reused = {PID: process(RUN_START - 3, ticks=8)}  # same pid, another process (the clock moved, too)
    for after in ({}, reused, {PID: process(RUN_START - 3, zombie=True)}):
        verdict = judge([run(here=False, pid=None)], seen.workers, probing(after))
        assert (verdict.dead, verdict.workers) == ({"r": PID}, {})


def test_runs_without_a_known_worker_are_left_alone_and_finished_runs_drop_out_of_the_cursor():
    assert judge([run(here=True, pid=None)], {}, probing({})).dead == {}
    verdict = judge([run(here=True, run_id="live")], {"gone-meanwhile": Worker(1, 1)}, probing({PID: process(0)}))
    assert verdict.workers == {"live": Worker(PID, 7)}


def test_the_cursor_round_trips_and_a_foreign_one_is_ignored():
    workers = {"a": Worker(1, 2), "b": Worker(3, 4)}
    assert load_cursor(dump_cursor(workers)) == workers
    for foreign in (None, "", "not json", "[1]", '{"workers": {"a": 1}}', '{"watermark_ns": 5}'):
        assert load_cursor(foreign) == {}


def test_this_process_is_probed_alive_of_its_instance_and_a_reaped_pid_is_gone(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ})
    try:
        info = probe_process(child.pid)
        assert info is not None and not info.zombie and info.of_this_instance
        assert abs(info.start_time - time.time()) < 30
        child.kill()
        wait_for("the child to be a zombie", lambda: True if probe_process(child.pid).zombie else None, 10)
    finally:
        child.kill()
        child.wait()
    assert probe_process(child.pid) is None


def test_the_sensor_skips_quietly_on_an_instance_with_no_runs():
    with instance_for_test() as empty:
        context = build_sensor_context(instance=empty)
        result = dead_run_reaper(context)
        assert "0 STARTED run(s)" in result.skip_message
        assert load_cursor(context.cursor) == {}
