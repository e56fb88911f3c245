"""Small GeoLite2-ASN-shaped mmdb files, standing in for MaxMind's licensed ASN database in demos and tests.
Owns the file format details (record shape, IPv4 inside an IPv6 tree) and the labelled demo database."""

from __future__ import annotations

import ipaddress
import os
import tempfile
import time
from collections.abc import Iterable
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

ASN_DATABASE_TYPE = "GeoLite2-ASN"
DEMO_ASN_ORG = "DEMO-ASN (synthetic, not MaxMind data)"
# Dated like the bundled GeoLite2-City (2018-07-03) so a demo run treats both databases as equally fresh.
DEMO_BUILD_EPOCH = 1530653216
# Private-use ASNs (RFC 6996): a demo ASN can never be mistaken for a real one.
DEMO_FIRST_ASN = 64512
# Every third /16, in numeric order starting with the first, of the distinct source IPs' /16s in
# data/sample_logs/cowrie.json.2018-05-06..08 (17 of 49). Kept literal so the demo does not depend on
# where the sample logs live; a test recomputes the rule from the logs.
DEMO_NETWORKS = (
    "5.188.0.0/16",
    "14.231.0.0/16",
    "42.7.0.0/16",
    "59.63.0.0/16",
    "62.152.0.0/16",
    "89.107.0.0/16",
    "103.207.0.0/16",
    "113.172.0.0/16",
    "114.72.0.0/16",
    "117.131.0.0/16",
    "122.224.0.0/16",
    "137.74.0.0/16",
    "185.222.0.0/16",
    "196.52.0.0/16",
    "201.83.0.0/16",
    "202.151.0.0/16",
    "221.194.0.0/16",
)
_MAX_ASN = 2**32 - 1


class _DatedWriter(MMDBWriter):
    """MMDBWriter with a chosen build_epoch (the stock one stamps the current time)."""

    def __init__(self, build_epoch: int, **options: Any) -> None:
        super().__init__(**options)
        self._build_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        return {**super()._build_meta(), "build_epoch": self._build_epoch}


def write_asn_database(
    path: str | os.PathLike[str],
    networks: Iterable[tuple[str, int, str]],
    *,
    build_epoch: int | None = None,
) -> str:
    """Write an mmdb of (cidr, asn, org) networks that geoip2's `Reader.asn` reads; return its path.

    IPv4 networks land where readers look for IPv4 in an IPv6 tree (::a.b.c.d) and, as in MaxMind's own
    files, under ::ffff:a.b.c.d too. Where networks overlap the more specific wins. Bad input (a cidr
    with host bits set, an ASN outside uint32) is a ValueError. The file is replaced atomically, so
    readers that still map the old file keep working. `build_epoch` defaults to now.
    """
    placed = [
        (tree_network, record)
        for cidr, asn, org in networks
        for tree_network, record in _placed_entries(cidr, asn, org)
    ]
    writer = _DatedWriter(
        int(time.time()) if build_epoch is None else build_epoch,
        ip_version=6,
        database_type=ASN_DATABASE_TYPE,
        languages=["en"],
        description="Synthetic GeoLite2-ASN-shaped database (not MaxMind data)",
        int_type="u32",  # MaxMind stores autonomous_system_number as uint32
    )
    # The writer lets a later, shorter prefix overwrite an earlier, longer one: insert broadest first
    # (a stable sort, so among equal networks the last given wins).
    for tree_network, record in sorted(placed, key=lambda entry: entry[0].prefixlen):
        writer.insert_network(IPSet([str(tree_network)]), record)
    return _replace_atomically(os.fspath(path), writer)


def write_demo_asn_database(path: str | os.PathLike[str]) -> str:
    """Write the labelled demo ASN database (DEMO_NETWORKS, private-use ASNs); same bytes every run."""
    networks = [(cidr, DEMO_FIRST_ASN + index, DEMO_ASN_ORG) for index, cidr in enumerate(DEMO_NETWORKS)]
    return write_asn_database(path, networks, build_epoch=DEMO_BUILD_EPOCH)


def _placed_entries(cidr: str, asn: int, org: str) -> list[tuple[ipaddress.IPv6Network, dict[str, Any]]]:
    """The validated record and where it goes in the IPv6 tree: IPv4 twice, IPv6 once."""
    network = ipaddress.ip_network(cidr)  # strict: host bits set is a ValueError, not a silent widening
    if isinstance(asn, bool) or not isinstance(asn, int) or not 0 <= asn <= _MAX_ASN:
        raise ValueError(f"ASN for {cidr} must be an integer in 0..{_MAX_ASN}, got {asn!r}")
    if not isinstance(org, str):
        raise ValueError(f"organisation for {cidr} must be a string, got {org!r}")
    record: dict[str, Any] = {"autonomous_system_number": asn, "autonomous_system_organization": org}
    if isinstance(network, ipaddress.IPv6Network):
        if network.prefixlen == 0:
            raise ValueError("::/0 cannot be written (mmdb_writer limitation): give ::/1 and 8000::/1")
        return [(network, record)]
    # ::a.b.c.d is where readers look IPv4 up; ::ffff:a.b.c.d is what IPv4-mapped lookups reach.
    prefixlen = 96 + network.prefixlen
    return [
        (ipaddress.IPv6Network(f"::{network.network_address}/{prefixlen}"), record),
        (ipaddress.IPv6Network(f"::ffff:{network.network_address}/{prefixlen}"), record),
    ]


def _replace_atomically(path: str, writer: MMDBWriter) -> str:
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".mmdb.tmp")
    os.close(handle)
    try:
        writer.to_db_file(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path
