"""Pytest plugin: a throwaway PostgreSQL server (or $ENRICHMENT_TEST_PG_URL) and clean inventory engines.
Fixtures: `postgres_url` (session), `pg_engine` and `sqlite_engine` (empty inventory tables per test), and
`engine`, which runs a test once on each."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from enrichment_pipeline.core.inventory import Base, create_schema, make_engine

PG_URL_ENV = "ENRICHMENT_TEST_PG_URL"
_SERVER_USER = "postgres"
_START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections
_COMMAND_TIMEOUT = 120  # seconds any server command may take before we give up on it


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started or reached for the tests."""


class ThrowawayServer:
    """A PostgreSQL server in a temporary directory, owned by the `postgres` user when we are root."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="enrichment-pg-"))
        self.data_dir = self.root / "data"
        self.log_file = self.root / "server.log"
        self.run_as: list[str] = []
        self.pg_ctl = ""
        self.launched = False

    def start(self) -> str:
        """Start the server; return the URL of its `postgres` database."""
        bin_dir = _server_bin_dir()
        self.pg_ctl = str(bin_dir / "pg_ctl")
        if os.geteuid() == 0:
            self.run_as = _run_as_server_user(self.root)
        port = _free_port()
        self._run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-A",
                "trust",
                "-U",
                _SERVER_USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        self.launched = True  # from here on, stop() must try to shut it down
        options = f"-p {port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            [
                self.pg_ctl,
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-o",
                options,
                "-w",
                "-t",
                str(_START_TIMEOUT),
                "start",
            ]
        )
        return f"postgresql+psycopg2://{_SERVER_USER}@127.0.0.1:{port}/postgres"

    def stop(self) -> None:
        if self.launched:
            try:
                command = [*self.run_as, self.pg_ctl, "-D", str(self.data_dir), "stop", "-m", "immediate"]
                subprocess.run(command, cwd=self.root, capture_output=True, timeout=_COMMAND_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass  # nothing better to do at teardown; the temp dir removal below still runs
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, command: list[str]) -> None:
        try:
            # cwd: the server user may not be allowed into our working directory.
            subprocess.run(
                [*self.run_as, *command],
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=_COMMAND_TIMEOUT,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as error:
            output = getattr(error, "stderr", None) or getattr(error, "stdout", None) or ""
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise PostgresUnavailable(
                f"{Path(command[0]).name} failed: {error}\n{output.strip()}\n{log.strip()}".strip()
            ) from error


class FreshDatabase:
    """A new, uniquely named database inside an existing server, dropped again at the end."""

    def __init__(self, server_url: str) -> None:
        self.server_url = make_url(server_url)
        self.name = f"enrichment_test_{uuid.uuid4().hex[:12]}"
        self.created = False

    def create(self) -> str:
        """Create the database and return its URL; without the right to create one, reuse the server's."""
        try:
            self._execute(f'CREATE DATABASE "{self.name}"')
        except SQLAlchemyError as error:
            if "permission denied" not in str(error):
                where = self.server_url.render_as_string(hide_password=True)
                raise PostgresUnavailable(f"cannot reach PostgreSQL at {where}: {error}") from error
            return self.server_url.render_as_string(hide_password=False)
        self.created = True
        return self.server_url.set(database=self.name).render_as_string(hide_password=False)

    def drop(self) -> None:
        if self.created:
            self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def _execute(self, statement: str) -> None:
        # CREATE/DROP DATABASE cannot run inside a transaction. The name is ours (hex), not input.
        engine = create_engine(self.server_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 10})
        try:
            with engine.connect() as conn:
                conn.execute(text(statement))
        finally:
            engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL database only this test session uses."""
    configured = os.environ.get(PG_URL_ENV, "")
    server = None if configured else ThrowawayServer()
    database: FreshDatabase | None = None
    try:
        try:
            database = FreshDatabase(server.start() if server else configured)
            url = database.create()
        except PostgresUnavailable as error:
            _unavailable(str(error))
        yield url
    finally:
        if server is not None:
            server.stop()  # a throwaway server goes whole, its databases with it
        elif database is not None:
            database.drop()


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    """Engine on the session's PostgreSQL database with freshly created, empty inventory tables."""
    engine = make_engine(postgres_url)
    Base.metadata.drop_all(engine)
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """Engine on a new SQLite file with empty inventory tables."""
    engine = make_engine(f"sqlite:///{tmp_path / 'inventory.sqlite'}")
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Engine:
    """The same test on a SQLite file and on PostgreSQL, each with empty inventory tables."""
    return request.getfixturevalue("sqlite_engine" if request.param == "sqlite" else "pg_engine")


def _unavailable(reason: str) -> NoReturn:
    message = f"PostgreSQL unavailable: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _server_bin_dir() -> Path:
    """The directory holding initdb and pg_ctl: the PATH first, then Debian's versioned directories."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).parent] if on_path else []
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(path) for path in debian), key=_major_version, reverse=True)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    raise PostgresUnavailable("initdb/pg_ctl not found on PATH nor in /usr/lib/postgresql/*/bin")


def _major_version(bin_dir: Path) -> int:
    version = bin_dir.parent.name
    return int(version) if version.isdigit() else 0


def _run_as_server_user(root: Path) -> list[str]:
    """Root may not run the server: hand `root` to the postgres user and run commands as that user."""
    try:
        user = pwd.getpwnam(_SERVER_USER)
    except KeyError as error:
        raise PostgresUnavailable(f"running as root, and no {_SERVER_USER!r} user to run the server") from error
    if shutil.which("runuser") is None:
        raise PostgresUnavailable("running as root but `runuser` is missing")
    os.chown(root, user.pw_uid, user.pw_gid)
    return ["runuser", "-u", _SERVER_USER, "--"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
