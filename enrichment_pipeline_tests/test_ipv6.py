"""IPv6 end to end: a synthetic Cowrie day with IPv6 and IPv4-mapped sources goes through ingest, MaxMind,
the Cymru stand-in (one bulk stream for both families) and into the inventory, on SQLite and PostgreSQL."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from dagster import DagsterInstance

from enrichment_pipeline.core.inventory import (
    fetch_failures,
    fetch_inventory,
    make_engine,
)
from enrichment_pipeline.standins.asn_database import write_asn_database
from enrichment_pipeline.standins.cymru_server import standin_origins
from enrichment_pipeline_tests.support.graph_run import keyed_greynoise, run_day

DAY = "2018-05-10"
# Logged text -> the inventory's canonical key.
LOGGED = {
    "2A01:04F8:0C0C:1234:0000:0000:0000:0005": "2a01:4f8:c0c:1234::5",  # global, Cymru answers
    "2a03:2880:f003:c07:face:b00c::2": "2a03:2880:f003:c07:face:b00c:0:2",  # MaxMind ASN database covers it
    "2001:db8::77": "2001:db8::77",  # documentation prefix: Cymru says NA (unrouted)
    "::ffff:45.33.32.156": "45.33.32.156",  # IPv4-mapped: the same host as the plain IPv4 line below
    "45.33.32.156": "45.33.32.156",
    "198.51.100.20": "198.51.100.20",
}


def write_day(directory: Path) -> Path:
    lines = []
    for number, src_ip in enumerate(LOGGED):
        session = f"s{number:03d}"
        for second, eventid in enumerate(("cowrie.session.connect", "cowrie.login.failed", "cowrie.session.closed")):
            event = {
                "eventid": eventid,
                "src_ip": src_ip,
                "session": session,
                "timestamp": f"{DAY}T10:{number:02d}:{second:02d}.000000Z",
                "dst_port": 2222,
            }
            lines.append(json.dumps(event))
    path = directory / f"cowrie.json.{DAY}"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def asn_db(tmp_path: Path) -> str:
    return write_asn_database(tmp_path / "asn.mmdb", [("2a03:2880::/32", 32934, "TEST-V6-AS")])


def test_ipv6_and_mapped_sources_are_enriched_into_the_inventory(
    sqlite_or_postgres_url, tmp_path, standin, asn_db, graph_greynoise
):
    db_url = sqlite_or_postgres_url
    logs = tmp_path / "logs"
    logs.mkdir()
    write_day(logs)
    canonical = set(LOGGED.values())

    with DagsterInstance.ephemeral() as instance:
        meta = run_day(DAY, logs, db_url, standin.address[1], asn_db, instance, keyed_greynoise(graph_greynoise))
        sent = len(standin.requests)
        repeat = run_day(DAY, logs, db_url, standin.address[1], asn_db, instance, keyed_greynoise(graph_greynoise))

    assert meta["cowrie_source_ips"]["source_ips"].value == len(canonical) == 5
    # One bulk stream carried both address families; MaxMind's IPv6 ASN kept one IP out of it.
    (request,) = standin.requests[:sent]
    assert sorted(request) == sorted(canonical - {"2a03:2880:f003:c07:face:b00c:0:2"})
    assert {ipaddress.ip_address(ip).version for ip in request} == {4, 6}
    assert standin.requests[sent:] == []  # IPv6 answers are fresh like any other
    assert repeat["ips_needing_cymru"]["skipped_fresh"].value == 4

    rows = {row["ip_address"]: row for row in fetch_inventory(make_engine(db_url))}
    assert set(rows) == canonical
    assert rows["45.33.32.156"]["session_count"] == 2  # the mapped and the plain form are one host

    routed_v6 = rows["2a01:4f8:c0c:1234::5"]
    (origin,) = standin_origins("2a01:4f8:c0c:1234::5")
    assert routed_v6["current_asn"] == origin.asn
    assert routed_v6["enrichment"]["cymru"]["prefix"] == "2a01:4f8:c0c::/48"

    from_maxmind = rows["2a03:2880:f003:c07:face:b00c:0:2"]
    assert (from_maxmind["current_asn"], from_maxmind["asn_org"]) == (32934, "TEST-V6-AS")
    assert from_maxmind["cymru_updated_at"] is None

    # GreyNoise knows IPv4 only: IPv6 (and the documentation IPv4 ranges) are skipped, not failed.
    assert graph_greynoise.asked() == ["45.33.32.156"] and meta["greynoise_results"]["skipped"].value == 4
    assert rows["45.33.32.156"]["greynoise_noise"] is True
    assert fetch_failures(make_engine(db_url)) == []

    unrouted = rows["2001:db8::77"]
    assert unrouted["enrichment"]["cymru"]["status"] == "unrouted"
    assert unrouted["current_asn"] is None and unrouted["cymru_updated_at"] is not None
