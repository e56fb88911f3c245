"""Team Cymru bulk whois (TCP 43): query framing, tolerant reply parsing and a batched, parallel client.
Owns the rule that every requested IP ends either answered (routed or unrouted) or failed with a reason."""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from enrichment_pipeline.core.ips import canonical_ip

log = logging.getLogger(__name__)

# Verbose data lines: AS | IP | BGP Prefix | CC | Registry | Allocated | AS Name.
_VERBOSE_COLUMNS = 7
_MAX_ASN = 2**32 - 1
_ASN = re.compile(r"[0-9]{1,10}")
_COUNTRY = re.compile(r"[A-Za-z]{2}")
_REGISTRY = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REPLY_SLACK_BYTES = 64 * 1024
NO_ANSWER = "no answer in reply"
INVALID_IP = "invalid IP"
_CLOSED_EARLY = "server closed the connection without replying"


class CymruError(Exception):
    """A batch failed: the transport broke or the reply cannot be trusted.

    `partial` holds what the complete lines of a reply cut short by a reset or timeout still answered.
    """

    def __init__(self, reason: str, partial: ParsedReply | None = None) -> None:
        super().__init__(reason)
        self.partial = partial


class _ReplyCut(CymruError):
    """A reset or timeout after `received` bytes of the reply had arrived."""

    def __init__(self, reason: str, received: bytes) -> None:
        super().__init__(reason)
        self.received = received


@dataclass(frozen=True)
class CymruOrigin:
    """One origin AS announcing the prefix that covers an IP (one verbose data line)."""

    asn: int
    prefix: str | None
    country_code: str | None
    registry: str | None
    allocated: str | None  # as text, e.g. "1998-09-25"
    as_name: str | None


def _origin_order(origin: CymruOrigin) -> tuple[int, str, str, str, str, str]:
    return (
        origin.asn,
        origin.prefix or "",
        origin.country_code or "",
        origin.registry or "",
        origin.allocated or "",
        origin.as_name or "",
    )


@dataclass(frozen=True)
class CymruAnswer:
    """Everything the reply said about one IP; no origins means the IP is unrouted (an `NA` row)."""

    ip: str
    origins: tuple[CymruOrigin, ...]

    @property
    def asn(self) -> int | None:
        """The lowest origin ASN.

        MOAS origins are equally valid and reply lines come in no fixed order; the lowest ASN is a pick
        that is stable across runs and servers, so the inventory does not flap between lookups.
        """
        return min((origin.asn for origin in self.origins), default=None)

    @property
    def primary(self) -> CymruOrigin | None:
        """The origin whose ASN is `asn` (the first of them in a fixed field order if several)."""
        return min(self.origins, key=_origin_order, default=None)

    @property
    def unrouted(self) -> bool:
        return not self.origins


@dataclass
class ParsedReply:
    """What one bulk reply yields for the IPs that were asked about."""

    answers: dict[str, CymruAnswer]
    unanswered: list[str]
    error_lines: int
    garbled_lines: int


def build_bulk_query(ips: Sequence[str]) -> bytes:
    """Frame a verbose bulk query; every IP must already be canonical, so no newline can slip in."""
    lines = ["begin", "verbose"]
    for ip in ips:
        if not isinstance(ip, str) or canonical_ip(ip) != ip:
            raise ValueError(f"not a canonical IP address: {ip!r}")
        lines.append(ip)
    lines.append("end")
    return ("\n".join(lines) + "\n").encode("ascii")


class _GarbledRow(ValueError):
    """A data line whose IP column may be readable but whose other columns are not."""


def _unknown(cell: str) -> bool:
    # Servers differ in the case of "NA"; a lower-case "na" must not become a registry or an AS name.
    return cell == "" or cell.upper() == "NA"


def _optional(cell: str) -> str | None:
    return None if _unknown(cell) else cell


def _parse_prefix(cell: str, ip: str) -> str | None:
    if _unknown(cell):
        return None
    try:
        network = ipaddress.ip_network(cell, strict=False)
    except ValueError as error:
        raise _GarbledRow(f"bad prefix {cell!r}") from error
    # A prefix that does not cover the IP means the line was mangled somewhere.
    if "/" not in cell or ipaddress.ip_address(ip) not in network:
        raise _GarbledRow(f"prefix {cell!r} does not cover {ip}")
    return network.compressed


def _parse_origin(cells: list[str], ip: str) -> CymruOrigin | None:
    """Return the origin on a verbose data line, None for an `NA` (unrouted) line; raise if garbled."""
    if len(cells) != _VERBOSE_COLUMNS:
        raise _GarbledRow(f"{len(cells)} columns")
    asn_cell, _, prefix_cell, country_cell, registry_cell, allocated_cell, name_cell = cells
    prefix = _parse_prefix(prefix_cell, ip)
    if country_cell and not _COUNTRY.fullmatch(country_cell):
        raise _GarbledRow(f"bad country {country_cell!r}")
    registry = _optional(registry_cell)
    if registry is not None and not _REGISTRY.fullmatch(registry):
        raise _GarbledRow(f"bad registry {registry!r}")
    allocated = _optional(allocated_cell)
    if allocated is not None and not _DATE.fullmatch(allocated):
        raise _GarbledRow(f"bad date {allocated!r}")
    if _CONTROL.search(name_cell):
        raise _GarbledRow("control character in AS name")
    if asn_cell.upper() == "NA":
        return None
    if not _ASN.fullmatch(asn_cell) or int(asn_cell) > _MAX_ASN:
        raise _GarbledRow(f"bad ASN {asn_cell!r}")
    return CymruOrigin(
        asn=int(asn_cell),
        prefix=prefix,
        # "NA" here is Namibia: only routed lines reach this point, and unrouted ones leave CC empty.
        country_code=country_cell.upper() or None,
        registry=registry.lower() if registry else None,
        allocated=allocated,
        as_name=_optional(name_cell),
    )


def _is_header(cells: list[str]) -> bool:
    # "IP" can never be the IP column of a data line, whatever a server calls its AS column ("AS", "ASN").
    return len(cells) >= 2 and cells[0].upper().startswith("AS") and cells[1].upper() == "IP"


def parse_bulk_reply(text: str, requested: Sequence[str], *, cut: bool = False) -> ParsedReply:
    """Parse a verbose bulk reply, keyed by the IP column (reply order means nothing).

    Tolerates either banner, a missing header, padding, CRLF, IPv6 in any textual form, MOAS rows, a `|` in
    the AS name and trailing junk. An IP with any garbled data line is left unanswered rather than answered
    from its other lines, so a mangled line can never produce a wrong ASN.

    `cut` marks a reply that ended in a reset or timeout: its unterminated last line may be truncated (a cut
    AS name still looks valid) and is dropped, and the IP of the last complete data line is left unanswered,
    as servers answering in request order would have sent a further MOAS line for it next. Lines in another
    order can still hide a MOAS origin of an answered IP; every origin kept is a real one, so that only risks
    a different lowest-ASN pick until the next refresh, which beats failing every IP of the batch.
    """
    if cut:
        text = text[: text.rfind("\n") + 1]
    wanted, invalid = _requested_ips(requested)
    lines = _read_lines(text, wanted)
    if cut and lines.last_ip is not None:
        lines.distrusted.add(lines.last_ip)
    answers, unanswered = _answers(wanted, lines)
    return ParsedReply(answers, unanswered + invalid, lines.error_lines, lines.garbled_lines)


@dataclass
class _ReplyLines:
    """What the data lines of one reply said, per IP, before any answer is trusted."""

    origins: dict[str, set[CymruOrigin]] = field(default_factory=dict)
    unrouted: set[str] = field(default_factory=set)
    distrusted: set[str] = field(default_factory=set)  # an IP with a garbled line: never answered
    last_ip: str | None = None
    error_lines: int = 0
    garbled_lines: int = 0


def _requested_ips(requested: Sequence[str]) -> tuple[dict[str, None], list[str]]:
    """The canonical requested IPs in order, and the values that are no IP at all."""
    wanted: dict[str, None] = {}
    invalid: list[str] = []
    for value in requested:
        ip = canonical_ip(value)
        if ip is None:
            invalid.append(str(value))
        else:
            wanted[ip] = None
    return wanted, invalid


def _read_lines(text: str, wanted: Mapping[str, None]) -> _ReplyLines:
    lines = _ReplyLines()
    for raw_line in text.split("\n"):
        line = raw_line.strip()
        if not line or line.lower().startswith("bulk mode"):
            continue
        if line.lower().startswith("error:"):
            lines.error_lines += 1
            continue
        # The AS name is the last, free-text column: any further `|` belongs to it.
        cells = [cell.strip() for cell in line.split("|", _VERBOSE_COLUMNS - 1)]
        if _is_header(cells):
            continue
        ip = canonical_ip(cells[1]) if len(cells) >= 2 else None
        if ip is None:
            lines.garbled_lines += 1
            continue
        lines.last_ip = ip
        try:
            origin = _parse_origin(cells, ip)
        except _GarbledRow as why:
            lines.garbled_lines += 1
            log.debug("garbled Cymru line for %s (%s): %.200r", ip, why, line)
            lines.distrusted.add(ip)
            continue
        if ip not in wanted:
            continue
        if origin is None:
            lines.unrouted.add(ip)
        else:
            lines.origins.setdefault(ip, set()).add(origin)
    return lines


def _answers(wanted: Iterable[str], lines: _ReplyLines) -> tuple[dict[str, CymruAnswer], list[str]]:
    """The trusted answer of each requested IP, and the IPs left unanswered."""
    answers: dict[str, CymruAnswer] = {}
    unanswered: list[str] = []
    for ip in wanted:
        origins = lines.origins.get(ip)
        unrouted = ip in lines.unrouted
        # Both an NA row and an AS row for one IP contradict each other: trust neither.
        if ip in lines.distrusted or (unrouted and origins) or (not unrouted and not origins):
            unanswered.append(ip)
        else:
            answers[ip] = CymruAnswer(ip, tuple(sorted(origins or (), key=_origin_order)))
    return answers, unanswered


@dataclass
class BatchOutcome:
    """How one batch (one TCP connection) went; `error` is set when the batch failed (its IPs without an
    answer from the complete lines received before a reset or timeout fail with that reason)."""

    number: int
    total: int
    ips: list[str]
    seconds: float
    error: str | None


@dataclass
class BulkLookupResult:
    """Every requested IP lands in exactly one of `answers` or `failed` (ip -> short reason)."""

    answers: dict[str, CymruAnswer] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    batches: list[BatchOutcome] = field(default_factory=list)

    @property
    def batches_failed(self) -> int:
        return sum(1 for batch in self.batches if batch.error is not None)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        # settimeout(0) would switch to non-blocking mode instead of timing out.
        raise TimeoutError
    return left


# Limits of politeness toward Team Cymru, enforced by the client whoever builds it (a job, a command).
MAX_BATCH_SIZE = 10_000
MAX_PARALLEL = 8


class CymruBulkClient:
    """Polite bulk client: batches of `batch_size` IPs, at most `max_parallel` connections at once."""

    def __init__(
        self,
        host: str,
        port: int = 43,
        *,
        timeout_s: float = 30.0,
        batch_size: int = 500,
        max_parallel: int = 4,
        max_reply_bytes_per_ip: int = 4096,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port out of range: {port}")
        problems = []
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            problems.append(f"batch_size (CYMRU_BATCH_SIZE) must be 1-{MAX_BATCH_SIZE}, got {batch_size}")
        if not 1 <= max_parallel <= MAX_PARALLEL:
            problems.append(f"max_parallel (CYMRU_MAX_PARALLEL) must be 1-{MAX_PARALLEL}, got {max_parallel}")
        if not timeout_s > 0:
            problems.append(f"timeout_s (CYMRU_TIMEOUT_S) must be positive, got {timeout_s}")
        if max_reply_bytes_per_ip < 1:
            problems.append(f"max_reply_bytes_per_ip must be positive, got {max_reply_bytes_per_ip}")
        if problems:
            raise ValueError("; ".join(problems))
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.batch_size = batch_size
        self.max_parallel = max_parallel
        self.max_reply_bytes_per_ip = max_reply_bytes_per_ip

    def query_batch(self, ips: Sequence[str]) -> ParsedReply:
        """Send one bulk query on one connection; raise CymruError if the batch failed (with `partial` set if
        complete lines arrived before a reset or timeout)."""
        query = build_bulk_query(ips)
        limit = self.max_reply_bytes_per_ip * len(ips) + _REPLY_SLACK_BYTES
        try:
            reply = self._exchange(query, limit)
        except _ReplyCut as failure:
            # Complete lines that arrived before the reset or timeout are as good as those of a full reply.
            text = failure.received.decode("utf-8", errors="replace")
            partial = parse_bulk_reply(text, ips, cut=True) if "\n" in text else None
            raise CymruError(str(failure), partial) from None
        if not reply:
            raise CymruError(_CLOSED_EARLY)
        parsed = parse_bulk_reply(reply.decode("utf-8", errors="replace"), ips)
        if parsed.garbled_lines or parsed.error_lines:
            log.warning(
                "Cymru reply for %d IPs: %d garbled line(s), %d error line(s), %d IP(s) unanswered",
                len(ips),
                parsed.garbled_lines,
                parsed.error_lines,
                len(parsed.unanswered),
            )
        return parsed

    def _exchange(self, query: bytes, limit: int) -> bytes:
        """Send, half-close, read to EOF; the whole exchange shares one deadline of `timeout_s`."""
        deadline = time.monotonic() + self.timeout_s
        chunks: list[bytes] = []
        size = 0
        try:
            with socket.create_connection((self.host, self.port), timeout=_remaining(deadline)) as sock:
                sock.settimeout(_remaining(deadline))
                sock.sendall(query)
                sock.shutdown(socket.SHUT_WR)
                while True:
                    sock.settimeout(_remaining(deadline))
                    chunk = sock.recv(65536)
                    if not chunk:
                        return b"".join(chunks)
                    size += len(chunk)
                    if size > limit:
                        raise CymruError(f"reply exceeded {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise _ReplyCut(f"timed out after {float(self.timeout_s)} s", b"".join(chunks)) from None
        except socket.gaierror as error:
            raise CymruError(f"cannot resolve {self.host}: {error.strerror}") from None
        except ConnectionRefusedError:
            raise CymruError(f"connection refused by {self.host}:{self.port}") from None
        except ConnectionResetError:
            raise _ReplyCut("connection reset by server", b"".join(chunks)) from None
        except OSError as error:
            # A server that hangs up while we still send makes send/shutdown fail with EPIPE or ENOTCONN.
            if isinstance(error, (BrokenPipeError, ConnectionAbortedError)) or error.errno == errno.ENOTCONN:
                raise CymruError(_CLOSED_EARLY) from None
            raise CymruError(f"network error: {error.strerror or error}") from None

    def _run_batch(self, number: int, total: int, ips: list[str]) -> tuple[BatchOutcome, ParsedReply | None]:
        started = time.monotonic()
        reply: ParsedReply | None = None
        error: str | None = None
        try:
            reply = self.query_batch(ips)
        except CymruError as failure:
            error = str(failure)
            reply = failure.partial
        except Exception as failure:  # noqa: BLE001 - a bug must fail the batch, never lose its IPs
            log.exception("unexpected failure in Cymru batch %d/%d", number, total)
            error = f"unexpected error: {type(failure).__name__}"
        return BatchOutcome(number, total, ips, time.monotonic() - started, error), reply

    def lookup(self, ips: Iterable[str], *, on_batch: Callable[[BatchOutcome], None] | None = None) -> BulkLookupResult:
        """Look up every distinct IP; `on_batch` is called from this thread as each batch finishes."""
        result = BulkLookupResult()
        to_send: list[str] = []
        seen: set[str] = set()
        for value in ips:
            key = value if isinstance(value, str) else repr(value)
            if key in seen:
                continue
            seen.add(key)
            if canonical_ip(value) != value:
                result.failed[key] = INVALID_IP
            else:
                to_send.append(value)

        chunks = [to_send[start : start + self.batch_size] for start in range(0, len(to_send), self.batch_size)]
        total = len(chunks)
        if not chunks:
            return result
        with ThreadPoolExecutor(max_workers=min(self.max_parallel, total), thread_name_prefix="cymru") as pool:
            futures = [pool.submit(self._run_batch, number, total, chunk) for number, chunk in enumerate(chunks, 1)]
            for future in as_completed(futures):
                outcome, reply = future.result()
                self._merge(result, outcome, reply)
                if on_batch is not None:
                    on_batch(outcome)
        result.batches.sort(key=lambda batch: batch.number)
        return result

    @staticmethod
    def _merge(result: BulkLookupResult, outcome: BatchOutcome, reply: ParsedReply | None) -> None:
        result.batches.append(outcome)
        answers = reply.answers if reply is not None else {}
        if outcome.error is not None:
            log.warning(
                "Cymru batch %d/%d failed: %s (%d IP(s) answered before it)",
                outcome.number,
                outcome.total,
                outcome.error,
                len(answers),
            )
        for ip in outcome.ips:
            answer = answers.get(ip)
            if answer is not None:
                result.answers[ip] = answer
            elif outcome.error is not None:
                result.failed[ip] = f"batch {outcome.number}/{outcome.total}: {outcome.error}"
            else:
                result.failed[ip] = NO_ANSWER
