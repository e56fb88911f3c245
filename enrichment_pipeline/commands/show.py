"""`enrichment-pipeline show ADDR...`: everything the inventory knows about each IP -- its row, each source's
answer and when it was stored, its activity per day, its ASN history and its retry-list entries. Readable
text (network-supplied names escaped) or `--json`. Exit 1 if an address is not in the inventory."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from enrichment_pipeline.commands.common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    address,
    inventory_engine,
    json_text,
    printable,
    when,
)
from enrichment_pipeline.core.inventory import ip_records


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "show",
        help="everything known about IPs",
        description="Show each IP's inventory row, per-source answers with their timestamps, activity per day, "
        "ASN history and retry-list state. IPv6 and IPv4-mapped addresses are accepted.",
    )
    parser.add_argument("addresses", nargs="+", type=address, metavar="ADDR", help="an IPv4 or IPv6 address")
    parser.add_argument("--json", action="store_true", help="one JSON document (a list, one object per address)")
    parser.set_defaults(command=run_show)


def run_show(args: argparse.Namespace, out: TextIO) -> int:
    ips = list(dict.fromkeys(args.addresses))
    records = ip_records(inventory_engine(), ips)
    unknown = [ip for ip in ips if ip not in records]
    if args.json:
        document = [{"found": True, **records[ip]} if ip in records else {"ip": ip, "found": False} for ip in ips]
        print(json_text(document, indent=True), file=out)
    else:
        for ip in ips:
            lines = _text(records[ip]) if ip in records else [f"{ip}: not in the inventory"]
            print("\n".join(lines), file=out)
    return EXIT_PROBLEMS if unknown else EXIT_OK


def _text(record: dict[str, Any]) -> list[str]:
    row = record["inventory"]
    asn = f"AS{row['current_asn']} {printable(row['asn_org'])}".rstrip() if row["current_asn"] else "unknown"
    greynoise = printable(row["greynoise_classification"]) or "-"
    flags = ", ".join(f"{name}: {_yes_no(row[f'greynoise_{name}'])}" for name in ("noise", "riot"))
    lines = [
        record["ip"],
        f"  ASN           {asn}",
        f"  country       {printable(row['country_code']) or '-'}",
        f"  seen          {when(row['first_seen'])} .. {when(row['last_seen'])}",
        f"  totals        {row['session_count']} sessions, {row['event_count']} events",
        f"  GreyNoise     {greynoise} ({flags})",
        "  answers",
    ]
    for source, answer in record["sources"].items():
        if answer["answer"] is None:
            lines.append(f"    {source:<11} none stored")
        else:
            answer_text = printable(json_text(answer["answer"]), backslash=False)  # JSON escapes its own
            lines.append(f"    {source:<11} stored {when(answer['updated_at'])}: {answer_text}")
    lines.append(f"  activity      {len(record['activity'])} day(s)")
    for day in record["activity"]:
        lines.append(
            f"    {day['day'].isoformat()}  {day['session_count']} sessions, {day['event_count']} events,"
            f" {when(day['first_seen'])} .. {when(day['last_seen'])}"
        )
    history = record["asn_history"]
    lines.append(f"  ASN history   {len(history)} ASN(s)" + (f", {len(history) - 1} change(s)" if history else ""))
    for entry in history:
        mark = "  (changed)" if entry["seq"] > 1 else ""
        lines.append(
            f"    AS{entry['asn']} {printable(entry['asn_org'])} [{entry['source']}]"
            f" {when(entry['first_observed_at'])} .. {when(entry['last_observed_at'])}{mark}"
        )
    retry = record["retry_list"]
    lines.append(f"  retry list    {'none' if not retry else f'{len(retry)} failed source(s)'}")
    for entry in retry:
        lines.append(
            f"    {entry['source']}: {entry['attempts']} attempt(s), last failed {when(entry['last_failed_at'])},"
            f" next retry {when(entry['next_retry_at'])}: {printable(entry['error'])}"
        )
    return lines


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"
