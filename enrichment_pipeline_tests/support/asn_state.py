"""Helpers for the ASN inventory tests: the stored `asn_inventory` against its recomputation from the
inventory (`asns.recompute_asn_rows`, the function the upserts use), and each IP's ASN history."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from enrichment_pipeline.core.inventory import ASN_HISTORY, ASN_INVENTORY, recompute_asn_rows


def stored_asn_rows(engine: Engine) -> dict[int, dict[str, Any]]:
    """`asn_inventory` by ASN, without `updated_at` (when a row was written is not part of its value)."""
    with engine.connect() as conn:
        rows = conn.execute(select(ASN_INVENTORY)).mappings()
        return {row["asn"]: {k: v for k, v in row.items() if k != "updated_at"} for row in rows}


def recomputed_asn_rows(engine: Engine) -> dict[int, dict[str, Any]]:
    """What a full recomputation from `ip_inventory` + `ip_daily_activity` gives, by ASN."""
    with engine.connect() as conn:
        return recompute_asn_rows(conn)


def assert_asn_inventory_exact(engine: Engine) -> dict[int, dict[str, Any]]:
    """The stored ASN inventory equals a full recomputation; returns it."""
    stored = stored_asn_rows(engine)
    assert stored == recomputed_asn_rows(engine)
    return stored


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
