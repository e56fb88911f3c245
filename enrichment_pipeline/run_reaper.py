"""The dead-run reaper: a sensor that marks FAILURE the STARTED runs whose worker process is gone, so the
daemon gives back their pool slots (`run_monitoring.free_slots_after_run_end_seconds`) and retries them.

Why Dagster's run monitoring is not enough here: the DefaultRunLauncher cannot check a run worker's health
(`supports_check_run_worker_health` is False), so the monitoring daemon looks at a STARTED run and leaves
it as it is. A daemon-launched run whose worker alone is killed is still marked failed -- by the code
server that spawned the worker, which polls its children every half second. But a run whose code server
died with it (the daemon restarted, crashed or was OOM-killed with its children) or a run started from the
CLI (`dagster asset materialize`, which no code server watches) stays STARTED forever, and with
`pools: default_limit: 1` its `cymru` slot blocks every later Cymru step.

Which runs it judges -- never one that may be alive, never one it cannot place on this host:
- launched here: a run the DefaultRunLauncher started through a code server on localhost (the
  `.dagster/grpc_info` tag). One daemon per instance, and this sensor runs in that daemon's code server.
- seen here: a run whose worker the reaper itself found alive on this host on an earlier evaluation (the
  pid and its start time in clock ticks since boot are kept in the cursor). The worker's pid is the one on
  the run's RUN_START event, which the worker itself writes; a process is taken for it if it runs under this
  instance's DAGSTER_HOME and started at most PLACEMENT_WINDOW_S before the run started.
A judged run is reaped when that pid no longer exists, is a zombie, or now belongs to another process (a
different start time; for a run never seen alive: one started more than CLOCK_TOLERANCE_S after the run).
A run started on another host (a CLI run against the shared PostgreSQL instance) is never touched; neither
is anything when the run launcher checks its workers itself (Docker) or there is no /proc.

Cost per evaluation: one query for the STARTED runs, plus one RUN_START lookup per STARTED run not yet in
the cursor, plus a read of /proc/<pid>/stat (and environ) each. The pure decision is `judge`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRecord,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)
from dagster._core.events import JobFailureData, RunFailureReason  # not exported
from dagster._core.storage.tags import GRPC_INFO_TAG  # not exported

REAPER_NAME = "dead_run_reaper"
INTERVAL_S = 30
# A worker starts before it writes its own RUN_START. For a run never seen alive, its pid counts as reused
# only if that process started later than this after the run: the wall-clock estimate of a start time
# (boot time + ticks) moves when the clock is stepped, and a wrong "reused" would fail a live run.
CLOCK_TOLERANCE_S = 60.0
# A CLI process creates its run within seconds of starting (imports, loading the definitions).
PLACEMENT_WINDOW_S = 600.0
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
PROC = Path("/proc")


@dataclass(frozen=True)
class StartedRun:
    run_id: str
    start_time: float  # of its RUN_START event (the worker's own clock: this host's, if it runs here)
    pid: int | None  # the process that wrote RUN_START; None if unknown (not looked up, or no event)
    launched_here: bool  # by the DefaultRunLauncher through a code server on localhost


@dataclass(frozen=True)
class ProcessInfo:
    start_ticks: int  # clock ticks after boot: with the pid, the process's identity
    start_time: float  # wall-clock estimate of its start
    zombie: bool
    of_this_instance: bool  # its DAGSTER_HOME is this instance's


@dataclass(frozen=True)
class Worker:
    pid: int
    start_ticks: int


@dataclass(frozen=True)
class Verdict:
    dead: dict[str, int] = field(default_factory=dict)  # run id -> the pid that is gone
    workers: dict[str, Worker] = field(default_factory=dict)  # runs whose worker is alive here (next cursor)


def judge(
    runs: Iterable[StartedRun], workers: Mapping[str, Worker], probe: Callable[[int], ProcessInfo | None]
) -> Verdict:
    """Which STARTED runs have lost their worker, and which workers were seen alive on this host.

    `workers` is the previous verdict's; `probe(pid)` describes a live process, or None if there is none."""
    verdict = Verdict()
    for run in runs:
        known = workers.get(run.run_id)
        pid = known.pid if known is not None else run.pid
        if pid is None:
            continue
        process = probe(pid)
        alive = process is not None and not process.zombie
        if known is not None:
            if alive and process is not None and process.start_ticks == known.start_ticks:
                verdict.workers[run.run_id] = known
            else:
                verdict.dead[run.run_id] = pid
        elif alive and process is not None and process.start_time <= run.start_time + CLOCK_TOLERANCE_S:
            placed = process.of_this_instance and process.start_time >= run.start_time - PLACEMENT_WINDOW_S
            if run.launched_here or placed:
                verdict.workers[run.run_id] = Worker(pid, process.start_ticks)
        elif run.launched_here:
            verdict.dead[run.run_id] = pid
    return verdict


# --- this host's processes ------------------------------------------------------------------------------------
def probe_process(pid: int) -> ProcessInfo | None:
    """The live process `pid` from /proc, or None if there is none."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3, starttime 22
    ticks = int(fields[19])
    return ProcessInfo(
        start_ticks=ticks,
        start_time=_boot_time() + ticks / os.sysconf("SC_CLK_TCK"),
        zombie=fields[0] in {"Z", "X"},
        of_this_instance=_dagster_home(pid) == _own_dagster_home(),
    )


def _boot_time() -> float:
    for line in (PROC / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError("/proc/stat has no btime line")


def _dagster_home(pid: int) -> str | None:
    try:
        environ = (PROC / str(pid) / "environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(b"DAGSTER_HOME="):
            return os.path.realpath(os.fsdecode(entry.removeprefix(b"DAGSTER_HOME=")))
    return None


def _own_dagster_home() -> str | None:
    home = os.environ.get("DAGSTER_HOME")
    return os.path.realpath(home) if home else None


# --- runs and the cursor ------------------------------------------------------------------------------------
def started_run(instance: DagsterInstance, record: RunRecord, *, need_pid: bool) -> StartedRun | None:
    run = record.dagster_run
    if record.start_time is None:
        return None
    pid = None
    if need_pid:
        events = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_START, limit=1).records
        event = events[0].event_log_entry.dagster_event if events else None
        pid = event.pid if event is not None else None
    return StartedRun(run.run_id, record.start_time, pid, _launched_here(run.tags.get(GRPC_INFO_TAG)))


def _launched_here(grpc_info: str | None) -> bool:
    try:
        info = json.loads(grpc_info) if grpc_info else None
    except ValueError:
        return False
    return isinstance(info, dict) and info.get("host") in LOCAL_HOSTS


def load_cursor(cursor: str | None) -> dict[str, Worker]:
    """The workers seen alive; {} for no cursor or one that is not ours (only seen-here evidence is lost)."""
    try:
        raw = json.loads(cursor) if cursor else {}
        return {run_id: Worker(int(pid), int(ticks)) for run_id, (pid, ticks) in raw["workers"].items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def dump_cursor(workers: Mapping[str, Worker]) -> str:
    return json.dumps({"workers": {run_id: [w.pid, w.start_ticks] for run_id, w in sorted(workers.items())}})


@sensor(
    name=REAPER_NAME,
    minimum_interval_seconds=INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description="Marks FAILURE the STARTED runs of this host whose worker process is gone (killed, OOM), "
    "so their pool slots are given back and they are retried. Never touches a run that may be alive.",
)
def dead_run_reaper(context: SensorEvaluationContext) -> SkipReason:
    instance = context.instance
    if instance.run_launcher.supports_check_run_worker_health:
        return SkipReason("The run launcher checks its run workers itself (run monitoring): nothing to do.")
    if not (PROC / "self" / "stat").exists():
        return SkipReason("No /proc on this host: cannot tell whether a run worker is alive.")
    workers = load_cursor(context.cursor)
    records = instance.get_run_records(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    runs = [
        run
        for record in records
        if (run := started_run(instance, record, need_pid=record.dagster_run.run_id not in workers)) is not None
    ]
    verdict = judge(runs, workers, probe_process)
    reaped = []
    for run_id, pid in verdict.dead.items():
        run = instance.get_run_by_id(run_id)
        if run is None or run.status != DagsterRunStatus.STARTED:
            continue  # finished meanwhile (the code server that spawned it may have reported it first)
        instance.report_run_failed(
            run,
            message=f"Run worker (pid {pid} on this host) is gone without reporting the run's end: marked failed "
            f"by the {REAPER_NAME} sensor so its pool slots are freed.",
            job_failure_data=JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION),
        )
        context.log.warning(f"Marked run {run_id} failed: its worker (pid {pid}) is gone.")
        reaped.append(run_id)
    context.update_cursor(dump_cursor(verdict.workers))
    return SkipReason(
        f"{len(records)} STARTED run(s), {len(verdict.workers)} with a live worker on this host; "
        f"marked failed: {', '.join(reaped) or 'none'}."
    )
