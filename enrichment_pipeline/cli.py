"""`enrichment-pipeline`: `refresh` re-enriches the N stalest inventory IPs, or named ones, from a shell;
`show`, `asns` and `export` are the analyst's views (`enrichment_pipeline.commands`, one module each).
Runs `core` directly (no Dagster), configured by the same environment variables as the pipeline."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from sqlalchemy import Engine

from enrichment_pipeline.commands import asns as asns_command
from enrichment_pipeline.commands import export as export_command
from enrichment_pipeline.commands import show as show_command
from enrichment_pipeline.commands.common import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE
from enrichment_pipeline.commands.common import address as _address
from enrichment_pipeline.commands.common import positive as _positive
from enrichment_pipeline.core import freshness
from enrichment_pipeline.core.cymru import CymruBulkClient
from enrichment_pipeline.core.freshness import FreshnessPolicy, MaxMindBuilds
from enrichment_pipeline.core.greynoise import GreyNoiseAuthError
from enrichment_pipeline.core.inventory import fetch_failures, fetch_inventory
from enrichment_pipeline.core.maxmind import MaxMindError, MaxMindLookup
from enrichment_pipeline.core.reenrich import (
    ChunkOutcome,
    budgeted_greynoise,
    known_ips,
    plan_chunk,
    refresh,
    select_stalest,
)
from enrichment_pipeline.resources import GreyNoiseResource, build_resources
from enrichment_pipeline.settings import setting

__all__ = ["EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "build_parser", "main"]
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.command(args, out or sys.stdout)
    except BrokenPipeError:  # `export ... | head`: the reader left, which is no error of the command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OK


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
    for command in (show_command, asns_command, export_command):
        command.add_parser(commands)
    return parser


@dataclass
class _Setup:
    """What a refresh needs, built from the same settings and resources as the Dagster jobs."""

    engine: Engine
    maxmind: MaxMindLookup
    policy: FreshnessPolicy
    cymru: CymruBulkClient
    greynoise: GreyNoiseResource
    chunk_size: int


def run_refresh(args: argparse.Namespace, out: TextIO) -> int:
    try:
        setup = _set_up()
    except (MaxMindError, ValueError) as error:  # bad configuration: a usage error, nothing was asked
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    ips, unknown = _chosen_ips(setup, args, out)
    if args.dry_run:
        _print_plan(setup, ips, force=bool(args.ip), out=out)
        return EXIT_PROBLEMS if unknown else EXIT_OK
    try:
        counts = _refresh(setup, ips, force=bool(args.ip), out=out)
    except GreyNoiseAuthError as error:  # its message never carries the key
        print(f"error: {error} (the answers of finished chunks are saved)", file=sys.stderr)
        return EXIT_PROBLEMS
    print(", ".join(f"{name} {value}" for name, value in counts.items()), file=out)
    if args.verbose:
        _print_rows(setup.engine, ips, out)
    failed = counts["cymru_failed"] + counts["greynoise_failed"]
    return EXIT_PROBLEMS if unknown or failed else EXIT_OK


def _set_up() -> _Setup:
    """The resources of the Definitions with their values resolved; their clients enforce the same limits."""
    resources = build_resources(resolved=True)
    maxmind = resources["maxmind"].lookup()
    return _Setup(
        engine=resources["inventory"].engine(),
        maxmind=maxmind,
        policy=resources["freshness"].policy(MaxMindBuilds.of(maxmind)),
        cymru=resources["cymru"].build_client(),
        greynoise=resources["greynoise"],
        chunk_size=int(setting("REFRESH_CHUNK_SIZE")),
    )


def _chosen_ips(setup: _Setup, args: argparse.Namespace, out: TextIO) -> tuple[list[str], list[str]]:
    """The IPs to refresh (named ones that are in the inventory, or the N stalest) and the unknown named ones."""
    if not args.ip:
        now = freshness.utc_now()
        enabled = setup.greynoise.enabled
        return select_stalest(setup.engine, args.ips, setup.policy, now=now, greynoise_enabled=enabled), []
    ips = known_ips(setup.engine, args.ip)
    unknown = [ip for ip in dict.fromkeys(args.ip) if ip not in ips]
    for ip in unknown:
        print(f"{ip}: not in ip_inventory, skipped", file=out)
    return ips, unknown


def _refresh(setup: _Setup, ips: list[str], *, force: bool, out: TextIO) -> dict[str, int]:
    client = setup.greynoise.client() if setup.greynoise.enabled else None
    try:
        lookup_greynoise = None
        if client is not None:
            lookup_greynoise = budgeted_greynoise(client, setup.greynoise.daily_budget(setup.engine))
        report = refresh(
            setup.engine,
            ips,
            maxmind=setup.maxmind,
            cymru=setup.cymru,
            greynoise=lookup_greynoise,
            policy=setup.policy,
            chunk_size=setup.chunk_size,
            force=force,
            on_chunk=lambda chunk: _print_chunk(chunk, out),
        )
    finally:
        if client is not None:
            client.close()
    return report.counts()


def _print_plan(setup: _Setup, ips: list[str], *, force: bool, out: TextIO) -> None:
    """What a real run would ask: MaxMind is offline, so the plan is exact; nothing goes on the network."""
    print(f"dry run: {len(ips)} IPs; no network, nothing written", file=out)
    for start in range(0, len(ips), setup.chunk_size):
        plan = plan_chunk(
            setup.engine,
            ips[start : start + setup.chunk_size],
            setup.maxmind,
            setup.policy,
            now=freshness.utc_now(),
            greynoise_enabled=setup.greynoise.enabled,
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
    retry = {
        (row["ip_address"], row["source"]): row["error"]
        for row in fetch_failures(engine)
        if row["ip_address"] in wanted
    }
    for row in fetch_inventory(engine, ips):
        ip = row["ip_address"]
        failed = [
            f"{source} failed ({retry[ip, source]})" for source in ("cymru", "greynoise") if (ip, source) in retry
        ]
        line = (
            f"{ip}: AS{row['current_asn'] or '?'} {row['asn_org'] or ''} country={row['country_code'] or '--'}"
            f" greynoise={row['greynoise_classification'] or '-'}"
        )
        # Names come from the network: no terminal control sequences reach the operator's screen.
        print(_UNPRINTABLE.sub("?", "; ".join([line, *failed])), file=out)


if __name__ == "__main__":
    sys.exit(main())
