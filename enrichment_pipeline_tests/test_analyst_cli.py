"""`enrichment-pipeline show`, `asns` and `export` against a real inventory holding hostile names (quotes,
commas, line breaks, terminal escapes, SQL text), configured only through ENRICHMENT_DB_URL; plus the
installed console script."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from enrichment_pipeline.cli import main
from enrichment_pipeline.core.inventory import (
    EXPORT_COLUMNS,
    DayActivity,
    ExportFilters,
    LookupFailure,
    SourceUpdate,
    create_schema,
    export_rows,
    fetch_inventory,
    make_engine,
    upsert_day,
)

DAY1, DAY2, DAY3 = date(2018, 5, 6), date(2018, 5, 7), date(2018, 5, 8)
NOW = datetime(2018, 5, 9, 3, tzinfo=UTC)
LATER = datetime(2018, 5, 10, 3, tzinfo=UTC)
V4, V6, X, Y, Z = "198.51.100.7", "2001:db8::5", "203.0.113.1", "203.0.113.2", "192.0.2.10"
COMMAS = 'Evil, "Quoted"\nCorp\r\nLtd, with a trailing quote"'
ESCAPES = "\x1b[31mRED\x1b[0m \u202eevil"
SQL = "'); DROP TABLE ip_inventory;--"


def at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def seen(ip: str, day: date, sessions: int, events: int) -> DayActivity:
    return DayActivity(ip, sessions, events, at(day, 1), at(day, 2 + sessions))


def answers(ip: str, asn: int | None, org: str | None, country: str | None, verdict: str | None) -> SourceUpdate:
    greynoise = None if verdict is None else {"observed": True, "classification": verdict, "noise": True, "riot": False}
    return SourceUpdate(ip, maxmind={"asn": asn, "asn_org": org, "country_code": country}, greynoise=greynoise)


@pytest.fixture
def inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """Five IPs over three days; Z changed ASN and has a failed Cymru lookup. The commands see it through
    ENRICHMENT_DB_URL, as an operator's shell would."""
    url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    monkeypatch.setenv("ENRICHMENT_DB_URL", url)
    engine = make_engine(url)
    create_schema(engine)
    upsert_day(
        engine,
        DAY1,
        [seen(V4, DAY1, 3, 30), seen(Y, DAY1, 1, 1), seen(Z, DAY1, 1, 5)],
        [
            answers(V4, 64500, COMMAS, "DE", "malicious"),
            answers(Y, None, None, None, None),
            answers(Z, 64999, "BEFORE", "DE", "malicious"),
        ],
        now=NOW,
    )
    upsert_day(
        engine,
        DAY2,
        [seen(V4, DAY2, 2, 20), seen(V6, DAY2, 4, 44)],
        [answers(V6, 64501, ESCAPES, "US", "benign")],
        now=NOW,
    )
    upsert_day(
        engine,
        DAY3,
        [seen(X, DAY3, 1, 2), seen(Z, DAY3, 6, 50)],
        [answers(X, 64500, COMMAS, "FR", "unknown"), answers(Z, 64502, SQL, "DE", None)],
        now=LATER,
        failures=[LookupFailure(Z, "greynoise", "HTTP 503 \x1b[2J")],
    )
    return engine


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


# --- show -------------------------------------------------------------------------------------------------


def test_show_of_an_unknown_ip_says_so_and_exits_1(inventory: Engine) -> None:
    assert run("show", "192.0.2.99") == (1, "192.0.2.99: not in the inventory\n")

    code, output = run("show", V4, "192.0.2.99")
    assert code == 1 and output.startswith(f"{V4}\n") and output.endswith("192.0.2.99: not in the inventory\n")

    code, output = run("show", "--json", "192.0.2.99")
    assert code == 1 and json.loads(output) == [{"ip": "192.0.2.99", "found": False}]


@pytest.mark.parametrize(
    ("given", "found"),
    [("2001:DB8:0:0:0:0:0:5", V6), ("2001:db8::5", V6), ("::ffff:198.51.100.7", V4), ("::FFFF:c633:6407", V4)],
)
def test_show_finds_ipv6_and_ipv4_mapped_addresses_in_any_spelling(inventory: Engine, given: str, found: str) -> None:
    code, output = run("show", given)
    assert code == 0 and output.splitlines()[0] == found
    code, output = run("show", "--json", given)
    assert code == 0 and json.loads(output)[0]["inventory"]["ip_address"] == found


def test_show_prints_every_part_and_escapes_names_from_the_network(inventory: Engine) -> None:
    code, output = run("show", V6, Z, V4)

    assert code == 0
    assert "\x1b" not in output and "\u202e" not in output and "\r" not in output
    assert "\\x1b[31mRED\\x1b[0m \\u202eevil" in output  # visible, not interpreted by the terminal
    assert '  ASN           AS64500 Evil, "Quoted"\\nCorp\\r\\nLtd, with a trailing quote"' in output
    lines = output.splitlines()
    assert "  ASN           AS64502 '); DROP TABLE ip_inventory;--" in lines
    assert "  totals        7 sessions, 55 events" in lines
    assert "  ASN history   2 ASN(s), 1 change(s)" in lines
    assert any(line.startswith("    AS64999 BEFORE [maxmind] 2018-05-09T03:00:00+00:00") for line in lines)
    assert any(line.startswith("    AS64502 ") and line.endswith("(changed)") for line in lines)
    assert "  retry list    1 failed source(s)" in lines
    assert any("greynoise: 1 attempt(s)" in line and line.endswith("HTTP 503 \\x1b[2J") for line in lines)
    assert any(line.startswith("    2018-05-08  6 sessions, 50 events") for line in lines)
    assert any(line.startswith("    maxmind     stored 2018-05-10T03:00:00+00:00: {") for line in lines)


def test_show_json_holds_the_whole_record(inventory: Engine) -> None:
    code, output = run("show", "--json", Z)

    assert code == 0
    (record,) = json.loads(output)
    assert record["found"] is True and record["ip"] == Z
    assert record["inventory"]["current_asn"] == 64502 and record["inventory"]["event_count"] == 55
    assert record["sources"]["maxmind"]["answer"]["asn_org"] == SQL
    assert record["sources"]["greynoise"]["updated_at"] == "2018-05-09T03:00:00+00:00"
    assert [day["day"] for day in record["activity"]] == ["2018-05-06", "2018-05-08"]
    assert [(entry["seq"], entry["asn"]) for entry in record["asn_history"]] == [(1, 64999), (2, 64502)]
    assert [entry["source"] for entry in record["retry_list"]] == ["greynoise"]


# --- asns -------------------------------------------------------------------------------------------------


def asn_column(output: str) -> list[str]:
    return [line.split()[0] for line in output.splitlines()[1:]]


def test_asns_are_ordered_by_ips_or_sessions_limited_and_filtered(inventory: Engine) -> None:
    code, output = run("asns")
    assert code == 0 and asn_column(output) == ["AS64500", "AS64501", "AS64502"]  # 2 IPs, then ties by ASN
    assert output.splitlines()[0].split() == ["asn", "ips", "sessions", "events", "first_seen", "last_seen", "cc"] + [
        "registry",
        "org",
    ]
    assert "\\x1b[31mRED" in output and "\x1b" not in output and "\n" + "Corp" not in output

    assert asn_column(run("asns", "--by", "sessions")[1]) == ["AS64502", "AS64500", "AS64501"]  # 7, 6, 4 sessions
    assert asn_column(run("asns", "--top", "1")[1]) == ["AS64500"]
    assert asn_column(run("asns", "--since", "2018-05-08")[1]) == ["AS64500", "AS64502"]  # X and Z on DAY3

    code, output = run("asns", "--json", "--by", "sessions", "--top", "2")
    rows = json.loads(output)
    assert code == 0 and [row["asn"] for row in rows] == [64502, 64500]
    assert rows[1] == {
        "asn": 64500,
        "asn_org": COMMAS,
        "country_code": "DE",  # V4 says DE, X says FR: tie, the smaller text
        "registry": None,
        "first_seen": "2018-05-06T01:00:00+00:00",
        "last_seen": "2018-05-08T03:00:00+00:00",
        "ip_count": 2,
        "session_count": 6,
        "event_count": 52,
        "updated_at": "2018-05-10T03:00:00+00:00",
    }


def test_asns_rebuild_reports_and_keeps_the_rows(inventory: Engine) -> None:
    before = run("asns", "--json")[1]
    code, output = run("asns", "--rebuild", "--json")
    assert code == 0 and output.startswith("asn_inventory rebuilt: 0 row(s) rewritten or deleted\n")
    assert output.split("\n", 1)[1] == before


# --- export -----------------------------------------------------------------------------------------------


def exported_ips(*filters: str) -> list[str]:
    code, output = run("export", "--format", "jsonl", *filters)
    assert code == 0
    return [json.loads(line)["ip_address"] for line in output.splitlines()]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([], {V4, V6, X, Y, Z}),
        (["--asn", "64500"], {V4, X}),
        (["--asn", "64500", "--asn", "AS64501"], {V4, V6, X}),  # OR within a kind
        (["--asn", "64500", "--country", "DE"], {V4}),  # AND across kinds
        (["--country", "de", "--country", "US"], {V4, V6, Z}),
        (["--classification", "malicious"], {V4, Z}),
        (["--classification", "benign", "--classification", "unknown"], {V6, X}),
        (["--classification", "malicious", "--classification", "benign", "--country", "DE"], {V4, Z}),
        (["--since", "2018-05-07"], {V4, V6, X, Z}),  # active on DAY2 or later
        (["--until", "2018-05-06"], {V4, Y, Z}),
        (["--since", "2018-05-07", "--until", "2018-05-07"], {V4, V6}),  # Z: DAY1 and DAY3, not in between
        (["--since", "2018-05-07", "--until", "2018-05-07", "--asn", "64500"], {V4}),
        (["--since", "2018-05-08", "--country", "DE", "--classification", "malicious"], {Z}),
        (["--asn", "4242"], set()),
    ],
)
def test_export_filters_combine_and_across_kinds_or_within_one(
    inventory: Engine, filters: list[str], expected: set[str]
) -> None:
    ips = exported_ips(*filters)
    assert ips == sorted(expected)  # one row per IP, by IP text


def test_export_csv_is_valid_for_the_csv_module_with_quotes_commas_and_newlines(
    inventory: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "ips.csv"

    code, output = run("export", "--format", "csv", "-o", str(target))

    assert (code, output) == (0, "")
    assert capsys.readouterr().err == f"exported 5 IPs to {target}\n"
    with open(target, newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    assert rows[0] == list(EXPORT_COLUMNS)
    by_ip = {row[0]: dict(zip(EXPORT_COLUMNS, row, strict=True)) for row in rows[1:]}
    assert len(rows) == 6 and sorted(by_ip) == sorted([V4, V6, X, Y, Z])
    assert by_ip[V4] == {
        "ip_address": V4,
        "asn": "64500",
        "asn_org": COMMAS,  # every quote, comma and line break back as it was
        "country_code": "DE",
        "first_seen": "2018-05-06T01:00:00+00:00",
        "last_seen": "2018-05-07T04:00:00+00:00",
        "session_count": "5",
        "event_count": "50",
        "classification": "malicious",
    }
    assert by_ip[V6]["asn_org"] == ESCAPES and by_ip[Z]["asn_org"] == SQL
    assert by_ip[Y] == {
        **dict.fromkeys(EXPORT_COLUMNS, ""),  # no ASN, organisation, country nor verdict: empty cells
        "ip_address": Y,
        "first_seen": "2018-05-06T01:00:00+00:00",
        "last_seen": "2018-05-06T03:00:00+00:00",
        "session_count": "1",
        "event_count": "1",
    }
    assert [path.name for path in tmp_path.iterdir() if path.name.endswith(".partial")] == []


@pytest.mark.parametrize("org", ['=HYPERLINK("http://x.invalid","x")', "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR"])
def test_export_csv_keeps_a_network_name_that_a_spreadsheet_would_run_as_text(
    inventory: Engine, tmp_path: Path, org: str
) -> None:
    upsert_day(inventory, DAY3, [seen(X, DAY3, 1, 2)], [answers(X, 64500, org, "FR", "unknown")], now=LATER)
    target = tmp_path / "ips.csv"

    assert run("export", "--format", "csv", "-o", str(target)) == (0, "")
    with open(target, newline="", encoding="utf-8") as file:
        by_ip = {row[0]: row for row in csv.reader(file)}
    assert by_ip[X][EXPORT_COLUMNS.index("asn_org")] == "'" + org  # text for a spreadsheet, not a formula
    assert by_ip[V4][EXPORT_COLUMNS.index("asn_org")] == COMMAS  # other names unchanged
    # JSON lines are for programs: the exact name.
    code, output = run("export", "--format", "jsonl", "--asn", "64500", "--country", "FR")
    assert code == 0 and [json.loads(line)["asn_org"] for line in output.splitlines()] == [org]


def test_export_jsonl_rows_are_typed(inventory: Engine) -> None:
    code, output = run("export", "--format", "jsonl", "--asn", "64502")
    assert code == 0
    assert [json.loads(line) for line in output.splitlines()] == [
        {
            "ip_address": Z,
            "asn": 64502,
            "asn_org": SQL,
            "country_code": "DE",
            "first_seen": "2018-05-06T01:00:00+00:00",
            "last_seen": "2018-05-08T08:00:00+00:00",
            "session_count": 7,
            "event_count": 55,
            "classification": "malicious",
        }
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "csv", "--since", "2018-02-30"], "not a date (YYYY-MM-DD): '2018-02-30'"),
        (["--format", "csv", "--until", "yesterday"], "not a date (YYYY-MM-DD): 'yesterday'"),
        (["--format", "csv", "--since", "20180506"], "not a date"),
        (["--format", "csv", "--asn", "AS12x"], "not an AS number"),
        (["--format", "csv", "--asn", "1; DROP TABLE ip_inventory"], "not an AS number"),
        (["--format", "csv", "--asn", "4294967296"], "not an AS number"),
        (["--format", "csv", "--country", "DEU"], "not a two-letter country code: 'DEU'"),
        (["--format", "csv", "--country", "1A"], "not a two-letter country code"),
        (["--format", "xml"], "invalid choice: 'xml'"),
        (["--format", "csv", "--classification", "evil"], "invalid choice: 'evil'"),
        ([], "the following arguments are required: --format"),
    ],
)
def test_bad_export_arguments_are_usage_errors_with_a_clear_message(
    inventory: Engine, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run("export", *argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_empty_date_window_and_a_missing_directory_are_usage_errors(
    inventory: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("export", "--format", "csv", "--since", "2018-05-08", "--until", "2018-05-06") == (2, "")
    assert "--since 2018-05-08 is after --until 2018-05-06" in capsys.readouterr().err
    assert run("export", "--format", "csv", "-o", str(tmp_path / "missing" / "x.csv")) == (2, "")
    assert "no directory" in capsys.readouterr().err


def test_hostile_filter_values_are_bound_parameters(inventory: Engine) -> None:
    filters = ExportFilters(
        countries=("'; DROP TABLE ip_inventory;--",), classifications=("' OR '1'='1",), asns=(64500,)
    )
    assert list(export_rows(inventory, filters)) == []
    assert len(fetch_inventory(inventory)) == 5


def test_installed_console_script_runs_the_analyst_commands(inventory: Engine) -> None:
    script = Path(sys.executable).with_name("enrichment-pipeline")
    environment = {**os.environ, "DAGSTER_HOME": "/nonexistent"}

    def command(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=60, env=environment)

    asns = command("asns", "--json")
    assert asns.returncode == 0, asns.stderr
    assert [row["asn"] for row in json.loads(asns.stdout)] == [64500, 64501, 64502]
    assert command("show", "192.0.2.99").returncode == 1
    exported = command("export", "--format", "csv", "--country", "US")
    assert exported.returncode == 0 and exported.stdout.splitlines()[1].startswith(f"{V6},64501,")
