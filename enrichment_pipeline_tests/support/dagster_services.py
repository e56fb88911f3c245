"""Real `dagster-webserver` and `dagster-daemon` subprocesses on one DAGSTER_HOME, bound to 127.0.0.1, and a
GraphQL client for the webserver (the API the UI uses). Each process has its own group, killed at teardown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = PROJECT_ROOT / ".venv" / "bin"
LOCATION = "enrichment_pipeline.definitions"  # the code location workspace.yaml loads
REPOSITORY = "__repository__"
_STOP_TIMEOUT_S = 20
_HTTP_TIMEOUT_S = 30

T = TypeVar("T")


class ServiceError(RuntimeError):
    """A Dagster service did not start, answer or finish in time; carries the tail of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log_tails(logs: Mapping[str, Path], chars: int = 3000) -> str:
    """The last `chars` of each named log file, for an assertion or error message."""
    tails = []
    for name, path in logs.items():
        text = path.read_text(errors="replace")
        tails.append(f"--- {name} (last {chars} chars) ---\n{text[-chars:]}")
    return "\n".join(tails)


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, *, every_s: float = 0.5) -> T:
    """Poll `probe` until it returns something other than None; ServiceError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise ServiceError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


class DagsterServices:
    """The webserver and the daemon of one Dagster instance, started from the project's workspace.yaml, or
    from a workspace of one other code location (`module`, e.g. the benchmarks' floor graph)."""

    def __init__(self, dagster_home: Path, env: Mapping[str, str], *, module: str | None = None) -> None:
        self.home = dagster_home
        self.location = module or LOCATION
        self.workspace = PROJECT_ROOT / "workspace.yaml"
        if module is not None:  # a python_module location is named after its module, as in workspace.yaml
            self.workspace = dagster_home / "workspace.yaml"
            self.workspace.write_text(
                f"load_from:\n  - python_module:\n      module_name: {module}\n"
                f"      working_directory: {json.dumps(str(PROJECT_ROOT))}\n"
            )
        self.env = {**os.environ, **env, "DAGSTER_HOME": str(dagster_home), "PYTHONUNBUFFERED": "1"}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    # --- processes ---------------------------------------------------------------------------------------
    def start_webserver(self, timeout_s: float = 120) -> None:
        self._spawn(
            "webserver", "dagster-webserver", "-h", "127.0.0.1", "-p", str(self.port), "-w", str(self.workspace)
        )
        wait_for("the webserver to answer", self._server_up, timeout_s)
        wait_for("the code location to load", self._location_loaded, timeout_s)

    def start_daemon(self) -> None:
        self._spawn("daemon", "dagster-daemon", "run", "-w", str(self.workspace))

    def crash_and_restart_daemon(self) -> None:
        """SIGKILL the daemon's whole process group -- its code servers and the run workers they spawned die
        with it, as when the daemon crashes or is OOM-killed -- then start a fresh daemon."""
        process = self.processes.pop("daemon")
        _signal_group(process, signal.SIGKILL)
        process.wait(timeout=_STOP_TIMEOUT_S)
        self.start_daemon()

    def stop(self) -> None:
        """SIGTERM each process group, then SIGKILL what is left; safe to call twice."""
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)  # children (code servers, run workers) too
            process.wait(timeout=_STOP_TIMEOUT_S)

    def __enter__(self) -> DagsterServices:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def logs(self) -> str:
        """The tail of every service's log, for an assertion message."""
        return log_tails({name: self.home / f"{name}.log" for name in self.processes})

    def _spawn(self, name: str, executable: str, *args: str) -> None:
        log = (self.home / f"{name}.log").open("ab")  # a restarted service appends to its log
        try:
            self.processes[name] = subprocess.Popen(
                [str(VENV_BIN / executable), *args],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so teardown reaches its children
            )
        finally:
            log.close()

    def _server_up(self) -> bool | None:
        self._check_alive()
        try:
            with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as response:
                return True if response.status == 200 else None
        except (urllib.error.URLError, OSError):
            return None

    def _location_loaded(self) -> bool | None:
        data = self.graphql(
            "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus"
            " locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        )
        for entry in data["workspaceOrError"]["locationEntries"]:
            location = entry["locationOrLoadError"]
            if location and location["__typename"] == "PythonError":
                raise ServiceError(f"code location failed to load: {location['message']}")
            if entry["name"] == self.location and entry["loadStatus"] == "LOADED" and location:
                return True
        return None

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise ServiceError(f"{name} exited with {process.returncode}\n{self.logs()}")

    # --- GraphQL -------------------------------------------------------------------------------------------
    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """POST a query to /graphql; the `data` object, or ServiceError for any GraphQL error."""
        body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT_S) as response:
            reply = json.load(response)
        if reply.get("errors"):
            raise ServiceError(f"GraphQL errors: {reply['errors']}")
        return reply["data"]

    def repository_selector(self) -> dict[str, str]:
        return {"repositoryName": REPOSITORY, "repositoryLocationName": self.location}

    def stop_all_automation(self) -> list[str]:
        """Switch off every schedule and sensor, as the toggles in the UI do; the names switched off."""
        data = self.graphql(
            "query($repo: RepositorySelector!) { repositoryOrError(repositorySelector: $repo) { ... on Repository {"
            " sensors { name sensorState { id status } } schedules { name scheduleState { id status } } } } }",
            {"repo": self.repository_selector()},
        )["repositoryOrError"]
        stopped = []
        for sensor in data["sensors"]:
            if sensor["sensorState"]["status"] == "RUNNING":
                self.graphql(
                    "mutation($id: String!) { stopSensor(id: $id) { __typename } }", {"id": sensor["sensorState"]["id"]}
                )
                stopped.append(sensor["name"])
        for schedule in data["schedules"]:
            if schedule["scheduleState"]["status"] == "RUNNING":
                self.graphql(
                    "mutation($id: String!) { stopRunningSchedule(id: $id) { __typename } }",
                    {"id": schedule["scheduleState"]["id"]},
                )
                stopped.append(schedule["name"])
        return stopped

    def start_sensor(self, name: str, cursor: str | None = None) -> None:
        selector = {**self.repository_selector(), "sensorName": name}
        if cursor is not None:
            self._expect_type(
                self.graphql(
                    "mutation($s: SensorSelector!, $c: String) { setSensorCursor(sensorSelector: $s, cursor: $c) {"
                    " __typename ... on Error { message } } }",
                    {"s": selector, "c": cursor},
                )["setSensorCursor"],
                "Sensor",
            )
        self._expect_type(
            self.graphql(
                "mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) {"
                " __typename ... on Error { message } } }",
                {"s": selector},
            )["startSensor"],
            "Sensor",
        )

    def sensor_cursor(self, name: str) -> str | None:
        selector = {**self.repository_selector(), "sensorName": name}
        result = self.graphql(
            "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { __typename ... on Sensor {"
            " sensorState { typeSpecificData { ... on SensorData { lastCursor } } } } ... on Error { message } } }",
            {"s": selector},
        )["sensorOrError"]
        return self._expect_type(result, "Sensor")["sensorState"]["typeSpecificData"]["lastCursor"]

    def launch_run(self, job_name: str, tags: Mapping[str, str]) -> str:
        """The launchpad's 'Launch run' for a job with these tags (e.g. dagster/partition); the run id."""
        selector = {**self.repository_selector(), "jobName": job_name}
        result = self.graphql(
            "mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {"
            " __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message } } }",
            {
                "p": {
                    "selector": selector,
                    "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
                }
            },
        )["launchRun"]
        return self._expect_type(result, "LaunchRunSuccess")["run"]["runId"]

    def launch_asset_backfill(self, asset_keys: list[list[str]], partitions: list[str], title: str) -> str:
        """The UI's 'Materialize selected' over a partition range: an asset backfill; its id."""
        result = self.graphql(
            "mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {"
            " __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }",
            {"p": {"partitionNames": partitions, "assetSelection": [{"path": k} for k in asset_keys], "title": title}},
        )["launchPartitionBackfill"]
        return self._expect_type(result, "LaunchBackfillSuccess")["backfillId"]

    def launch_job_backfill(self, job_name: str, partitions: list[str], title: str) -> str:
        """The job page's 'Materialize' over partitions: a backfill of that job (its runs are `job_name`'s
        runs, with its executor), batched by the assets' BackfillPolicy; its id."""
        selector = {"partitionSetName": f"{job_name}_partition_set", "repositorySelector": self.repository_selector()}
        result = self.graphql(
            "mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {"
            " __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }",
            {"p": {"selector": selector, "partitionNames": partitions, "title": title}},
        )["launchPartitionBackfill"]
        return self._expect_type(result, "LaunchBackfillSuccess")["backfillId"]

    def backfill_status(self, backfill_id: str) -> str:
        result = self.graphql(
            "query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename"
            " ... on PartitionBackfill { status } ... on Error { message } } }",
            {"id": backfill_id},
        )["partitionBackfillOrError"]
        return self._expect_type(result, "PartitionBackfill")["status"]

    def runs(self, tag_key: str, tag_value: str) -> list[dict[str, Any]]:
        """Runs carrying the tag: id, status and tags (partition, backfill, sensor...)."""
        return self.graphql(
            "query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { ... on Runs {"
            " results { runId status tags { key value } } } } }",
            {"tags": [{"key": tag_key, "value": tag_value}]},
        )["runsOrError"]["results"]

    def _expect_type(self, result: dict[str, Any], typename: str) -> dict[str, Any]:
        if result["__typename"] != typename:
            raise ServiceError(f"expected {typename}, got {result['__typename']}: {result.get('message')}")
        return result


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
