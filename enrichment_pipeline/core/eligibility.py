"""Who is asked what: Team Cymru only for IPs MaxMind gave no ASN, GreyNoise only for global IPv4.
Each rule lives here once, in every form its callers need: a stored row, a pass's frame, an SQL condition."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import pandas as pd
from sqlalchemy import ColumnElement, not_

from enrichment_pipeline.core.ips import canonical_ip, is_ipv4
from enrichment_pipeline.core.merge import maxmind_asn

# Why the GreyNoise community API cannot know an IP: it is skipped, never asked and never retried.
SKIP_IPV6 = "IPv6: the community API is IPv4-only"
SKIP_NOT_GLOBAL = "not a global address"
SKIP_NOT_IP = "not an IP address"


# --- Cymru: the fallback for IPs without a MaxMind ASN ---------------------------------------------------


def needs_cymru(enrichment: Mapping[str, Any]) -> bool:
    """For a stored enrichment object: Cymru is asked (and a failed Cymru lookup retried) only while
    MaxMind has no ASN."""
    return maxmind_asn(enrichment) is None


def needs_cymru_in_frame(maxmind: pd.DataFrame) -> pd.Series:
    """For a `maxmind_results` frame (whose `asn` column MaxMindRecord already validated): a boolean mask."""
    return maxmind["asn"].isna()


def needs_cymru_sql(enrichment: Any) -> ColumnElement[bool]:
    """For the `ip_inventory.enrichment` JSON column: the stored MaxMind answer has no ASN (missing or null)."""
    return enrichment[("maxmind", "asn")].as_string().is_(None)


# --- GreyNoise: global IPv4 only -------------------------------------------------------------------------


def greynoise_skip_reason(ip: str) -> str | None:
    """Why the community API cannot know `ip` (IPv6, private, reserved...), or None if it can be asked."""
    if not isinstance(ip, str) or canonical_ip(ip) != ip:
        return SKIP_NOT_IP
    if not is_ipv4(ip):
        return SKIP_IPV6
    address = ipaddress.IPv4Address(ip)
    if not address.is_global or address.is_multicast:
        return SKIP_NOT_GLOBAL
    return None


def greynoise_askable(ip: str) -> bool:
    return greynoise_skip_reason(ip) is None


def greynoise_candidates_sql(ip_address: Any) -> ColumnElement[bool]:
    """The part of `greynoise_askable` SQL can state cheaply (IPv4: no colon); callers apply
    `greynoise_askable` to the rows it returns."""
    return not_(ip_address.contains(":"))
