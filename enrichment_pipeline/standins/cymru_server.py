"""Loopback stand-in for the Team Cymru bulk whois server, with deterministic fabricated answers.
Speaks the real framing (banner, options, padded columns, unordered lines) and can inject transport faults."""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import logging
import signal
import socket
import struct
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType, TracebackType

from enrichment_pipeline.core.cymru import CymruOrigin
from enrichment_pipeline.core.ips import canonical_ip

log = logging.getLogger(__name__)

FAULT_MODES = frozenset(
    {"reset_mid_reply", "no_reply", "garbled", "drop_ips", "drip", "error_lines", "close_immediately"}
)
_OPTIONS = frozenset(
    {
        "verbose",
        "noasname",
        "asnumber",
        "prefix",
        "countrycode",
        "registry",
        "allocdate",
        "asname",
        "notruncate",
        "header",
        "noheader",
    }
)
# Column name, the option that turns it on outside verbose mode, and its padding width.
_COLUMNS = (
    ("AS", "asnumber", 7),
    ("IP", None, 16),
    ("BGP Prefix", "prefix", 19),
    ("CC", "countrycode", 2),
    ("Registry", "registry", 8),
    ("Allocated", "allocdate", 10),
    ("AS Name", "asname", 0),
)
_STANDIN_ASN_FIRST = 64512
_STANDIN_ASN_COUNT = 65534 - 64512 + 1
_MAX_QUERY_BYTES = 16 * 1024 * 1024
_READ_TIMEOUT_S = 30.0
_DRIP_INTERVAL_S = 0.2
_TRAILING_GARBAGE = b"\xff\xfe<<trailing garbage \x00 after the last line>>\n"


def standin_origins(ip: str) -> tuple[CymruOrigin, ...]:
    """The fabricated answer for an IP nobody configured: NA unless globally routable, else one origin."""
    address = ipaddress.ip_address(ip)
    if not address.is_global:
        return ()
    digest = hashlib.sha256(address.compressed.encode("ascii")).digest()
    asn = _STANDIN_ASN_FIRST + int.from_bytes(digest[:4], "big") % _STANDIN_ASN_COUNT
    prefix = ipaddress.ip_network(f"{address}/{24 if address.version == 4 else 48}", strict=False)
    return (CymruOrigin(asn, prefix.compressed, "ZZ", "standin", None, f"STANDIN-AS{asn}, ZZ"),)


@dataclass
class _Query:
    """One received bulk query: its option words and its IP lines with their 1-based line numbers."""

    options: set[str] = field(default_factory=set)
    items: list[tuple[int, str]] = field(default_factory=list)

    @classmethod
    def from_lines(cls, lines: Sequence[str]) -> _Query:
        query = cls()
        for number, line in enumerate(lines, 1):
            word = line.lower()
            if word == "end":
                break
            if not line or word == "begin":
                continue
            if word in _OPTIONS:
                query.options.add(word)
            else:
                query.items.append((number, line))
        return query

    def columns(self) -> list[tuple[str, int]]:
        verbose = "verbose" in self.options
        chosen = [
            (name, width)
            for name, option, width in _COLUMNS
            if name in ("AS", "IP", "AS Name") or verbose or option in self.options
        ]
        if "noasname" in self.options:
            chosen = [(name, width) for name, width in chosen if name != "AS Name"]
        return chosen

    def wants_header(self) -> bool:
        return "noheader" not in self.options and ("header" in self.options or "verbose" in self.options)


def _format_line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False))


def _cells(ip: str, origin: CymruOrigin | None) -> dict[str, str]:
    address = ipaddress.ip_address(ip)
    # The real server may echo IPv6 in another form than it was sent; clients must key by value.
    shown = address.exploded if address.version == 6 else ip
    if origin is None:
        return {
            "AS": "NA",
            "IP": shown,
            "BGP Prefix": "NA",
            "CC": "",
            "Registry": "other",
            "Allocated": "",
            "AS Name": "NA",
        }
    return {
        "AS": str(origin.asn),
        "IP": shown,
        "BGP Prefix": origin.prefix or "NA",
        "CC": origin.country_code or "",
        "Registry": origin.registry or "",
        "Allocated": origin.allocated or "",
        "AS Name": origin.as_name or "NA",
    }


def _garble(cells: list[str], variant: int) -> list[str]:
    """Mangle a data line but keep its IP column readable, in two styles a lax parser would misread."""
    if variant % 2 == 0:
        return ["4x?!", *cells[1:]]
    # Cut short, and with a wrong (truncated) ASN that still looks like a number.
    return [cells[0][:-1] or "7", *cells[1:3]]


def _shuffle_key(line: str) -> str:
    # A stable order that has nothing to do with the request order.
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


class CymruStandinServer:
    """Threaded loopback server speaking the Cymru bulk protocol; OFFLINE STAND-IN, not Team Cymru."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_s: float = 0.0,
        answers: Mapping[str, Sequence[CymruOrigin]] | None = None,
    ) -> None:
        self._bind = (host, port)
        self.latency_s = latency_s
        self._answers: dict[str, tuple[CymruOrigin, ...]] = {}
        for ip, origins in (answers or {}).items():
            canonical = canonical_ip(ip)
            if canonical is None:
                raise ValueError(f"answers key is not an IP: {ip!r}")
            self._answers[canonical] = tuple(origins)
        self.address: tuple[str, int] = (host, port)
        self._lock = threading.Lock()
        self._requests: list[list[str]] = []
        self._fault: str | None = None
        self._trigger_ips: frozenset[str] | None = None
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._active = 0
        self._peak = 0

    # --- observation -------------------------------------------------------------------------------
    @property
    def requests(self) -> list[list[str]]:
        """The IP lines of every query received so far, in arrival order (a snapshot copy)."""
        with self._lock:
            return [list(lines) for lines in self._requests]

    @property
    def peak_connections(self) -> int:
        """Most connections ever open at the same time (to check a client's parallelism limit)."""
        with self._lock:
            return self._peak

    # --- control -----------------------------------------------------------------------------------
    def set_fault(self, mode: str | None, *, trigger_ips: Iterable[str] | None = None) -> None:
        """Inject a fault into later connections; with trigger_ips only into queries naming one of them.

        Faults hit the IP lines at odd positions (0-based) of a query where a fault touches some IPs
        (garbled, drop_ips, error_lines), so tests can predict exactly which IPs are affected.
        """
        if mode is not None and mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; expected one of {sorted(FAULT_MODES)}")
        triggers = None
        if trigger_ips is not None:
            triggers = frozenset(canonical_ip(ip) or ip for ip in trigger_ips)
        with self._lock:
            self._fault, self._trigger_ips = mode, triggers

    def start(self) -> CymruStandinServer:
        host, port = self._bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
        # A short accept timeout lets the loop notice stop() without relying on close() waking accept.
        listener.settimeout(0.1)
        self._listener = listener
        self.address = tuple(listener.getsockname()[:2])  # type: ignore[assignment]
        self._accept_thread = threading.Thread(target=self._accept_loop, name="cymru-standin", daemon=True)
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, unblock every open connection (even a `no_reply` one) and wait briefly."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=2)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
            handlers = list(self._handlers)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for handler in handlers:
            handler.join(timeout=2)

    def __enter__(self) -> CymruStandinServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- serving -----------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            handler = threading.Thread(target=self._serve, args=(conn,), name="cymru-standin-conn", daemon=True)
            with self._lock:
                self._active += 1
                self._peak = max(self._peak, self._active)
                self._connections.add(conn)
                self._handlers = {thread for thread in self._handlers if thread.is_alive()}
                self._handlers.add(handler)
            handler.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._answer(conn)
        except OSError as error:
            log.debug("stand-in connection ended: %s", error)
        finally:
            # Count the connection as gone before the client can see EOF and open the next one.
            with self._lock:
                self._active -= 1
                self._connections.discard(conn)
            conn.close()

    def _answer(self, conn: socket.socket) -> None:
        with self._lock:
            mode, triggers = self._fault, self._trigger_ips
        if mode == "close_immediately" and triggers is None:
            return
        conn.settimeout(_READ_TIMEOUT_S)
        lines = _read_query_lines(conn)
        if lines is None:
            return
        query = _Query.from_lines(lines)
        with self._lock:
            self._requests.append([text for _, text in query.items])
        if triggers is not None and not any(canonical_ip(text) in triggers for _, text in query.items):
            mode = None
        if mode == "close_immediately":
            return
        if mode == "no_reply":
            self._stopping.wait()
            return
        if self.latency_s > 0 and self._stopping.wait(self.latency_s):
            return
        reply = self._render(query, mode)
        if mode == "reset_mid_reply":
            # Cut inside the first data line: none arrives complete, so the client must fail the whole batch.
            conn.sendall(_cut_in_first_data_line(reply, head_lines=1 + query.wants_header()))
            self._stopping.wait(0.05)  # let the partial reply reach the client before the RST
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif mode == "drip":
            for offset in range(len(reply)):
                conn.sendall(reply[offset : offset + 1])
                if self._stopping.wait(_DRIP_INTERVAL_S):
                    return
        else:
            conn.sendall(reply)

    def _origins_for(self, ip: str) -> tuple[CymruOrigin, ...]:
        if ip in self._answers:
            return self._answers[ip]
        return standin_origins(ip)

    def _render(self, query: _Query, fault: str | None) -> bytes:
        columns = query.columns()
        names = [name for name, _ in columns]
        widths = [width for _, width in columns]
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        head = [f"Bulk mode; OFFLINE STAND-IN (not Team Cymru) [{stamp} +0000]"]
        if query.wants_header():
            head.append(_format_line(names, widths))
        body: list[str] = []
        garbled = 0
        for position, (number, text) in enumerate(query.items):
            hit = position % 2 == 1
            ip = canonical_ip(text)
            if ip is None or (fault == "error_lines" and hit):
                body.append(f"Error: no ASN or IP match on line {number}.")
                continue
            if fault == "drop_ips" and hit:
                continue
            for origin in self._origins_for(ip) or (None,):
                cells = _cells(ip, origin)
                row = [cells[name] for name in names]
                if fault == "garbled" and hit:
                    row = _garble(row, garbled)
                    garbled += 1
                body.append(_format_line(row, widths))
        body.sort(key=_shuffle_key)
        reply = "\n".join(head + body).encode("utf-8") + b"\n"
        if fault == "garbled":
            reply += _TRAILING_GARBAGE
        return reply


def _cut_in_first_data_line(reply: bytes, head_lines: int) -> bytes:
    start = 0
    for _ in range(head_lines):
        start = reply.index(b"\n", start) + 1
    end = reply.find(b"\n", start)
    return reply[: start + max(1, (end - start) // 2)]


def _read_query_lines(conn: socket.socket) -> list[str] | None:
    """Read lines up to `end` (or EOF); None if the query is oversized or the peer goes silent."""
    lines: list[str] = []
    pending = b""
    received = 0
    while True:
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            return None
        if not chunk:
            break
        received += len(chunk)
        if received > _MAX_QUERY_BYTES:
            return None
        *complete, pending = (pending + chunk).split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", errors="replace").strip()
            lines.append(line)
            if line.lower() == "end":
                return lines
    if pending.strip():
        lines.append(pending.decode("utf-8", errors="replace").strip())
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Offline Team Cymru bulk-whois STAND-IN (fabricated data).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--latency-s", type=float, default=0.0, help="delay before each answer")
    args = parser.parse_args(argv)

    server = CymruStandinServer(args.host, args.port, latency_s=args.latency_s).start()

    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    host, port = server.address
    print(f"CYMRU STAND-IN listening on {host}:{port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
