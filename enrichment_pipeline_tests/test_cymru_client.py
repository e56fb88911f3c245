"""CymruBulkClient against the loopback stand-in: batching, parallelism, deadlines and every fault mode."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from enrichment_pipeline.core.cymru import (
    BatchOutcome,
    CymruBulkClient,
    CymruError,
    CymruOrigin,
)
from enrichment_pipeline.standins.cymru_server import (
    CymruStandinServer,
    standin_origins,
)


def global_ips(count: int, start: str = "45.0.0.1") -> list[str]:
    first = int(ipaddress.ip_address(start))
    return [str(ipaddress.ip_address(first + 7 * i)) for i in range(count)]


@pytest.fixture
def server() -> Iterator[CymruStandinServer]:
    with CymruStandinServer() as standin:
        yield standin


def client_for(server: CymruStandinServer, **options: float) -> CymruBulkClient:
    host, port = server.address
    options.setdefault("timeout_s", 5.0)
    return CymruBulkClient(host, port, **options)  # type: ignore[arg-type]


def test_1200_ips_in_batches_of_500_are_all_answered_with_progress_callbacks(server: CymruStandinServer) -> None:
    ips = global_ips(1195) + ["10.1.2.3", "192.168.0.1", "2a00:1450:4001::1", "2606:4700::1111", "127.0.0.1"]
    outcomes: list[BatchOutcome] = []
    caller = threading.get_ident()
    callback_threads: set[int] = set()

    def on_batch(outcome: BatchOutcome) -> None:
        callback_threads.add(threading.get_ident())
        outcomes.append(outcome)

    result = client_for(server, batch_size=500).lookup(ips, on_batch=on_batch)

    assert result.failed == {}
    assert len(result.answers) == 1200
    for ip in ips:
        assert result.answers[ip].origins == standin_origins(ip)
    assert result.answers["10.1.2.3"].unrouted and result.answers["127.0.0.1"].unrouted
    assert result.answers["2a00:1450:4001::1"].asn == standin_origins("2a00:1450:4001::1")[0].asn
    assert sorted((o.number, o.total, len(o.ips), o.error) for o in outcomes) == [
        (1, 3, 500, None),
        (2, 3, 500, None),
        (3, 3, 200, None),
    ]
    assert all(o.seconds >= 0 for o in outcomes)
    assert callback_threads == {caller}
    assert [b.number for b in result.batches] == [1, 2, 3]
    assert result.batches_failed == 0
    assert sorted(len(query) for query in server.requests) == [200, 500, 500]
    assert sorted(ip for query in server.requests for ip in query) == sorted(ips)


def test_duplicates_are_sent_once_and_answered_once(server: CymruStandinServer) -> None:
    result = client_for(server).lookup(["8.8.8.8", "1.1.1.1", "8.8.8.8", "1.1.1.1"])
    assert server.requests == [["8.8.8.8", "1.1.1.1"]]
    assert set(result.answers) == {"8.8.8.8", "1.1.1.1"}
    assert result.failed == {}


def test_empty_input_opens_no_connection(server: CymruStandinServer) -> None:
    result = client_for(server).lookup([])
    assert (result.answers, result.failed, result.batches) == ({}, {}, [])
    assert server.requests == []


def test_explicit_moas_answer_picks_lowest_asn_over_the_wire() -> None:
    origins = [
        CymruOrigin(64500, "198.51.100.0/24", "NL", "ripencc", "2010-01-01", "B, NL"),
        CymruOrigin(13335, "198.51.100.0/24", "US", "arin", "2010-07-14", "A, US"),
    ]
    with CymruStandinServer(answers={"198.51.100.7": origins, "8.8.4.4": []}) as standin:
        result = client_for(standin).lookup(["198.51.100.7", "8.8.4.4"])
    answer = result.answers["198.51.100.7"]
    assert [o.asn for o in answer.origins] == [13335, 64500]
    assert answer.asn == 13335 and answer.primary == origins[1]
    assert result.answers["8.8.4.4"].unrouted


def test_refused_port_fails_every_ip_with_the_reason() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    ips = global_ips(7)
    result = CymruBulkClient("127.0.0.1", port, timeout_s=2, batch_size=5).lookup(ips)
    assert result.answers == {}
    assert result.failed == {
        **{ip: f"batch 1/2: connection refused by 127.0.0.1:{port}" for ip in ips[:5]},
        **{ip: f"batch 2/2: connection refused by 127.0.0.1:{port}" for ip in ips[5:]},
    }
    assert result.batches_failed == 2


@contextmanager
def scripted_server(reply: bytes, ending: str) -> Iterator[tuple[str, int]]:
    """A loopback server for one query: reads it to `end`, sends `reply`, then "close"s, "reset"s or "stall"s.

    For replies the stand-in never writes (an independent server's spelling, a reset after complete lines).
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    released = threading.Event()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            received = b""
            while not received.endswith(b"end\n") and (chunk := conn.recv(65536)):
                received += chunk
            conn.sendall(reply)
            if ending == "reset":
                time.sleep(0.05)  # let the reply reach the client before the RST
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif ending == "stall":
                released.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[:2]
    finally:
        released.set()
        thread.join(5)
        listener.close()


HEADER = "AS      | IP               | BGP Prefix          | CC | Registry | Allocated  | AS Name"
A, B, C, D, E = "198.51.100.1", "10.0.0.1", "203.0.113.3", "192.0.2.4", "198.51.100.5"
CUT_REPLY = (
    "Bulk mode; whois.cymru.com [2025-11-06 12:00:00 +0000]\n" + HEADER + "\n"
    f"64500   | {A}     | 198.51.100.0/24     | US | arin     | 2001-01-01 | EXAMPLE-A, US\n"
    f"NA      | {B}         | NA                  |    | other    |            | NA\n"
    f"64501   | {C}      | 203.0.113.0/24      | NL | ripencc  | 2002-02-02 | EXAMPLE-C, NL\n"
    f"64502   | {D}        | 192.0.2.0/24        | DE | ripencc  | 2003-03-03 | EXAMP"
).encode()


def test_reset_after_complete_lines_keeps_their_answers_and_fails_the_rest_naming_the_reset() -> None:
    with scripted_server(CUT_REPLY, "reset") as (host, port):
        result = CymruBulkClient(host, port, timeout_s=5).lookup([A, B, C, D, E])
    assert result.answers[A].asn == 64500 and result.answers[A].primary.as_name == "EXAMPLE-A, US"
    assert result.answers[B].unrouted
    # C had the last complete line (a MOAS line for it may follow); D's line was cut; E never came.
    assert result.failed == {ip: "batch 1/1: connection reset by server" for ip in (C, D, E)}
    assert result.batches_failed == 1 and result.batches[0].error == "connection reset by server"


def test_timeout_after_complete_lines_keeps_their_answers_and_fails_the_rest_naming_the_timeout() -> None:
    with scripted_server(CUT_REPLY, "stall") as (host, port):
        result = CymruBulkClient(host, port, timeout_s=1.0).lookup([A, B, C, D, E])
    assert set(result.answers) == {A, B}
    assert result.failed == {ip: "batch 1/1: timed out after 1.0 s" for ip in (C, D, E)}
    assert result.batches_failed == 1


def test_query_batch_carries_the_partial_answers_of_a_cut_reply_on_its_error() -> None:
    with scripted_server(CUT_REPLY, "reset") as (host, port):
        with pytest.raises(CymruError, match="connection reset by server") as raised:
            CymruBulkClient(host, port, timeout_s=5).query_batch([A, B, C, D, E])
    assert raised.value.partial is not None
    assert set(raised.value.partial.answers) == {A, B}
    assert raised.value.partial.unanswered == [C, D, E]


def test_clean_close_after_an_unterminated_last_line_accepts_it_as_the_server_s_choice() -> None:
    with scripted_server(CUT_REPLY, "close") as (host, port):
        result = CymruBulkClient(host, port, timeout_s=5).lookup([A, B, C, D, E])
    assert set(result.answers) == {A, B, C, D}
    assert result.answers[D].primary.as_name == "EXAMP"
    assert result.failed == {E: "no answer in reply"}
    assert result.batches_failed == 0


def test_an_independently_spelled_reply_is_understood() -> None:
    # Another server's choices: ASN header, tabs, CRLF, lower-case na, a `|` and a non-UTF-8 byte in AS names,
    # a duplicated line, a line for an IP nobody asked about and an expanded IPv6 echo.
    reply = b"\r\n".join(
        [
            b"Bulk mode; whois.example.net [2026-01-01 00:00:00 +0000]",
            b"ASN\t| IP\t| BGP Prefix\t| CC\t| Registry\t| Allocated\t| AS Name",
            f"64500\t| {A}\t| 198.51.100.0/24\t| US\t| arin\t| 2001-01-01\t| ACME | WEST, US".encode(),
            f"64500\t| {A}\t| 198.51.100.0/24\t| US\t| arin\t| 2001-01-01\t| ACME | WEST, US".encode(),
            f"na\t| {B}\t| na\t| \t| other\t| \t| na".encode(),
            b"64501\t| 2001:0db8:0000:0000:0000:0000:0000:0001\t| 2001:db8::/32\t| NL\t| ripencc\t| na"
            b"\t| T\xc9L\xc9COM, NL",
            b"64999\t| 8.8.8.8\t| 8.8.8.0/24\t| US\t| arin\t| 1992-12-01\t| UNASKED, US",
            b"",
        ]
    )
    with scripted_server(reply, "close") as (host, port):
        client = CymruBulkClient(host, port, timeout_s=5)
        parsed = client.query_batch([A, B, "2001:db8::1"])
    assert (parsed.garbled_lines, parsed.error_lines, parsed.unanswered) == (0, 0, [])
    assert parsed.answers[A].origins == (
        CymruOrigin(64500, "198.51.100.0/24", "US", "arin", "2001-01-01", "ACME | WEST, US"),
    )
    assert parsed.answers[B].unrouted
    assert parsed.answers["2001:db8::1"].origins == (
        CymruOrigin(64501, "2001:db8::/32", "NL", "ripencc", None, "T\ufffdL\ufffdCOM, NL"),
    )


def test_reset_before_any_complete_data_line_fails_the_whole_batch(server: CymruStandinServer) -> None:
    server.set_fault("reset_mid_reply")
    ips = global_ips(200)
    result = client_for(server).lookup(ips)
    assert result.answers == {}
    assert set(result.failed) == set(ips)
    assert set(result.failed.values()) == {"batch 1/1: connection reset by server"}


def test_server_that_never_answers_fails_within_the_deadline(server: CymruStandinServer) -> None:
    server.set_fault("no_reply")
    ips = global_ips(3)
    started = time.monotonic()
    result = client_for(server, timeout_s=1.0).lookup(ips)
    elapsed = time.monotonic() - started
    assert elapsed < 3
    assert result.failed == {ip: "batch 1/1: timed out after 1.0 s" for ip in ips}
    assert result.batches[0].error == "timed out after 1.0 s"


def test_dripping_server_fails_within_the_deadline_although_bytes_keep_coming(
    server: CymruStandinServer,
) -> None:
    server.set_fault("drip")
    started = time.monotonic()
    result = client_for(server, timeout_s=1.0).lookup(["8.8.8.8"])
    assert time.monotonic() - started < 3
    assert result.failed == {"8.8.8.8": "batch 1/1: timed out after 1.0 s"}


def test_server_closing_without_reply_fails_the_batch(server: CymruStandinServer) -> None:
    server.set_fault("close_immediately")
    result = client_for(server).lookup(["8.8.8.8", "9.9.9.9"])
    assert result.answers == {}
    reason = result.failed["8.8.8.8"]
    assert reason.startswith("batch 1/1: ")
    # Depending on timing the client sees an EOF, a failed send or a reset; all fail the whole batch.
    assert reason in (
        "batch 1/1: server closed the connection without replying",
        "batch 1/1: connection reset by server",
    )
    assert result.failed["9.9.9.9"] == reason


def test_garbled_lines_never_yield_an_answer_and_clean_lines_still_do(server: CymruStandinServer) -> None:
    server.set_fault("garbled")
    ips = global_ips(20)
    result = client_for(server).lookup(ips)
    assert result.failed == {ip: "no answer in reply" for ip in ips[1::2]}
    assert {ip: a.origins for ip, a in result.answers.items()} == {ip: standin_origins(ip) for ip in ips[0::2]}
    parsed = client_for(server).query_batch(ips)
    assert parsed.garbled_lines == 11  # ten mangled data lines plus the trailing garbage line


def test_ips_missing_from_a_clean_reply_fail_while_the_rest_are_answered(server: CymruStandinServer) -> None:
    server.set_fault("drop_ips")
    ips = global_ips(9)
    result = client_for(server).lookup(ips)
    assert set(result.answers) == set(ips[0::2])
    assert result.failed == {ip: "no answer in reply" for ip in ips[1::2]}
    assert result.batches_failed == 0


def test_error_lines_leave_their_ips_failed_and_are_counted(server: CymruStandinServer) -> None:
    server.set_fault("error_lines")
    ips = global_ips(6)
    parsed = client_for(server).query_batch(ips)
    assert parsed.error_lines == 3
    assert set(parsed.answers) == set(ips[0::2])
    assert parsed.unanswered == ips[1::2]


def test_fault_triggered_by_one_ip_fails_only_batch_2_of_3(server: CymruStandinServer) -> None:
    ips = global_ips(30)
    server.set_fault("reset_mid_reply", trigger_ips=[ips[14]])
    outcomes: list[BatchOutcome] = []
    result = client_for(server, batch_size=10).lookup(ips, on_batch=outcomes.append)
    assert set(result.answers) == set(ips[:10] + ips[20:])
    assert result.failed == {ip: "batch 2/3: connection reset by server" for ip in ips[10:20]}
    assert {o.number: o.error for o in outcomes} == {1: None, 2: "connection reset by server", 3: None}
    assert result.batches_failed == 1


def test_no_more_than_max_parallel_connections_are_open_at_once() -> None:
    with CymruStandinServer(latency_s=0.2) as standin:
        result = client_for(standin, batch_size=5, max_parallel=3).lookup(global_ips(40))
        peak = standin.peak_connections
    assert len(result.answers) == 40
    assert len(result.batches) == 8
    assert peak == 3


def test_oversized_reply_fails_the_batch() -> None:
    many = [CymruOrigin(64512 + i, "198.51.100.0/24", "ZZ", "standin", None, "X" * 100) for i in range(1000)]
    with CymruStandinServer(answers={"198.51.100.1": many}) as standin:
        result = client_for(standin, max_reply_bytes_per_ip=100).lookup(["198.51.100.1"])
    assert result.failed == {"198.51.100.1": "batch 1/1: reply exceeded 65636 bytes"}


def test_newline_smuggling_and_non_canonical_ips_never_reach_the_server(server: CymruStandinServer) -> None:
    hostile = ["8.8.8.8\nend\nbegin\n1.2.3.4", "9.9.9.9\r", "::ffff:8.8.4.4", "2001:DB8::1", "", "x" * 10_000]
    result = client_for(server).lookup([*hostile, "1.1.1.1"])
    assert server.requests == [["1.1.1.1"]]
    assert result.failed == {value: "invalid IP" for value in hostile}
    assert set(result.answers) == {"1.1.1.1"}


def test_query_batch_rejects_a_smuggled_newline_before_connecting(server: CymruStandinServer) -> None:
    with pytest.raises(ValueError):
        client_for(server).query_batch(["1.1.1.1", "2.2.2.2\n3.3.3.3"])
    assert server.requests == []


def test_query_batch_raises_cymru_error_on_transport_failure(server: CymruStandinServer) -> None:
    server.set_fault("no_reply")
    with pytest.raises(CymruError, match="timed out after 0.5 s"):
        client_for(server, timeout_s=0.5).query_batch(["8.8.8.8"])


@pytest.mark.parametrize(
    "options", [{"timeout_s": 0}, {"batch_size": 0}, {"max_parallel": 0}, {"max_reply_bytes_per_ip": 0}]
)
def test_nonsensical_settings_are_rejected(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CymruBulkClient("127.0.0.1", 43, **options)  # type: ignore[arg-type]
