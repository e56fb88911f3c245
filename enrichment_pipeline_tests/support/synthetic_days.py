"""Synthetic Cowrie log days for the reliability tests, what the inventory must hold after them (stdlib json,
computed from the files, never from the writer), and whole-database snapshots to compare runs with."""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from enrichment_pipeline.core.inventory import Base

UTC = datetime.UTC
Line = dict | str | bytes


def event(src_ip: object, session: str, moment: datetime.datetime, **extra: object) -> dict:
    """One Cowrie-shaped event (the fields the pipeline reads plus a few realistic ones)."""
    return {
        "eventid": "cowrie.session.connect",
        "src_ip": src_ip,
        "src_port": 40000,
        "dst_ip": "10.0.0.5",
        "dst_port": 22,
        "session": session,
        "sensor": "honeypot-1",
        "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        **extra,
    }


def day_file(log_dir: Path, day: datetime.date, *, gz: bool = False) -> Path:
    return log_dir / f"cowrie.json.{day.isoformat()}{'.gz' if gz else ''}"


def write_day(log_dir: Path, day: datetime.date, lines: Iterable[Line], *, gz: bool = False) -> Path:
    """Write one rotated day: dicts become JSON lines, str/bytes are written as they are (add your newline)."""
    payload = b"".join(_encoded(line) for line in lines)
    path = day_file(log_dir, day, gz=gz)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as target:
            target.write(payload)
    else:
        path.write_bytes(payload)
    return path


def _encoded(line: Line) -> bytes:
    if isinstance(line, dict):
        return json.dumps(line).encode() + b"\n"
    return line.encode() if isinstance(line, str) else line


def public_ips(count: int, *, seed: int = 0) -> list[str]:
    """`count` distinct global IPv4 addresses (no private, reserved or documentation ranges)."""
    rng = random.Random(seed)
    chosen: dict[str, None] = {}
    while len(chosen) < count:
        address = ipaddress.IPv4Address(rng.randrange(1 << 24, 223 << 24))
        if address.is_global:
            chosen[str(address)] = None
    return list(chosen)


def write_overlapping_days(
    log_dir: Path, days: Sequence[datetime.date], pool: Sequence[str], *, ips_per_day: int, seed: int = 0
) -> list[Path]:
    """One file per day, each with `ips_per_day` IPs drawn from `pool`, 1-3 sessions of 1-4 events each,
    at random times within the day, lines shuffled so file order is not time order."""
    rng = random.Random(seed)
    paths = []
    for day in days:
        start = datetime.datetime.combine(day, datetime.time(), UTC)
        lines = []
        for ip in rng.sample(list(pool), ips_per_day):
            for _ in range(rng.randint(1, 3)):
                session = f"{rng.getrandbits(48):012x}"
                for _ in range(rng.randint(1, 4)):
                    moment = start + datetime.timedelta(microseconds=rng.randrange(86_400_000_000))
                    lines.append(event(ip, session, moment))
        rng.shuffle(lines)
        paths.append(write_day(log_dir, day, lines))
    return paths


def write_many_ips_day(log_dir: Path, day: datetime.date, ips: Sequence[str]) -> Path:
    """A day with one single-event session per IP: cheap to read, as many inventory rows as IPs."""
    start = datetime.datetime.combine(day, datetime.time(), UTC)
    events = (event(ip, f"s{n:08x}", start + datetime.timedelta(seconds=n % 86_400)) for n, ip in enumerate(ips))
    return write_day(log_dir, day, events)


@dataclass(frozen=True)
class ExpectedIp:
    session_count: int
    first_seen: datetime.datetime
    last_seen: datetime.datetime


def expected_inventory(paths: Iterable[Path]) -> dict[str, ExpectedIp]:
    """What ip_inventory must hold after these (clean, plain) day files: sessions summed over days (distinct
    per day), first_seen = min and last_seen = max timestamp over all days."""
    sessions: dict[str, int] = {}
    moments: dict[str, list[datetime.datetime]] = {}
    for path in paths:
        day_sessions: dict[str, set[str]] = {}
        for text in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(text)
            ip = ipaddress.ip_address(record["src_ip"]).compressed
            day_sessions.setdefault(ip, set()).add(record["session"])
            moments.setdefault(ip, []).append(datetime.datetime.fromisoformat(record["timestamp"]).astimezone(UTC))
        for ip, ids in day_sessions.items():
            sessions[ip] = sessions.get(ip, 0) + len(ids)
    return {ip: ExpectedIp(sessions[ip], min(moments[ip]), max(moments[ip])) for ip in sessions}


def database_state(engine: Engine, *, volatile: bool = True) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every pipeline table, sorted. Without `volatile`, columns named `*_at` (when a lookup ran
    or failed) are left out, so two databases built at different times can be compared."""
    state: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            columns = [column for column in table.columns if volatile or not column.name.endswith("_at")]
            rows = conn.execute(select(*columns)).all()
            state[table.name] = sorted((tuple(row) for row in rows), key=repr)
    return state
