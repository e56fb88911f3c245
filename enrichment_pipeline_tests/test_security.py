"""Security: SQL-looking attacker text through every field it can reach (log, Cymru, GreyNoise) in real runs;
a static scan of the package for shell/eval/pickle and string-built SQL; loopback-only defaults; and secrets
(GreyNoise key, database password) absent from everything a real CLI run writes or prints."""

from __future__ import annotations

import ast
import datetime
import inspect
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize
from sqlalchemy import inspect as inspect_schema
from sqlalchemy.engine import make_url

from enrichment_pipeline.assets import enrichment_assets
from enrichment_pipeline.core.cymru import CymruOrigin
from enrichment_pipeline.core.inventory import (
    Base,
    fetch_failures,
    fetch_inventory,
    make_engine,
)
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
from enrichment_pipeline_tests.support.greynoise_server import (
    FakeGreyNoise,
    observed,
    status,
)
from enrichment_pipeline_tests.support.synthetic_days import (
    UTC,
    database_state,
    event,
    write_day,
)

DAY = datetime.date(2018, 5, 4)
NOON = datetime.datetime(2018, 5, 4, 12, tzinfo=UTC)
PACKAGE = PROJECT_ROOT / "enrichment_pipeline"
GREYNOISE_KEY = "gn-key-7f3a9c-never-log-me"
DB_PASSWORD = "pg-pw-41d2e8-never-log-me"

# Text that breaks out of a quoted SQL literal, or looks like a bind placeholder of some driver.
SQL_TEXTS = [
    "x'); DROP TABLE ip_inventory; --",
    'x"; DELETE FROM ip_daily_activity; --',
    "' OR '1'='1",
    "%s %(name)s :name $1 ? \\' \\\\",
    "Robert'); DROP TABLE enrichment_failures;-- ünïcødé ☃",
]
SQL_SRC_IPS = [
    "1.2.3.4'; DROP TABLE ip_inventory;--",
    '1.2.3.4" OR "1"="1',
    "' OR 1=1 --",
    "1.2.3.4/**/UNION/**/SELECT/**/1",
    "::1'); DELETE FROM ip_daily_activity;--",
]


# --- SQL-looking text through every attacker-controlled field ------------------------------------------


def run_graph(log_dir: Path, db_url: str, cymru: CymruStandinServer, greynoise: GreyNoiseResource):
    with DagsterInstance.ephemeral() as instance:
        return materialize(
            enrichment_assets,
            partition_key=DAY.isoformat(),
            instance=instance,
            resources={
                "cowrie_logs": CowrieLogDirectory(log_dir=str(log_dir)),
                "maxmind": MaxMindResource(),
                "freshness": FreshnessResource(),
                "cymru": CymruResource(host="127.0.0.1", port=cymru.address[1], timeout_s=10, batch_size=3),
                "inventory": InventoryDatabase(url=db_url),
                "greynoise": greynoise,
            },
        )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    return request.getfixturevalue("pg_engine").url.render_as_string(hide_password=False)


def test_sql_looking_text_in_every_attacker_field_is_stored_verbatim_or_rejected_and_tables_survive(tmp_path, db_url):
    clean_ips = [f"45.77.1.{n}" for n in range(1, len(SQL_TEXTS) + 1)]
    bad_registry_ip, piped_name_ip = "45.77.2.1", "45.77.2.2"
    lines = [
        # Session ids and the fields Cowrie copies from the attacker (username, password, command) carry SQL.
        event(ip, text, NOON, username=text, password=text, input=text)
        for ip, text in zip(clean_ips, SQL_TEXTS, strict=False)
    ]
    lines += [event(text, "s", NOON) for text in SQL_SRC_IPS]
    lines += [event(bad_registry_ip, "r", NOON), event(piped_name_ip, "c", NOON)]
    write_day(tmp_path, DAY, lines)
    answers = {
        ip: [CymruOrigin(64500 + n, f"{ip}/32", "ZZ", "arin", "2001-01-01", text)]
        for n, (ip, text) in enumerate(zip(clean_ips, SQL_TEXTS, strict=False))
    }
    # A registry is validated like every other column: SQL there makes the line garbled, never stored.
    answers[bad_registry_ip] = [CymruOrigin(64600, f"{bad_registry_ip}/32", "ZZ", "arin'--", None, "EVIL")]
    # The AS name is the last, free-text column: `|` and SQL in it are stored verbatim, never parsed as columns.
    piped_name = "X | 1 | 2'); DROP TABLE ip_inventory; --"
    answers[piped_name_ip] = [CymruOrigin(64601, f"{piped_name_ip}/32", "ZZ", "arin", None, piped_name)]
    with FakeGreyNoise(GREYNOISE_KEY) as greynoise, CymruStandinServer(answers=answers) as cymru:
        for ip, text in zip(clean_ips, SQL_TEXTS, strict=False):
            greynoise.script(ip, observed(classification=text[:32], name=text, message=text))
        resource = GreyNoiseResource(api_key=GREYNOISE_KEY, api_url=greynoise.url, rate_per_s=1000.0, max_retries=0)
        result = run_graph(tmp_path, db_url, cymru, resource)
        sent_to_cymru = sorted(ip for query in cymru.requests for ip in query)

    assert result.success
    engine = make_engine(db_url)
    assert set(inspect_schema(engine).get_table_names()) >= set(Base.metadata.tables)
    rows = {row["ip_address"]: row for row in fetch_inventory(engine)}
    assert set(rows) == {*clean_ips, bad_registry_ip, piped_name_ip}  # no SQL-looking src_ip became a row
    assert sent_to_cymru == sorted(rows)
    (ingest,) = [
        m
        for m in result.asset_materializations_for_node("cowrie_logs_ingest")
        if m.asset_key.path == ["cowrie_source_ips"]
    ]
    assert ingest.metadata["invalid_src_ip"].value == len(SQL_SRC_IPS)
    for n, (ip, text) in enumerate(zip(clean_ips, SQL_TEXTS, strict=False)):
        assert rows[ip]["session_count"] == 1
        assert rows[ip]["current_asn"] == 64500 + n
        assert rows[ip]["asn_org"] == text
        assert rows[ip]["enrichment"]["cymru"]["as_name"] == text
        assert rows[ip]["enrichment"]["greynoise"]["name"] == text
        assert rows[ip]["enrichment"]["greynoise"]["message"] == text
        assert rows[ip]["greynoise_classification"] == text[:32].strip().lower()
    failed = {(row["ip_address"], row["source"]) for row in fetch_failures(engine)}
    assert (bad_registry_ip, "cymru") in failed and (piped_name_ip, "cymru") not in failed
    assert rows[bad_registry_ip]["current_asn"] is None
    assert (rows[piped_name_ip]["current_asn"], rows[piped_name_ip]["asn_org"]) == (64601, piped_name)
    engine.dispose()


# --- static scan of the package source -----------------------------------------------------------------

_SQL_CALLS = {"text", "execute", "exec_driver_sql", "executemany", "executescript", "literal_column"}
_PICKLE_LOADS = {("pickle", "loads"), ("pickle", "load"), ("marshal", "loads"), ("dill", "loads")}


def _dotted(node: ast.expr) -> tuple[str, ...]:
    if isinstance(node, ast.Name):
        return (node.id,)
    if isinstance(node, ast.Attribute):
        return (*_dotted(node.value), node.attr)
    return ()


def _string_built(node: ast.expr) -> bool:
    """An f-string, `"..." % x`, `"..." + x` or `"...".format(x)`: text assembled from values at run time."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(part, ast.FormattedValue) for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return any(isinstance(side, (ast.Constant, ast.JoinedStr, ast.BinOp)) for side in (node.left, node.right))
    return bool(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format")


def unsafe_calls(source: str, filename: str) -> list[str]:
    """`file:line: what` for every shell=True, eval/exec, os.system/popen, pickle-style load and SQL text
    built from strings in `source`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        what = None
        if any(
            k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
            for k in node.keywords
        ):
            what = "shell= other than False"
        elif name in {("eval",), ("exec",), ("compile",), ("__import__",)}:
            what = f"{name[0]}()"
        elif name[:1] == ("os",) and name[-1] in {"system", "popen"} or name[-2:] in _PICKLE_LOADS:
            what = ".".join(name)
        elif name and name[-1] in _SQL_CALLS and node.args and _string_built(node.args[0]):
            what = f"SQL built from strings in {name[-1]}()"
        if what:
            found.append((node.lineno, what))
    return [f"{filename}:{line}: {what}" for line, what in sorted(found)]


def test_the_scanner_finds_each_unsafe_pattern_it_looks_for():
    hostile = (
        "import os, pickle, subprocess\n"
        "subprocess.run(cmd, shell=True)\n"
        "eval(user)\n"
        "exec(user)\n"
        "os.system(cmd)\n"
        "pickle.loads(blob)\n"
        "conn.execute(text(f\"SELECT * FROM t WHERE ip = '{ip}'\"))\n"
        "conn.execute(\"DELETE FROM t WHERE ip = '%s'\" % ip)\n"
        "conn.exec_driver_sql('SELECT ' + column)\n"
        "text('SELECT {}'.format(column))\n"
        "conn.execute(text('SELECT 1'))\n"  # constant SQL: fine
        "conn.execute(select(t).where(t.c.ip == ip))\n"  # bound parameter: fine
    )
    assert [line.split(": ", 1)[0] for line in unsafe_calls(hostile, "x.py")] == [f"x.py:{n}" for n in range(2, 11)]


def test_the_package_has_no_shell_eval_pickle_or_string_built_sql():
    findings = []
    for path in sorted(PACKAGE.rglob("*.py")):
        findings += unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(PROJECT_ROOT)))
    assert findings == []


# --- loopback-only defaults ----------------------------------------------------------------------------


def fenced_code_lines(markdown: str) -> Iterator[str]:
    inside = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            yield line


def test_documented_and_make_commands_bind_the_ui_to_loopback_only():
    sources = {"Makefile": (PROJECT_ROOT / "Makefile").read_text()}
    for doc in [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("**/*.md"))]:
        sources[str(doc.relative_to(PROJECT_ROOT))] = "\n".join(fenced_code_lines(doc.read_text()))
    for config in sorted(PROJECT_ROOT.glob("*.yaml")) + sorted((PROJECT_ROOT / "dagster_home").rglob("*.yaml")):
        sources[str(config.relative_to(PROJECT_ROOT))] = config.read_text()

    servers = re.compile(r"\bdagster(?:-webserver|\s+dev)\b")
    loopback = re.compile(r"(?:^|\s)(?:-h|--host)[ =]127\.0\.0\.1\b")
    commands = []
    for name, text in sources.items():
        for number, line in enumerate(text.splitlines(), 1):
            assert not re.search(r"0\.0\.0\.0|\[::\](?!1)|--host[ =]::\b", line), f"{name}:{number}: {line}"
            command = line.split("#", 1)[0]  # a comment may mention a command it does not run
            if servers.search(command):
                commands.append(name)
                assert loopback.search(command), f"{name}:{number} starts the UI without -h 127.0.0.1: {line}"
    assert "Makefile" in commands and "README.md" in commands  # `make dev` and the README's command


def listening_sockets(process_group: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket some process of the group listens on (read from /proc)."""
    inodes: set[str] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != process_group:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:  # the process ended meanwhile
            continue
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                # The kernel prints each 32-bit word of the address in host (little-endian) byte order.
                raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8))
                found.add((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def make_dev_command(port: int) -> list[str]:
    """The `dagster dev ...` command `make dev` runs, as the Makefile has it today."""
    dry_run = subprocess.run(
        ["make", "-n", "dev", f"DEV_PORT={port}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    (line,) = [line for line in dry_run.splitlines() if re.search(r"/dagster dev\b", line)]
    words = shlex.split(line)
    start = next(n for n, word in enumerate(words) if word.endswith("/dagster"))
    return [str(PROJECT_ROOT / words[start]), *words[start + 1 :]]


def test_make_dev_runs_the_webserver_and_daemon_listening_on_loopback_only(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (tmp_path / "logs").mkdir()
    env = {name: value for name, value in os.environ.items() if not name.startswith(("GREYNOISE_", "ENRICHMENT_"))}
    # Its own instance, no logs to sense, and nothing outside: Cymru points at the loopback discard port.
    env.update(
        DAGSTER_HOME=str(home),
        COWRIE_LOG_DIR=str(tmp_path / "logs"),
        CYMRU_HOST="127.0.0.1",
        CYMRU_PORT="9",
        ENRICHMENT_DB_URL=f"sqlite:///{tmp_path / 'inventory.sqlite'}",
    )
    log = tmp_path / "dev.log"
    with open(log, "wb") as output:
        dev = subprocess.Popen(
            make_dev_command(port),
            cwd=PROJECT_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120

        def up() -> bool:  # the UI listens and the daemon has logged its first line
            return port in {p for _, p in listening_sockets(dev.pid)} and "dagster.daemon" in log.read_text("latin-1")

        while not up():
            assert dev.poll() is None, log.read_text("latin-1")[-3000:]
            assert time.monotonic() < deadline, "make dev did not come up within 120 s"
            time.sleep(0.5)
        listening = listening_sockets(dev.pid)
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        try:
            dev.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait(timeout=10)
    assert ("127.0.0.1", port) in listening
    assert {address for address, _ in listening} <= {"127.0.0.1", "::1"}, listening


def test_the_offline_standin_listens_on_loopback_by_default():
    assert inspect.signature(CymruStandinServer).parameters["host"].default == "127.0.0.1"
    with CymruStandinServer() as standin:
        assert standin.address[0] == "127.0.0.1"


# --- secrets never leave the environment ---------------------------------------------------------------


def _files_containing(root: Path, secrets: list[bytes]) -> list[str]:
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits += [f"{path.relative_to(root)} contains {secret!r}" for secret in secrets if secret in data]
    return hits


@pytest.mark.postgres
def test_a_real_cli_run_writes_and_prints_neither_the_greynoise_key_nor_the_database_password(tmp_path, pg_engine):
    logs = tmp_path / "logs"
    ips = [f"45.77.3.{n}" for n in range(1, 7)]
    write_day(logs, DAY, [event(ip, f"s{n}", NOON) for n, ip in enumerate(ips)])
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    server_url = make_url(pg_engine.url.render_as_string(hide_password=False))
    # The test server trusts loopback, so any password is accepted; a configured server's own one is kept.
    password = server_url.password or DB_PASSWORD
    db_url = server_url.set(password=password)
    closed_port = db_url.set(port=1)  # nothing listens: every database call fails with an exception
    secrets = [GREYNOISE_KEY.encode(), password.encode()]

    with FakeGreyNoise(GREYNOISE_KEY) as greynoise, CymruStandinServer() as cymru:
        # More 503s than the client retries: a failure that ends on the retry list.
        greynoise.script(ips[0], *[status(503, {"message": "try later"})] * 6)
        env = {name: value for name, value in os.environ.items() if not name.startswith(("GREYNOISE_", "ENRICHMENT_"))}
        env.update(
            DAGSTER_HOME=str(home),
            COWRIE_LOG_DIR=str(logs),
            CYMRU_HOST="127.0.0.1",
            CYMRU_PORT=str(cymru.address[1]),
            GREYNOISE_API_KEY=GREYNOISE_KEY,
            GREYNOISE_API_URL=greynoise.url,
            GREYNOISE_RATE_PER_S="1000",
        )
        outputs = []
        # Run 2 fails on its first database call. GreyNoise is off there: its step would retry a database
        # error for minutes (RetryPolicy), and the key's own failure paths are run 1's 503 and the
        # GreyNoise tests' 401.
        for url, should_succeed in ((db_url, True), (closed_port, False)):
            env["ENRICHMENT_DB_URL"] = url.render_as_string(hide_password=False)
            if not should_succeed:
                del env["GREYNOISE_API_KEY"]
            completed = subprocess.run(
                [
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
                    DAY.isoformat(),
                ],
                cwd=PROJECT_ROOT,
                env=env,
                capture_output=True,
                timeout=300,
            )
            output = completed.stdout + completed.stderr
            assert (completed.returncode == 0) == should_succeed, output.decode(errors="replace")[-3000:]
            outputs.append(output)
        assert {seen.key for seen in greynoise.requests} == {GREYNOISE_KEY}  # the key was really used

    assert b"Connection refused" in outputs[1] or b"connection to server" in outputs[1]  # the failure is logged
    leaks = [f"CLI output of run {n + 1} contains {s!r}" for n, out in enumerate(outputs) for s in secrets if s in out]
    leaks += _files_containing(home, secrets)  # event log, run storage, compute logs, stored outputs
    inventory_text = repr(database_state(pg_engine)).encode()
    leaks += [f"the inventory contains {s!r}" for s in secrets if s in inventory_text]
    assert leaks == []
    assert {(row["ip_address"], row["source"]) for row in fetch_failures(pg_engine)} == {(ips[0], "greynoise")}
