"""`enrichment-pipeline refresh`: re-enrich the N stalest inventory IPs, or named ones, from a shell.
Runs `core.refresh` directly (no Dagster), configured by the same environment variables as the pipeline."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from typing import TextIO

from sqlalchemy import Engine

from enrichment_pipeline.core import freshness
from enrichment_pipeline.core.freshness import FreshnessPolicy, MaxMindBuilds
from enrichment_pipeline.core.geoip import GeoIpError, GeoIpLookup
from enrichment_pipeline.core.greynoise import GreyNoiseAuthError, GreyNoiseClient, GreyNoiseDailyBudget
from enrichment_pipeline.core.inventory import create_schema, fetch_failures, fetch_inventory, make_engine
from enrichment_pipeline.core.ips import canonical_ip
from enrichment_pipeline.core.refresh import (
    ChunkOutcome,
    budgeted_greynoise,
    known_ips,
    plan_chunk,
    refresh,
    select_stalest,
)
from enrichment_pipeline.core.whois import CymruBulkClient
from enrichment_pipeline.settings import setting

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    return args.command(args, out or sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enrichment-pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    refresh_parser = commands.add_parser(
        "refresh",
        help="re-enrich stale or named inventory IPs",
        description="Re-enrich inventory IPs through MaxMind, Team Cymru and (with GREYNOISE_API_KEY) GreyNoise. "
        "--ips asks only the sources whose answers are stale or due for retry; --ip asks every source that "
        "applies to the address. Settings come from the environment (see README).",
    )
    which = refresh_parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--ips", type=_positive, metavar="N", help="the N stalest IPs (due retries first)")
    which.add_argument("--ip", type=_address, action="append", metavar="ADDR", help="this IP (repeatable)")
    refresh_parser.add_argument("--dry-run", action="store_true", help="show which IPs and sources would be asked")
    refresh_parser.add_argument("-v", "--verbose", action="store_true", help="log progress; print every IP's result")
    refresh_parser.set_defaults(command=run_refresh)
    return parser


def run_refresh(args: argparse.Namespace, out: TextIO) -> int:
    try:
        geoip = GeoIpLookup(setting("GEOIP_CITY_DB") or None, setting("GEOIP_ASN_DB") or None)
    except GeoIpError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    policy = FreshnessPolicy.from_days(
        float(setting("MAXMIND_TTL_DAYS")),
        float(setting("CYMRU_TTL_DAYS")),
        float(setting("GREYNOISE_TTL_DAYS")),
        MaxMindBuilds.of(geoip),
    )
    api_key = setting("GREYNOISE_API_KEY").strip()
    engine = make_engine(setting("ENRICHMENT_DB_URL"))
    create_schema(engine)

    if args.ip:
        ips = known_ips(engine, args.ip)
        unknown = [ip for ip in dict.fromkeys(args.ip) if ip not in ips]
        for ip in unknown:
            print(f"{ip}: not in ip_inventory, skipped", file=out)
    else:
        unknown = []
        ips = select_stalest(engine, args.ips, policy, now=freshness.utc_now(), greynoise_enabled=bool(api_key))
    if args.dry_run:
        _print_plan(engine, ips, geoip, policy, greynoise_enabled=bool(api_key), force=bool(args.ip), out=out)
        return EXIT_PROBLEMS if unknown else EXIT_OK

    cymru = CymruBulkClient(
        setting("CYMRU_HOST"),
        int(setting("CYMRU_PORT")),
        timeout_s=float(setting("CYMRU_TIMEOUT_S")),
        batch_size=int(setting("CYMRU_BATCH_SIZE")),
        max_parallel=int(setting("CYMRU_MAX_PARALLEL")),
    )
    greynoise = None
    try:
        lookup_greynoise = None
        if api_key:
            greynoise = GreyNoiseClient(
                setting("GREYNOISE_API_URL"), api_key, rate_per_s=float(setting("GREYNOISE_RATE_PER_S"))
            )
            budget = GreyNoiseDailyBudget(engine, int(setting("GREYNOISE_DAILY_LIMIT")))
            lookup_greynoise = budgeted_greynoise(greynoise, budget)
        report = refresh(
            engine,
            ips,
            geoip=geoip,
            cymru=cymru,
            greynoise=lookup_greynoise,
            policy=policy,
            chunk_size=int(setting("REFRESH_CHUNK_SIZE")),
            force=bool(args.ip),
            on_chunk=lambda chunk: _print_chunk(chunk, out),
        )
    except GreyNoiseAuthError as error:  # its message never carries the key
        print(f"error: {error} (the answers of finished chunks are saved)", file=sys.stderr)
        return EXIT_PROBLEMS
    finally:
        if greynoise is not None:
            greynoise.close()
    counts = report.counts()
    print(", ".join(f"{name} {value}" for name, value in counts.items()), file=out)
    if args.verbose:
        _print_rows(engine, ips, out)
    failed = counts["cymru_failed"] + counts["greynoise_failed"]
    return EXIT_PROBLEMS if unknown or failed else EXIT_OK


def _print_plan(
    engine: Engine,
    ips: list[str],
    geoip: GeoIpLookup,
    policy: FreshnessPolicy,
    *,
    greynoise_enabled: bool,
    force: bool,
    out: TextIO,
) -> None:
    """What a real run would ask: MaxMind is offline, so the plan is exact; nothing goes on the network."""
    print(f"dry run: {len(ips)} IPs; no network, nothing written", file=out)
    chunk_size = int(setting("REFRESH_CHUNK_SIZE"))
    for start in range(0, len(ips), chunk_size):
        plan = plan_chunk(
            engine,
            ips[start : start + chunk_size],
            geoip,
            policy,
            now=freshness.utc_now(),
            greynoise_enabled=greynoise_enabled,
            force=force,
        )
        asked = {"maxmind": set(plan.maxmind_rewritten), "cymru": set(plan.cymru), "greynoise": set(plan.greynoise)}
        for ip in plan.ips:
            sources = [source for source, chosen in asked.items() if ip in chosen]
            print(f"{ip}: {', '.join(sources) if sources else 'all fresh, nothing to ask'}", file=out)


def _print_chunk(chunk: ChunkOutcome, out: TextIO) -> None:
    plan = chunk.plan
    print(
        f"chunk: {len(plan.ips)} IPs; MaxMind rewritten {len(plan.maxmind_rewritten)};"
        f" Cymru asked {len(plan.cymru)}, failed {chunk.cymru_failed};"
        f" GreyNoise asked {len(plan.greynoise)}, failed {chunk.greynoise_failed}; {chunk.seconds:.1f} s",
        file=out,
    )


def _print_rows(engine: Engine, ips: Sequence[str], out: TextIO) -> None:
    """Each IP's inventory row after the refresh, and what is still on the retry list."""
    wanted = set(ips)
    retry = {(row["ip_address"], row["source"]): row["error"] for row in fetch_failures(engine) if row["ip_address"] in wanted}
    for row in fetch_inventory(engine, ips):
        ip = row["ip_address"]
        failed = [f"{source} failed ({retry[ip, source]})" for source in ("cymru", "greynoise") if (ip, source) in retry]
        line = (
            f"{ip}: AS{row['current_asn'] or '?'} {row['asn_org'] or ''} country={row['country_code'] or '--'}"
            f" greynoise={row['greynoise_classification'] or '-'}"
        )
        # Names come from the network: no terminal control sequences reach the operator's screen.
        print(_UNPRINTABLE.sub("?", "; ".join([line, *failed])), file=out)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _address(text: str) -> str:
    ip = canonical_ip(text.strip())
    if ip is None:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}")
    return ip


if __name__ == "__main__":
    sys.exit(main())
