"""The IP gate: only exact IPv4/IPv6 addresses pass, in canonical form, so nothing can smuggle a line."""

import pytest

from enrichment_pipeline.core.ips import canonical_ip, is_ipv4


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("0.0.0.0", "0.0.0.0"),
        ("255.255.255.255", "255.255.255.255"),
        ("::ffff:1.2.3.4", "1.2.3.4"),  # dual-stack listeners log IPv4 this way: one host, one row
        ("2001:0DB8::0001", "2001:db8::1"),
        ("::1", "::1"),
    ],
)
def test_valid_addresses_come_back_canonical(value, expected):
    assert canonical_ip(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "1.2.3.4\nend\nbegin\n8.8.8.8",
        "1.2.3.4\n",
        " 1.2.3.4",
        "1.2.3.4\x00",
        "01.2.3.4",
        "1.2.3.04",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "fe80::1%eth0",
        "",
        "x" * 100,
        "'); DROP TABLE ip_inventory;--",
        None,
        16909060,
        b"1.2.3.4",
    ],
)
def test_anything_else_is_rejected(value):
    assert canonical_ip(value) is None


def test_is_ipv4_tells_the_families_apart():
    assert is_ipv4("1.2.3.4") and not is_ipv4("2001:db8::1")
