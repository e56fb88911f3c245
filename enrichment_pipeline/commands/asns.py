"""`enrichment-pipeline asns`: the ASN inventory, most IPs (or sessions) first, as a table or `--json`;
`--since DAY` keeps the ASNs seen on that day or later, `--rebuild` first recomputes every row."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from enrichment_pipeline.commands.common import (
    EXIT_OK,
    day,
    inventory_engine,
    json_text,
    positive,
    printable,
    when,
)
from enrichment_pipeline.core.inventory import list_asns, rebuild_asn_inventory
from enrichment_pipeline.core.inventory.analyst import ASN_ORDERS

DEFAULT_TOP = 20
_COLUMNS = ("asn", "ips", "sessions", "events", "first_seen", "last_seen", "cc", "registry", "org")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "asns",
        help="the ASN inventory, biggest first",
        description="List asn_inventory: one row per ASN of the inventory's IPs, with its organisation, country "
        "and registry (the most common among its IPs), activity and counts.",
    )
    parser.add_argument("--top", type=positive, default=DEFAULT_TOP, metavar="N", help="at most N ASNs (20)")
    parser.add_argument("--since", type=day, metavar="DATE", help="only ASNs last seen on DATE (UTC) or later")
    parser.add_argument("--by", choices=sorted(ASN_ORDERS), default="ips", help="order by IPs (default) or sessions")
    parser.add_argument("--json", action="store_true", help="a JSON list of rows")
    parser.add_argument("--rebuild", action="store_true", help="recompute every row from the inventory first")
    parser.set_defaults(command=run_asns)


def run_asns(args: argparse.Namespace, out: TextIO) -> int:
    engine = inventory_engine()
    if args.rebuild:
        written = rebuild_asn_inventory(engine)
        print(f"asn_inventory rebuilt: {written} row(s) rewritten or deleted", file=out)
    rows = list_asns(engine, by=args.by, since=args.since, top=args.top)
    if args.json:
        print(json_text(rows, indent=True), file=out)
        return EXIT_OK
    table = [_COLUMNS] + [
        (
            f"AS{row['asn']}",
            str(row["ip_count"]),
            str(row["session_count"]),
            str(row["event_count"]),
            when(row["first_seen"]),
            when(row["last_seen"]),
            printable(row["country_code"]) or "-",
            printable(row["registry"]) or "-",
            printable(row["asn_org"]),
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(len(_COLUMNS) - 1)]
    for line in table:
        cells = [
            cell.rjust(width) if 0 < n < 4 else cell.ljust(width)  # the counts right-aligned
            for n, (cell, width) in enumerate(zip(line[:-1], widths, strict=True))
        ]
        print("  ".join([*cells, line[-1]]).rstrip(), file=out)
    return EXIT_OK
