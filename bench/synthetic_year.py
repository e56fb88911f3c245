"""A synthetic year of rotated Cowrie days for the backfill benchmark: each day `ips_per_day` distinct source
IPs drawn from one pool of global unicast IPv4 addresses (seeded), one short SSH session per IP in Cowrie's
event shape (`bench.synthetic_logs`), events of the day in time order.

Usable as a module (`write_year`, `day_ips`) and as a script:
`python -m bench.synthetic_year DIR --first-day 2019-01-01 --days 365 --ips-per-day 1000 --pool 40000`."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.synthetic_logs import _SessionWriter, _write_in_time_order, synthetic_ips

SESSION_LENGTHS = (2, 3, 4)  # connect + closed, with the client version and a failed login in between


def day_path(directory: Path, day: datetime.date) -> Path:
    return directory / f"cowrie.json.{day.isoformat()}"


def year_days(first_day: datetime.date, days: int) -> list[datetime.date]:
    return [first_day + datetime.timedelta(days=offset) for offset in range(days)]


def write_year(
    directory: Path, first_day: datetime.date, days: int, *, ips_per_day: int, pool: int, seed: int = 0
) -> list[Path]:
    """One `cowrie.json.<day>` per day; the same arguments always give the same bytes."""
    rng = random.Random(seed)
    addresses = synthetic_ips(pool, rng, ipv6_share=0.0)  # global unicast IPv4 only
    sessions = _SessionWriter(rng)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for day in year_days(first_day, days):
        events = [sessions.events(ip, rng.choice(SESSION_LENGTHS)) for ip in rng.sample(addresses, ips_per_day)]
        path = day_path(directory, day)
        with open(path, "w", encoding="utf-8") as stream:
            _write_in_time_order(stream, events, day.isoformat())
        paths.append(path)
    return paths


def day_ips(path: Path) -> list[str]:
    """The distinct source IPs of a written day, read back from the file with the stdlib (not the writer)."""
    seen: dict[str, None] = {}
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            seen[ipaddress.ip_address(json.loads(line)["src_ip"]).compressed] = None
    return list(seen)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic year of Cowrie log days (fabricated).")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--first-day", type=datetime.date.fromisoformat, required=True)
    parser.add_argument("--days", type=int, required=True)
    parser.add_argument("--ips-per-day", type=int, required=True)
    parser.add_argument("--pool", type=int, required=True, help="distinct IPs the days draw from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--expected", type=Path, help="also write {day: [distinct IPs]} here, read from the files")
    args = parser.parse_args(argv)
    paths = write_year(
        args.directory, args.first_day, args.days, ips_per_day=args.ips_per_day, pool=args.pool, seed=args.seed
    )
    if args.expected:
        expected = {path.name.removeprefix("cowrie.json."): day_ips(path) for path in paths}
        args.expected.write_text(json.dumps(expected))
    print(f"{args.directory}: {len(paths)} days of {args.ips_per_day} IPs from a pool of {args.pool}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
