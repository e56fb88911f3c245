"""A Redis broker for the tests ($ENRICHMENT_TEST_REDIS_URL, or a loopback `redis-server` started here) and
real Celery workers (`dagster-celery worker start`, as `make workers` runs them), each in its own process
group, so a test can kill one with SIGKILL and teardown reaches every process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from enrichment_pipeline_tests.support.dagster_services import (
    PROJECT_ROOT,
    VENV_BIN,
    ServiceError,
    free_port,
    log_tails,
    wait_for,
)

REDIS_URL_ENV = "ENRICHMENT_TEST_REDIS_URL"
_START_TIMEOUT_S = 120
_STOP_TIMEOUT_S = 20


@contextmanager
def redis_for_tests() -> Iterator[str]:
    """A Redis URL with an empty database: $ENRICHMENT_TEST_REDIS_URL, else a throwaway loopback server
    (when `redis-server` is installed). Without either the test is skipped, or fails under CI."""
    configured = os.environ.get(REDIS_URL_ENV, "")
    if configured:
        _flush(configured)
        yield configured
        return
    binary = shutil.which("redis-server")
    if binary is None:
        message = f"Redis unavailable: set {REDIS_URL_ENV} or install redis-server (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    directory = Path(tempfile.mkdtemp(prefix="enrichment-redis-"))
    port = free_port()
    log = (directory / "redis.log").open("wb")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=directory,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for("redis-server to answer", lambda: _ping(url, server, directory), 30, every_s=0.1)
        yield url
    finally:
        _kill_group(server)
        shutil.rmtree(directory, ignore_errors=True)


def _ping(url: str, server: subprocess.Popen[bytes], directory: Path) -> bool | None:
    if server.poll() is not None:
        raise ServiceError(f"redis-server exited with {server.returncode}: {(directory / 'redis.log').read_text()}")
    try:
        return redis.Redis.from_url(url, socket_timeout=2).ping() or None
    except redis.RedisError:
        return None


def _flush(url: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


class CeleryWorkers:
    """Named Celery workers of one Dagster instance, each `--concurrency=1` (one step at a time), reading the
    worker config YAML that `make workers` writes (`jobs.write_celery_worker_config`)."""

    def __init__(self, config_yaml: Path, env: Mapping[str, str], log_dir: Path) -> None:
        self.config_yaml = config_yaml
        self.env = {**env, "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', os.environ.get('PATH', ''))}"}
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, *names: str) -> None:
        """Start the workers (each imports the definitions before it takes a task); see `wait_ready`."""
        for name in names:
            log = self._log_path(name).open("wb")
            try:
                self.processes[name] = subprocess.Popen(
                    [
                        str(VENV_BIN / "dagster-celery"),
                        "worker",
                        "start",
                        "-A",
                        "dagster_celery.app",
                        "-y",
                        str(self.config_yaml),
                        "-n",
                        name,
                        "-i",
                        "enrichment_pipeline.definitions",  # imported once, before the pool forks
                        "--",
                        "--concurrency=1",
                    ],
                    cwd=PROJECT_ROOT,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            finally:
                log.close()

    def wait_ready(self) -> None:
        """Wait until every worker says it is ready (bounded)."""
        for name in self.processes:
            wait_for(f"Celery worker {name} to be ready", lambda name=name: self._ready(name), _START_TIMEOUT_S)

    def nodename(self, name: str) -> str:
        """The worker's Celery node name, as its steps' engine events report it (`name@host`)."""
        return f"{name}@{os.uname().nodename}"

    def pids(self, name: str) -> set[int]:
        """Every live process of the worker: the CLI, the Celery main process and its pool process."""
        return process_group(self.processes[name].pid)

    def kill(self, name: str) -> None:
        """SIGKILL the worker's whole process group, as when its host dies: nothing is acknowledged."""
        process = self.processes[name]
        _signal_group(process, signal.SIGKILL)
        process.wait(timeout=_STOP_TIMEOUT_S)

    def stop(self) -> None:
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=_STOP_TIMEOUT_S)

    def __enter__(self) -> CeleryWorkers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def logs(self) -> str:
        return log_tails({f"worker {name}": self._log_path(name) for name in self.processes})

    def _log_path(self, name: str) -> Path:
        return self.log_dir / f"worker-{name}.log"

    def _ready(self, name: str) -> bool | None:
        process = self.processes[name]
        if process.poll() is not None:
            raise ServiceError(f"worker {name} exited with {process.returncode}\n{self.logs()}")
        text = self._log_path(name).read_text(errors="replace")
        return True if f"{name}@" in text and " ready." in text else None  # celery: "<name>@<host> ready."


def process_group(pgid: int) -> set[int]:
    """The pids of the live processes in a process group (from /proc)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # after "(comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.add(int(entry.name))
    return members


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    _signal_group(process, signal.SIGKILL)
    process.wait(timeout=_STOP_TIMEOUT_S)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
