"""The Cymru stand-in seen through raw sockets: protocol framing, options, labels, faults and shutdown."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from enrichment_pipeline.core.cymru import CymruOrigin, parse_bulk_reply
from enrichment_pipeline.standins.cymru_server import (
    CymruStandinServer,
    standin_origins,
)

BANNER = re.compile(r"Bulk mode; OFFLINE STAND-IN \(not Team Cymru\) \[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+0000\]")
VERBOSE_HEADER = "AS      | IP               | BGP Prefix          | CC | Registry | Allocated  | AS Name"


@pytest.fixture
def server() -> Iterator[CymruStandinServer]:
    with CymruStandinServer() as standin:
        yield standin


def exchange(server: CymruStandinServer, query: bytes, *, half_close: bool = True) -> str:
    """Send raw bytes, read to EOF (the server must close), return the reply text."""
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(query)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def test_verbose_reply_is_banner_header_then_padded_data_lines(server: CymruStandinServer) -> None:
    lines = exchange(server, b"begin\nverbose\n8.8.8.8\n10.0.0.1\nend\n").split("\n")
    asn = standin_origins("8.8.8.8")[0].asn
    assert BANNER.fullmatch(lines[0])
    assert lines[1] == VERBOSE_HEADER
    assert sorted(lines[2:4]) == sorted(
        [
            f"{asn}   | 8.8.8.8          | 8.8.8.0/24          | ZZ | standin  |            | STANDIN-AS{asn}, ZZ",
            "NA      | 10.0.0.1         | NA                  |    | other    |            | NA",
        ]
    )
    assert lines[4:] == [""]  # the reply ends with a newline and nothing else


def test_crlf_and_mixed_case_options_are_accepted(server: CymruStandinServer) -> None:
    text = exchange(server, b"BEGIN\r\nVerbose\r\n8.8.8.8\r\nEnd\r\n")
    lines = text.split("\n")
    assert lines[1] == VERBOSE_HEADER
    assert lines[2].split("|")[1].strip() == "8.8.8.8"
    assert server.requests == [["8.8.8.8"]]


def test_noheader_suppresses_the_header_and_header_forces_it(server: CymruStandinServer) -> None:
    no_header = exchange(server, b"begin\nverbose\nnoheader\n8.8.8.8\nend\n").split("\n")
    assert BANNER.fullmatch(no_header[0]) and no_header[1].startswith(str(standin_origins("8.8.8.8")[0].asn))
    forced = exchange(server, b"begin\nheader\n8.8.8.8\nend\n").split("\n")
    assert forced[1] == "AS      | IP               | AS Name"


def test_without_verbose_there_is_no_header_and_only_as_ip_and_name(server: CymruStandinServer) -> None:
    lines = exchange(server, b"begin\n1.1.1.1\nend\n").split("\n")
    asn = standin_origins("1.1.1.1")[0].asn
    assert lines[1:] == [f"{asn}   | 1.1.1.1          | STANDIN-AS{asn}, ZZ", ""]


def test_single_column_options_add_their_columns_and_noasname_drops_the_name(server: CymruStandinServer) -> None:
    lines = exchange(server, b"begin\nprefix\ncountrycode\nnoasname\n1.1.1.1\nend\n").split("\n")
    assert [cell.strip() for cell in lines[1].split("|")] == [
        str(standin_origins("1.1.1.1")[0].asn),
        "1.1.1.1",
        "1.1.1.0/24",
        "ZZ",
    ]


def test_unparseable_ip_lines_get_an_error_line_naming_their_line_number(server: CymruStandinServer) -> None:
    text = exchange(server, b"begin\nverbose\n8.8.8.8\nnot an ip\n1.1.1.1\nend\n")
    assert "Error: no ASN or IP match on line 4." in text.split("\n")
    assert server.requests == [["8.8.8.8", "not an ip", "1.1.1.1"]]


def test_ipv6_is_echoed_in_expanded_form(server: CymruStandinServer) -> None:
    lines = exchange(server, b"begin\nverbose\n2a00:1450::1\nend\n").split("\n")
    cells = [cell.strip() for cell in lines[2].split("|")]
    assert cells[1] == "2a00:1450:0000:0000:0000:0000:0000:0001"
    assert cells[2] == "2a00:1450::/48"


def test_reply_lines_do_not_follow_request_order(server: CymruStandinServer) -> None:
    ips = [f"45.{i}.0.1" for i in range(40)]
    text = exchange(server, ("begin\nnoheader\nverbose\n" + "\n".join(ips) + "\nend\n").encode())
    replied = [line.split("|")[1].strip() for line in text.split("\n")[1:] if line]
    assert sorted(replied) == sorted(ips)
    assert replied != ips


def test_fabricated_answers_are_labelled_stable_and_in_the_private_asn_range() -> None:
    for ip in ["8.8.8.8", "1.1.1.1", "203.0.114.9", "2606:4700::1111"]:
        (origin,) = standin_origins(ip)
        assert 64512 <= origin.asn <= 65534
        assert origin.as_name == f"STANDIN-AS{origin.asn}, ZZ"
        assert (origin.country_code, origin.registry) == ("ZZ", "standin")
        assert standin_origins(ip) == (origin,)
    assert standin_origins("2606:4700::1111")[0].prefix == "2606:4700::/48"
    for reserved in ["10.0.0.1", "127.0.0.1", "100.64.0.1", "fe80::1", "::1", "192.0.2.1"]:
        assert standin_origins(reserved) == ()


def test_explicit_answers_give_one_line_per_origin_and_empty_means_na() -> None:
    origins = [
        CymruOrigin(13335, "198.51.100.0/24", "US", "arin", "2010-07-14", "CLOUDFLARENET, US"),
        CymruOrigin(20940, "198.51.100.0/24", "EU", "ripencc", None, None),
    ]
    with CymruStandinServer(answers={"198.51.100.7": origins, "8.8.8.8": []}) as standin:
        text = exchange(standin, b"begin\nverbose\n198.51.100.7\n8.8.8.8\nend\n")
    data = sorted(text.split("\n")[2:-1])
    assert data == [
        "13335   | 198.51.100.7     | 198.51.100.0/24     | US | arin     | 2010-07-14 | CLOUDFLARENET, US",
        "20940   | 198.51.100.7     | 198.51.100.0/24     | EU | ripencc  |            | NA",
        "NA      | 8.8.8.8          | NA                  |    | other    |            | NA",
    ]


def test_query_ended_by_eof_without_end_is_still_answered(server: CymruStandinServer) -> None:
    text = exchange(server, b"begin\nverbose\n8.8.8.8")
    assert parse_bulk_reply(text, ["8.8.8.8"]).answers["8.8.8.8"].origins == standin_origins("8.8.8.8")


def test_server_closes_after_answering_even_if_client_keeps_its_side_open(server: CymruStandinServer) -> None:
    text = exchange(server, b"begin\n8.8.8.8\nend\n", half_close=False)
    assert BANNER.fullmatch(text.split("\n")[0])


def test_latency_delays_each_answer() -> None:
    with CymruStandinServer(latency_s=0.3) as standin:
        started = time.monotonic()
        exchange(standin, b"begin\n8.8.8.8\nend\n")
        assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("mode", ["drop_ips", "error_lines", "garbled"])
def test_partial_faults_hit_exactly_the_odd_positions(server: CymruStandinServer, mode: str) -> None:
    ips = [f"45.{i}.0.1" for i in range(6)]
    server.set_fault(mode)
    parsed = parse_bulk_reply(exchange(server, ("begin\nverbose\n" + "\n".join(ips) + "\nend\n").encode()), ips)
    assert set(parsed.answers) == set(ips[0::2])
    assert parsed.unanswered == ips[1::2]
    assert parsed.error_lines == (3 if mode == "error_lines" else 0)
    assert parsed.garbled_lines == (4 if mode == "garbled" else 0)


def test_trigger_ips_limit_a_fault_to_matching_queries(server: CymruStandinServer) -> None:
    server.set_fault("drop_ips", trigger_ips=["9.9.9.9"])
    untouched = exchange(server, b"begin\n8.8.8.8\n1.1.1.1\nend\n")
    assert "1.1.1.1" in untouched
    hit = exchange(server, b"begin\n8.8.8.8\n1.1.1.1\n9.9.9.9\nend\n")
    assert "1.1.1.1" not in hit and "8.8.8.8" in hit and "9.9.9.9" in hit


def test_unknown_fault_mode_is_rejected(server: CymruStandinServer) -> None:
    with pytest.raises(ValueError, match="unknown fault mode"):
        server.set_fault("explode")


def test_stop_does_not_hang_with_a_no_reply_connection_open() -> None:
    standin = CymruStandinServer().start()
    standin.set_fault("no_reply")
    sock = socket.create_connection(standin.address, timeout=5)
    try:
        sock.sendall(b"begin\n8.8.8.8\nend\n")
        deadline = time.monotonic() + 5
        while not standin.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert standin.requests == [["8.8.8.8"]]
        started = time.monotonic()
        standin.stop()
        assert time.monotonic() - started < 1.5
        assert sock.recv(1024) == b""  # the server side was closed without any reply
    finally:
        sock.close()


def test_command_line_prints_the_bound_port_and_serves_until_terminated() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "enrichment_pipeline.standins.cymru_server", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.fullmatch(r"CYMRU STAND-IN listening on 127\.0\.0\.1:(\d+)\n", first)
        assert match, first
        standin_address = ("127.0.0.1", int(match.group(1)))
        with socket.create_connection(standin_address, timeout=5) as sock:
            sock.sendall(b"begin\nverbose\n8.8.8.8\nend\n")
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        answer = parse_bulk_reply(reply.decode(), ["8.8.8.8"]).answers["8.8.8.8"]
        assert answer.origins == standin_origins("8.8.8.8")
    finally:
        process.terminate()
        assert process.wait(timeout=5) == 0
