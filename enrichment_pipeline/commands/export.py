"""`enrichment-pipeline export --format csv|jsonl`: the inventory's IPs (one row each: ASN, organisation,
country, first/last seen, totals, GreyNoise verdict), filtered, streamed from the database to stdout or a
file, so a million rows take the memory of a few thousand. Filters combine with AND across kinds and OR
within a repeated kind."""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

from enrichment_pipeline.commands.common import (
    EXIT_OK,
    EXIT_USAGE,
    asn,
    country,
    day,
    inventory_engine,
)
from enrichment_pipeline.core.inventory import EXPORT_COLUMNS, ExportFilters, export_rows
from enrichment_pipeline.core.inventory.analyst import CLASSIFICATIONS

FORMATS = ("csv", "jsonl")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "export",
        help="export the inventory's IPs as CSV or JSON lines",
        description="Export one row per IP: "
        + ", ".join(EXPORT_COLUMNS)
        + " (counts are totals over every day). Repeat a filter for OR; different filters combine with AND.",
    )
    parser.add_argument("--format", choices=FORMATS, required=True, help="csv (with a header) or jsonl")
    parser.add_argument("--since", type=day, metavar="DATE", help="IPs active on DATE (UTC) or later")
    parser.add_argument("--until", type=day, metavar="DATE", help="IPs active on DATE (UTC) or earlier")
    parser.add_argument("--asn", type=asn, action="append", default=[], metavar="N", help="current ASN N")
    parser.add_argument("--country", type=country, action="append", default=[], metavar="CC", help="country CC")
    parser.add_argument(
        "--classification", choices=CLASSIFICATIONS, action="append", default=[], help="GreyNoise's verdict"
    )
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write to FILE (default: stdout)")
    parser.set_defaults(command=run_export)


def run_export(args: argparse.Namespace, out: TextIO) -> int:
    if args.since and args.until and args.since > args.until:
        print(f"error: --since {args.since} is after --until {args.until}", file=sys.stderr)
        return EXIT_USAGE
    filters = ExportFilters(
        since=args.since,
        until=args.until,
        asns=tuple(args.asn),
        countries=tuple(args.country),
        classifications=tuple(args.classification),
    )
    rows = export_rows(inventory_engine(), filters)
    if args.output is None:
        count = write(rows, args.format, out)
        print(f"exported {count} IPs", file=sys.stderr)
        return EXIT_OK
    target = args.output
    if not target.parent.is_dir():
        print(f"error: no directory {str(target.parent)!r} for --output", file=sys.stderr)
        return EXIT_USAGE
    # Written beside the target and renamed when complete: a failed export leaves no half file behind.
    handle, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        with open(handle, "w", encoding="utf-8", newline="") as file:
            count = write(rows, args.format, file)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    print(f"exported {count} IPs to {target}", file=sys.stderr)
    return EXIT_OK


def write(rows: Iterable[tuple[Any, ...]], format_: str, out: TextIO) -> int:
    """Write `rows` (tuples of EXPORT_COLUMNS) as CSV with a header or as JSON lines; return how many."""
    count = 0
    if format_ == "csv":
        writer = csv.writer(out)  # quotes any value holding a comma, a quote or a line break
        writer.writerow(EXPORT_COLUMNS)
        for row in rows:
            writer.writerow([_csv_value(value) for value in row])
            count += 1
        return count
    for row in rows:
        out.write(orjson.dumps(dict(zip(EXPORT_COLUMNS, row, strict=True))).decode())
        out.write("\n")
        count += 1
    return count


# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection"); organisation
# names come from the network (whois, GreyNoise), so such a text cell gets a leading ' and stays text.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value
