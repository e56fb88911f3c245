"""Helpers for the ASN inventory tests: the stored `asn_inventory` against its recomputation from the
inventory (`asns.recompute_asn_rows`, the function the upserts use), the inventory's per-IP totals against
their days (which that recomputation sums), and each IP's ASN history."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from enrichment_pipeline.core.inventory import (
    ASN_HISTORY,
    ASN_INVENTORY,
    DAILY_ACTIVITY,
    INVENTORY,
    recompute_asn_rows,
)


def stored_asn_rows(engine: Engine) -> dict[int, dict[str, Any]]:
    """`asn_inventory` by ASN, without `updated_at` (when a row was written is not part of its value)."""
    with engine.connect() as conn:
        rows = conn.execute(select(ASN_INVENTORY)).mappings()
        return {row["asn"]: {k: v for k, v in row.items() if k != "updated_at"} for row in rows}


def recomputed_asn_rows(engine: Engine) -> dict[int, dict[str, Any]]:
    """What a full recomputation from `ip_inventory` gives, by ASN."""
    with engine.connect() as conn:
        return recompute_asn_rows(conn)


def assert_asn_inventory_exact(engine: Engine) -> dict[int, dict[str, Any]]:
    """The stored ASN inventory equals a full recomputation, from per-IP totals that equal their days;
    returns it."""
    assert_inventory_totals_exact(engine)
    stored = stored_asn_rows(engine)
    assert stored == recomputed_asn_rows(engine)
    return stored


def assert_inventory_totals_exact(engine: Engine) -> None:
    """Each inventory IP's sessions, events, first and last seen are SUM / MIN / MAX over its
    `ip_daily_activity` rows (0 / None without any), as computed here in one query of their own."""
    inv, daily = INVENTORY.c, DAILY_ACTIVITY.c
    totals = (
        select(
            inv.ip_address,
            func.coalesce(func.sum(daily.session_count), 0),
            func.coalesce(func.sum(daily.event_count), 0),
            func.min(daily.first_seen),
            func.max(daily.last_seen),
        )
        .select_from(INVENTORY.outerjoin(DAILY_ACTIVITY, daily.ip_address == inv.ip_address))
        .group_by(inv.ip_address)
    )
    stored = select(inv.ip_address, inv.session_count, inv.event_count, inv.first_seen, inv.last_seen)
    with engine.connect() as conn:
        from_days = {row[0]: tuple(row[1:]) for row in conn.execute(totals)}
        kept = {row[0]: tuple(row[1:]) for row in conn.execute(stored)}
    assert kept == from_days


def history(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """`ip_asn_history` by IP, each IP's rows in order (seq 1 first)."""
    by_ip: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        query = select(ASN_HISTORY).order_by(ASN_HISTORY.c.ip_address, ASN_HISTORY.c.seq)
        for row in conn.execute(query).mappings():
            by_ip.setdefault(row["ip_address"], []).append({k: v for k, v in row.items() if k != "ip_address"})
    return by_ip


def asns_in_history(engine: Engine) -> dict[str, list[int]]:
    """Each IP's ASNs in order, e.g. {"1.2.3.4": [64500, 64501]}."""
    return {ip: [row["asn"] for row in rows] for ip, rows in history(engine).items()}
