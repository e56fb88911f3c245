"""`enrichment-pipeline refresh`: --ips N, repeatable --ip, --dry-run and -v against a real inventory and the
loopback Cymru stand-in, configured only through environment variables; plus the installed console script."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from enrichment_pipeline.cli import main
from enrichment_pipeline.core import freshness
from enrichment_pipeline.core.inventory import (
    create_schema,
    fetch_failures,
    fetch_inventory,
    make_engine,
)
from enrichment_pipeline.core.maxmind import MaxMindLookup
from enrichment_pipeline_tests.support.cymru_standin import sent
from enrichment_pipeline_tests.support.refresh_inventory import (
    ALL,
    GLOBAL_V4,
    KEY,
    T0,
    WITH_ASN,
    WITHOUT_ASN,
    seed,
)

LATER = T0 + timedelta(days=31)


@pytest.fixture
def env(tmp_path: Path, geoip: MaxMindLookup, standin, monkeypatch: pytest.MonkeyPatch) -> str:
    """An expired inventory of five IPs; the environment points the command at it and at the stand-in."""
    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    engine = make_engine(db_url)
    create_schema(engine)
    seed(engine, geoip, T0)
    for name in [name for name in os.environ if name.startswith(("GREYNOISE_", "CYMRU_", "GEOIP_", "REFRESH_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ENRICHMENT_DB_URL", db_url)
    monkeypatch.setenv("GEOIP_ASN_DB", geoip.asn_info.path)
    monkeypatch.setenv("CYMRU_HOST", "127.0.0.1")
    monkeypatch.setenv("CYMRU_PORT", str(standin.address[1]))
    monkeypatch.setenv("CYMRU_TIMEOUT_S", "5")
    monkeypatch.setattr(freshness, "utc_now", lambda: LATER)
    return db_url


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def rows(db_url: str) -> dict[str, dict]:
    return {row["ip_address"]: row for row in fetch_inventory(make_engine(db_url))}


def test_ips_n_refreshes_the_n_stalest(env, standin):
    code, output = run("refresh", "--ips", "3")

    assert code == 0
    refreshed = [ip for ip, row in rows(env).items() if row["maxmind_updated_at"] == LATER]
    assert len(refreshed) == 3
    assert sent(standin) == sorted(set(refreshed) & set(WITHOUT_ASN))
    assert "selected 3" in output and "maxmind_rewritten 3" in output


def test_repeated_ip_refreshes_exactly_those_even_when_fresh(env, standin, monkeypatch):
    monkeypatch.setattr(freshness, "utc_now", lambda: T0 + timedelta(hours=1))  # everything is fresh

    code, output = run("refresh", "--ip", WITHOUT_ASN[2], "--ip", WITH_ASN[0], "-v")

    assert code == 0
    assert sent(standin) == [WITHOUT_ASN[2]]  # the IPv6 one; the other has a MaxMind ASN
    after = rows(env)
    assert {ip for ip, row in after.items() if row["maxmind_updated_at"] > T0} == {WITHOUT_ASN[2], WITH_ASN[0]}
    assert f"{WITH_ASN[0]}: AS64496 TEST-NET-2" in output
    assert f"{WITHOUT_ASN[2]}: AS" in output


def test_dry_run_shows_ips_and_sources_without_network_or_writes(env, standin):
    before = rows(env)

    code, output = run("refresh", "--ips", "10", "--dry-run")

    assert code == 0
    assert standin.requests == []
    assert rows(env) == before
    lines = output.splitlines()
    assert lines[0] == "dry run: 5 IPs; no network, nothing written"
    assert sorted(lines[1:]) == sorted(
        [f"{ip}: maxmind" for ip in WITH_ASN] + [f"{ip}: maxmind, cymru" for ip in WITHOUT_ASN]
    )


def test_dry_run_of_fresh_ips_says_nothing_would_be_asked(env, monkeypatch):
    monkeypatch.setattr(freshness, "utc_now", lambda: T0 + timedelta(hours=1))

    code, output = run("refresh", "--ips", "10", "--dry-run")

    assert (code, output) == (0, "dry run: 0 IPs; no network, nothing written\n")


def test_failed_lookups_exit_1_and_land_on_the_retry_list(env, standin):
    standin.set_fault("close_immediately")

    code, output = run("refresh", "--ips", "5", "-v")

    assert code == 1
    assert {row["ip_address"] for row in fetch_failures(make_engine(env))} == set(WITHOUT_ASN)
    assert "cymru_failed 3" in output and "cymru failed (" in output


def test_unknown_ip_is_reported_and_invalid_input_is_a_usage_error(env, standin, capsys):
    code, output = run("refresh", "--ip", "192.0.2.55", "--ip", WITH_ASN[1])
    assert code == 1 and "192.0.2.55: not in ip_inventory, skipped" in output
    assert "192.0.2.55" not in rows(env)

    for argv in (["--ip", "1.2.3.4; rm -rf /"], ["--ips", "0"], ["--ips", "3", "--ip", WITH_ASN[0]], []):
        with pytest.raises(SystemExit) as exit_info:
            run("refresh", *argv)
        assert exit_info.value.code == 2
    assert "not an IP address" in capsys.readouterr().err


def test_installed_console_script_runs_a_dry_run(env):
    script = Path(sys.executable).with_name("enrichment-pipeline")
    assert script.exists(), "make install puts the console script into .venv/bin/"
    environment = {**os.environ, "DAGSTER_HOME": "/nonexistent"}

    result = subprocess.run(
        [str(script), "refresh", "--ip", ALL[0], "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["dry run: 1 IPs; no network, nothing written", f"{ALL[0]}: maxmind"]


def test_with_a_greynoise_key_stale_global_ipv4_is_asked_and_the_key_is_never_shown(
    env, geoip, standin, refresh_greynoise, monkeypatch, capsys, caplog
):
    seed(make_engine(env), geoip, T0, GLOBAL_V4)
    monkeypatch.setenv("GREYNOISE_API_KEY", KEY)
    monkeypatch.setenv("GREYNOISE_API_URL", refresh_greynoise.url)
    monkeypatch.setenv("GREYNOISE_RATE_PER_S", "1000")
    monkeypatch.setattr(freshness, "utc_now", lambda: T0 + timedelta(hours=1))  # only GreyNoise is stale

    code, dry = run("refresh", "--ips", "10", "--dry-run")
    assert refresh_greynoise.requests == []
    assert sorted(dry.splitlines()[1:]) == sorted(f"{ip}: greynoise" for ip in GLOBAL_V4)

    code, output = run("refresh", "--ips", "10", "-v")

    assert code == 0
    assert sorted(refresh_greynoise.asked()) == sorted(GLOBAL_V4) and standin.requests == []
    assert {seen.key for seen in refresh_greynoise.requests} == {KEY}
    assert all(
        "greynoise=" in line and "greynoise=-" not in line
        for line in output.splitlines()
        if line.startswith(GLOBAL_V4[0])
    )
    captured = capsys.readouterr()
    assert all(KEY not in text for text in (dry, output, captured.out, captured.err, caplog.text))


def test_a_rejected_greynoise_key_exits_1_with_a_clear_message(env, geoip, refresh_greynoise, monkeypatch, capsys):
    seed(make_engine(env), geoip, T0, GLOBAL_V4)
    monkeypatch.setenv("GREYNOISE_API_KEY", "wrong-key-1234")
    monkeypatch.setenv("GREYNOISE_API_URL", refresh_greynoise.url)
    monkeypatch.setenv("GREYNOISE_RATE_PER_S", "1000")

    code, _ = run("refresh", "--ip", GLOBAL_V4[0])

    assert code == 1
    err = capsys.readouterr().err
    assert "GREYNOISE_API_KEY" in err and "401" in err and "wrong-key-1234" not in err


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CYMRU_MAX_PARALLEL", "50"), ("CYMRU_BATCH_SIZE", "20000"), ("CYMRU_BATCH_SIZE", "0")],
)
def test_the_command_honours_the_cymru_limits_of_the_dagster_resource(
    env, standin, monkeypatch, capsys, variable, value
):
    # The same limit fails a Dagster run (test_cymru_faults_graph): here it is a usage error before any query.
    monkeypatch.setenv(variable, value)
    code, _ = run("refresh", "--ips", "5")
    assert code == 2
    assert variable in capsys.readouterr().err
    assert sent(standin) == []


def test_the_command_builds_its_clients_from_the_same_resources_as_the_jobs(env, monkeypatch):
    from enrichment_pipeline.cli import _set_up

    monkeypatch.setenv("CYMRU_MAX_PARALLEL", "3")
    monkeypatch.setenv("CYMRU_BATCH_SIZE", "7")
    monkeypatch.setenv("CYMRU_TTL_DAYS", "2.5")
    setup = _set_up()
    assert (setup.cymru.max_parallel, setup.cymru.batch_size) == (3, 7)
    assert setup.policy.cymru_ttl == timedelta(days=2.5)
