"""Crash safety: `dagster asset materialize` killed with SIGKILL (its whole process group) in the Cymru pass
and in the middle of the merge transaction. The inventory is then the old state or the new one, never half,
a re-run converges to exactly what an uninterrupted run produces (a control database), and with the committed
instance config the dead run's pool slot is recovered by deleting the run."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus, materialize
from sqlalchemy import Engine, text

from enrichment_pipeline.assets import enrichment_assets
from enrichment_pipeline.core.inventory import Base, fetch_inventory, make_engine
from enrichment_pipeline.resources import (
    CowrieLogDirectory,
    CymruResource,
    FreshnessResource,
    GreyNoiseResource,
    InventoryDatabase,
    MaxMindResource,
)
from enrichment_pipeline.settings import PROJECT_ROOT
from enrichment_pipeline.standins.cymru_server import CymruStandinServer
from enrichment_pipeline_tests.support.synthetic_days import (
    database_state,
    day_file,
    expected_inventory,
    public_ips,
    write_many_ips_day,
    write_overlapping_days,
)

DAY_BEFORE = datetime.date(2018, 5, 2)
DAY = datetime.date(2018, 5, 3)
# Enough IPs that the merge transaction lasts about a second, long enough to be caught in flight.
DAY_IPS = 6_000
CYMRU_BATCH = 500
RUN_TIMEOUT_S = 240.0
ATTEMPTS = 3  # to catch the merge before it commits; each attempt is a real run
# Environment variables the pipeline reads; the child gets exactly ours.
PIPELINE_PREFIXES = ("COWRIE_", "CYMRU_", "GEOIP_", "GREYNOISE_", "ENRICHMENT_", "MAXMIND_", "DAGSTER_")


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DAY_BEFORE: 60 IPs, half of them again among DAY's, so the merge also updates existing rows."""
    directory = tmp_path_factory.mktemp("logs")
    ips = public_ips(DAY_IPS, seed=11)
    write_overlapping_days(directory, [DAY_BEFORE], ips[:30] + public_ips(30, seed=12), ips_per_day=60, seed=13)
    write_many_ips_day(directory, DAY, ips)
    return directory


def materialize_in_process(day: datetime.date, log_dir: Path, db_url: str) -> None:
    with CymruStandinServer() as standin, DagsterInstance.ephemeral() as instance:
        result = materialize(
            enrichment_assets,
            partition_key=day.isoformat(),
            instance=instance,
            resources={
                "cowrie_logs": CowrieLogDirectory(log_dir=str(log_dir)),
                "maxmind": MaxMindResource(),
                "freshness": FreshnessResource(),
                "cymru": CymruResource(host="127.0.0.1", port=standin.address[1], batch_size=CYMRU_BATCH),
                "inventory": InventoryDatabase(url=db_url),
                "greynoise": GreyNoiseResource(),
            },
        )
    assert result.success


@pytest.fixture(scope="module")
def control_state(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The inventory after DAY_BEFORE and DAY, each run once without interruption."""
    url = f"sqlite:///{tmp_path_factory.mktemp('control') / 'inventory.sqlite'}"
    materialize_in_process(DAY_BEFORE, log_dir, url)
    materialize_in_process(DAY, log_dir, url)
    return database_state(make_engine(url), volatile=False)


class Inventory:
    """The database under test: reset to the state after DAY_BEFORE, probed for a merge in flight."""

    def __init__(self, backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.backend = backend
        self._tmp_path = tmp_path
        self._request = request
        self._resets = 0
        self.url = ""
        self.engine: Engine | None = None
        self._wal_size_before = 0

    def reset(self, log_dir: Path) -> dict:
        """A fresh inventory holding DAY_BEFORE; returns its exact state."""
        self._resets += 1
        if self.backend == "sqlite":
            # A new file each time: engines cached in this process must never see a replaced file.
            self.url = f"sqlite:///{self._tmp_path / f'inventory-{self._resets}.sqlite'}"
            self.engine = make_engine(self.url)
        else:
            self.engine = self._request.getfixturevalue("pg_engine")
            Base.metadata.drop_all(self.engine)
            self.url = self.engine.url.render_as_string(hide_password=False)
        materialize_in_process(DAY_BEFORE, log_dir, self.url)
        self._wal_size_before = self._wal_size()
        return self.state()

    def state(self, *, volatile: bool = True) -> dict[str, list[tuple[Any, ...]]]:
        assert self.engine is not None
        return database_state(self.engine, volatile=volatile)

    def merge_in_flight(self) -> bool:
        """True while another process is inside upsert_day's transaction, with rows written but not committed.

        SQLite: the write lock is taken (a BEGIN IMMEDIATE that may not wait fails) and uncommitted pages
        have spilled into the WAL. PostgreSQL: one backend holds the merge's table lock on ip_inventory and
        has started writing both tables.
        """
        if self.backend == "sqlite":
            return self._wal_size() > self._wal_size_before + (1 << 20) and _sqlite_write_locked(self._path())
        assert self.engine is not None
        with self.engine.connect() as conn:
            holders = conn.execute(text(_PG_MERGE_WRITERS)).scalar_one()
        return holders > 0

    def _path(self) -> Path:
        return Path(self.url.removeprefix("sqlite:///"))

    def _wal_size(self) -> int:
        wal = Path(f"{self._path()}-wal") if self.backend == "sqlite" else None
        return wal.stat().st_size if wal is not None and wal.exists() else 0


# Backends (other than ours) holding the merge's lock on ip_inventory and already writing rows to both tables.
_PG_MERGE_WRITERS = """
SELECT count(*) FROM (
    SELECT l.pid FROM pg_locks l
    WHERE l.granted AND l.pid <> pg_backend_pid()
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND (
        (l.relation = 'ip_inventory'::regclass AND l.mode IN ('ShareRowExclusiveLock', 'RowExclusiveLock'))
        OR (l.relation = 'ip_daily_activity'::regclass AND l.mode = 'RowExclusiveLock')
      )
    GROUP BY l.pid
    HAVING count(DISTINCT (l.relation, l.mode)) = 3
) AS writers
"""


def _sqlite_write_locked(path: Path) -> bool:
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        if "locked" in str(error):
            return True
        raise
    else:
        probe.execute("ROLLBACK")
        return False
    finally:
        probe.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def inventory(request: pytest.FixtureRequest, tmp_path: Path) -> Inventory:
    return Inventory(request.param, tmp_path, request)


MINIMAL_INSTANCE = "telemetry:\n  enabled: false\n"


def cli_environment(
    tmp_path: Path, log_dir: Path, db_url: str, cymru: CymruStandinServer, instance_config: str = MINIMAL_INSTANCE
) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(instance_config)
    env = {name: value for name, value in os.environ.items() if not name.startswith(PIPELINE_PREFIXES)}
    env.update(
        DAGSTER_HOME=str(home),
        COWRIE_LOG_DIR=str(log_dir),
        CYMRU_HOST=cymru.address[0],
        CYMRU_PORT=str(cymru.address[1]),
        CYMRU_BATCH_SIZE=str(CYMRU_BATCH),
        ENRICHMENT_DB_URL=db_url,
    )
    return env


@contextlib.contextmanager
def materialize_command(
    env: dict[str, str], output: Path, day: datetime.date = DAY
) -> Iterator[subprocess.Popen[bytes]]:
    """The README's command for `day`, in its own process group (step processes too, if the executor makes
    any); the group is killed on the way out."""
    command = [
        sys.executable,
        "-m",
        "dagster",
        "asset",
        "materialize",
        "-m",
        "enrichment_pipeline.definitions",
        "--select",
        "*merged_inventory",
        "--partition",
        day.isoformat(),
    ]
    with open(output, "ab") as sink:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            kill_group(process)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def kill_when(condition: Callable[[], bool], process: subprocess.Popen[bytes], output: Path) -> None:
    """Poll `condition` and SIGKILL the run's whole process group the moment it holds."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before the moment to kill it:\n{tail(output)}")
        if time.monotonic() > deadline:
            pytest.fail(f"the moment to kill the run never came within {RUN_TIMEOUT_S} s:\n{tail(output)}")
        time.sleep(0.01)
    kill_group(process)
    assert process.returncode == -signal.SIGKILL


def run_to_completion(env: dict[str, str], output: Path, day: datetime.date = DAY) -> None:
    with materialize_command(env, output, day) as process:
        try:
            process.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the re-run did not finish within {RUN_TIMEOUT_S} s:\n{tail(output)}")
    assert process.returncode == 0, tail(output)


def tail(output: Path) -> str:
    return output.read_text(errors="replace")[-4000:] if output.exists() else ""


# Nothing is written before the merge, so one backend suffices here; the merge test runs on both.
@pytest.mark.parametrize("inventory", ["sqlite"], indirect=True)
def test_kill_during_the_cymru_pass_leaves_the_old_inventory_and_a_rerun_converges(
    inventory, log_dir, control_state, tmp_path
):
    before = inventory.reset(log_dir)
    output = tmp_path / "runs.log"
    # The stand-in sits on every query for 60 s: the run is certainly inside the Cymru pass when killed.
    with CymruStandinServer(latency_s=60) as slow:
        with materialize_command(cli_environment(tmp_path, log_dir, inventory.url, slow), output) as process:
            kill_when(lambda: bool(slow.requests), process, output)

    assert inventory.state() == before

    with CymruStandinServer() as healthy:
        run_to_completion(cli_environment(tmp_path, log_dir, inventory.url, healthy), output)
    assert inventory.state(volatile=False) == control_state


def test_kill_in_the_middle_of_the_merge_leaves_old_or_new_never_half_and_a_rerun_converges(
    inventory, log_dir, control_state, tmp_path
):
    output = tmp_path / "runs.log"
    for _attempt in range(ATTEMPTS):
        before = inventory.reset(log_dir)
        with CymruStandinServer() as standin:
            with materialize_command(cli_environment(tmp_path, log_dir, inventory.url, standin), output) as process:
                kill_when(inventory.merge_in_flight, process, output)
        after = inventory.state()
        if after == before:
            break  # killed mid-transaction: everything it wrote was rolled back
        # The kill came just after the commit: then the day must be there whole.
        assert inventory.state(volatile=False) == control_state
    else:
        pytest.fail(f"the merge committed before the kill in all {ATTEMPTS} attempts; nothing proven about rollback")

    with CymruStandinServer() as healthy:
        run_to_completion(cli_environment(tmp_path, log_dir, inventory.url, healthy), output)
    assert inventory.state(volatile=False) == control_state


def test_with_the_committed_instance_config_a_killed_runs_pool_slot_is_freed_by_deleting_the_dead_run(
    log_dir, tmp_path
):
    """dagster_home/dagster.yaml limits the `cymru` pool to one step at a time. A run killed inside the Cymru
    pass keeps its slot (it stays STARTED: nothing marks a killed CLI run failed), so a re-run would wait for
    it forever; `dagster run delete` frees the slot and the re-run completes. docs/reliability.md."""
    url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    output = tmp_path / "runs.log"
    committed = (PROJECT_ROOT / "dagster_home" / "dagster.yaml").read_text()
    with CymruStandinServer(latency_s=60) as slow:
        env = cli_environment(tmp_path, log_dir, url, slow, committed)
        with materialize_command(env, output, DAY_BEFORE) as process:
            kill_when(lambda: bool(slow.requests), process, output)

    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        (dead,) = [run.run_id for run in instance.get_runs() if run.status == DagsterRunStatus.STARTED]
        assert cymru_slot_holders(instance) == [dead]
        delete = [sys.executable, "-m", "dagster", "run", "delete", "--force", dead]
        subprocess.run(delete, cwd=PROJECT_ROOT, env=env, capture_output=True, timeout=120, check=True)
        assert cymru_slot_holders(instance) == []

    with CymruStandinServer() as healthy:
        run_to_completion(cli_environment(tmp_path, log_dir, url, healthy, committed), output, DAY_BEFORE)
    ips = {row["ip_address"] for row in fetch_inventory(make_engine(url))}
    assert ips == set(expected_inventory([day_file(log_dir, DAY_BEFORE)]))


def cymru_slot_holders(instance: DagsterInstance) -> list[str]:
    return [slot.run_id for slot in instance.event_log_storage.get_concurrency_info("cymru").claimed_slots]
