"""Offline MaxMind lookups against the real bundled GeoLite2-City and ASN databases built in tmp_path.
Also covers the ASN database builder and the demo database it writes for the sample logs."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import geoip2.database
import geoip2.errors
import maxminddb
import pytest

from enrichment_pipeline.core.ips import canonical_ip
from enrichment_pipeline.core.maxmind import (
    DatabaseInfo,
    MaxMindError,
    MaxMindLookup,
    MaxMindRecord,
    default_city_db_path,
    shared_reader,
)
from enrichment_pipeline.standins.asn_database import (
    DEMO_ASN_ORG,
    DEMO_BUILD_EPOCH,
    DEMO_NETWORKS,
    write_asn_database,
    write_demo_asn_database,
)

SAMPLE_LOGS = Path(__file__).resolve().parents[1] / "data" / "sample_logs"
BUNDLED_CITY_BUILD_EPOCH = 1530653216  # 2018-07-03, read from the bundled file's metadata

TEST_NETWORKS = [
    ("10.1.0.0/16", 64501, "NARROW-NET"),
    ("10.0.0.0/8", 64500, "BROAD-NET"),  # given after its subnet on purpose: the subnet must still win
    ("8.8.8.0/24", 15169, "GOOGLE"),
    ("2001:4860::/32", 15169, "GOOGLE"),
    ("2001:db8::/32", 64496, "DOC-V6"),
]


@pytest.fixture
def asn_db(tmp_path: Path) -> str:
    return write_asn_database(tmp_path / "asn.mmdb", TEST_NETWORKS)


@pytest.fixture(scope="module")
def city_only() -> MaxMindLookup:
    return MaxMindLookup(None, None)


# --- City database -------------------------------------------------------------------------------------


def test_default_city_db_is_the_bundled_2018_geolite2_city(city_only: MaxMindLookup) -> None:
    path = default_city_db_path()
    assert path.endswith("GeoLite2-City.mmdb") and os.path.isfile(path)
    expected = DatabaseInfo(os.path.realpath(path), "GeoLite2-City", BUNDLED_CITY_BUILD_EPOCH)
    assert city_only.city_info == expected


def test_public_ipv4_gets_country_and_location_without_city(city_only: MaxMindLookup) -> None:
    assert city_only.lookup("8.8.8.8") == MaxMindRecord(
        ip="8.8.8.8",
        found=True,
        country_code="US",
        country_name="United States",
        city=None,
        latitude=37.751,
        longitude=-97.822,
        accuracy_radius=1000,
        asn=None,
        asn_org=None,
    )


def test_sample_log_ipv4_gets_its_city(city_only: MaxMindLookup) -> None:
    record = city_only.lookup("88.223.26.58")
    assert (record.found, record.country_code, record.country_name, record.city) == (
        True,
        "LT",
        "Republic of Lithuania",
        "Vilnius",
    )
    assert (record.latitude, record.longitude, record.accuracy_radius) == (54.6833, 25.3167, 1000)


def test_ipv6_lookup_finds_city(city_only: MaxMindLookup) -> None:
    record = city_only.lookup("2001:4860:4860::8888")
    assert (record.found, record.country_code, record.city, record.accuracy_radius) == (
        True,
        "US",
        "Mountain View",
        1,
    )
    assert record.latitude == pytest.approx(37.4192) and record.longitude == pytest.approx(-122.0574)


@pytest.mark.parametrize(
    "ip", ["10.0.0.1", "192.168.1.1", "127.0.0.1", "0.0.0.1", "203.0.113.5", "fe80::1", "2001:db8::1"]
)
def test_private_reserved_and_unknown_ips_are_not_found_and_all_none(city_only: MaxMindLookup, ip: str) -> None:
    assert city_only.lookup(ip) == MaxMindRecord(ip, False, None, None, None, None, None, None, None, None)


@pytest.mark.parametrize(
    "value",
    ["::ffff:8.8.8.8", " 8.8.8.8", "8.8.8.8\n", "2001:4860:4860:0::8888", "fe80::1%eth0", "", "8.8.8", "x"],
)
def test_non_canonical_or_invalid_ip_is_a_value_error(city_only: MaxMindLookup, value: str) -> None:
    with pytest.raises(ValueError, match="not a canonical IP"):
        city_only.lookup(value)


def test_lookup_many_keeps_input_order_and_duplicates(city_only: MaxMindLookup) -> None:
    ips = ["8.8.8.8", "10.0.0.1", "88.223.26.58", "8.8.8.8"]
    records = city_only.lookup_many(ip for ip in ips)
    assert [r.ip for r in records] == ips
    assert [r.country_code for r in records] == ["US", None, "LT", "US"]


def test_as_dict_is_json_serialisable_and_round_trips(asn_db: str) -> None:
    record = MaxMindLookup(None, asn_db).lookup("8.8.8.8")
    assert json.loads(json.dumps(record.as_dict())) == {
        "ip": "8.8.8.8",
        "found": True,
        "country_code": "US",
        "country_name": "United States",
        "city": None,
        "latitude": 37.751,
        "longitude": -97.822,
        "accuracy_radius": 1000,
        "asn": 15169,
        "asn_org": "GOOGLE",
    }


# --- ASN database --------------------------------------------------------------------------------------


def test_asn_database_hits_and_misses_for_ipv4_and_ipv6(asn_db: str) -> None:
    lookup = MaxMindLookup(None, asn_db)
    assert lookup.asn_warning is None
    assert lookup.asn_info is not None and lookup.asn_info.database_type == "GeoLite2-ASN"
    ips = ["8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2a03:2880:f003:c07:face:b00c:0:2", "2001:db8::1"]
    by_ip = {r.ip: (r.found, r.asn, r.asn_org) for r in lookup.lookup_many(ips)}
    assert by_ip == {
        "8.8.8.8": (True, 15169, "GOOGLE"),
        "8.8.4.4": (True, None, None),  # outside 8.8.8.0/24
        "2001:4860:4860::8888": (True, 15169, "GOOGLE"),
        "2a03:2880:f003:c07:face:b00c:0:2": (True, None, None),
        "2001:db8::1": (False, 64496, "DOC-V6"),  # ASN is reported even where the City database is silent
    }


def test_more_specific_network_wins_whatever_the_input_order(asn_db: str) -> None:
    lookup = MaxMindLookup(None, asn_db)
    assert (lookup.lookup("10.1.2.3").asn, lookup.lookup("10.2.0.1").asn, lookup.lookup("11.0.0.1").asn) == (
        64501,
        64500,
        None,
    )


def test_built_database_is_readable_by_geoip2_asn_and_by_ipv4_mapped_address(asn_db: str) -> None:
    with geoip2.database.Reader(asn_db) as reader:
        answer = reader.asn("10.1.200.7")
        assert answer.autonomous_system_number == 64501
        assert answer.autonomous_system_organization == "NARROW-NET"
        assert str(answer.network) == "10.1.0.0/16"
        with pytest.raises(geoip2.errors.AddressNotFoundError):
            reader.asn("192.0.2.1")
    with maxminddb.open_database(asn_db) as raw:
        mapped = raw.get("::ffff:10.1.200.7")
    assert mapped == {
        "autonomous_system_number": 64501,
        "autonomous_system_organization": "NARROW-NET",
    }


@pytest.mark.parametrize(
    "network",
    [
        ("10.0.0.1/8", 1, "HOST-BITS"),
        ("10.0.0.0/33", 1, "BAD-LEN"),
        ("10.0.0.0/8", -1, "NEG"),
        ("10.0.0.0/8", 2**32, "HUGE"),
        ("10.0.0.0/8", True, "BOOL"),
        ("::/0", 1, "ALL-V6"),
    ],
)
def test_write_asn_database_rejects_bad_networks_and_leaves_no_file(
    tmp_path: Path, network: tuple[str, int, str]
) -> None:
    with pytest.raises(ValueError):
        write_asn_database(tmp_path / "bad.mmdb", [network])
    assert list(tmp_path.iterdir()) == []


# --- configuration errors and warnings -----------------------------------------------------------------


@pytest.mark.parametrize("asn_path", [None, ""])
def test_unset_asn_database_is_a_warning_and_lookups_lack_asn(asn_path: str | None) -> None:
    lookup = MaxMindLookup("", asn_path)
    assert lookup.asn_warning == "No ASN database: GEOIP_ASN_DB is empty; every IP will lack a MaxMind ASN"
    assert lookup.asn_info is None
    assert (lookup.lookup("8.8.8.8").found, lookup.lookup("8.8.8.8").asn) == (True, None)


def test_missing_asn_file_is_a_warning_naming_the_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "GeoLite2-ASN.mmdb")
    lookup = MaxMindLookup(None, missing)
    assert lookup.asn_warning == (
        f"No ASN database: GEOIP_ASN_DB points to missing file {missing!r}; every IP will lack a MaxMind ASN"
    )
    assert lookup.lookup("8.8.8.8").asn is None


def test_city_database_given_as_asn_database_is_an_error() -> None:
    with pytest.raises(MaxMindError, match=r"GEOIP_ASN_DB=.*GeoLite2-City database, not an ASN database"):
        MaxMindLookup(None, default_city_db_path())


def test_asn_database_given_as_city_database_is_an_error(asn_db: str) -> None:
    with pytest.raises(MaxMindError, match=r"GEOIP_CITY_DB=.*GeoLite2-ASN database, not a City database"):
        MaxMindLookup(asn_db, None)


def test_missing_city_database_is_an_error_naming_path_and_variable(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "GeoLite2-City.mmdb")
    with pytest.raises(MaxMindError) as raised:
        MaxMindLookup(missing, None)
    assert str(raised.value) == f"GEOIP_CITY_DB points to missing file {missing!r}"


@pytest.mark.parametrize("content", [b"", b"not a MaxMind database\n"])
def test_city_file_that_is_not_an_mmdb_is_an_error(tmp_path: Path, content: bytes) -> None:
    bogus = tmp_path / "city.mmdb"
    bogus.write_bytes(content)
    with pytest.raises(MaxMindError, match=rf"GEOIP_CITY_DB='{bogus}' is not a readable MaxMind database"):
        MaxMindLookup(str(bogus), None)


def test_asn_path_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MaxMindError, match="GEOIP_ASN_DB=.* is not a readable MaxMind database"):
        MaxMindLookup(None, str(tmp_path))


# --- reader sharing --------------------------------------------------------------------------------------


def test_readers_are_shared_across_lookups(asn_db: str) -> None:
    first, second = MaxMindLookup(None, asn_db), MaxMindLookup(None, asn_db)
    assert first._city is second._city is shared_reader(default_city_db_path())
    assert first._asn is second._asn is shared_reader(asn_db)


def test_rewritten_database_is_reopened_while_old_lookups_keep_working(tmp_path: Path) -> None:
    path = str(tmp_path / "asn.mmdb")
    write_asn_database(path, [("198.51.100.0/24", 64500, "FIRST")])
    before = MaxMindLookup(None, path)
    write_asn_database(path, [("198.51.100.0/24", 64501, "SECOND-ORG")])
    after = MaxMindLookup(None, path)
    assert after._asn is not before._asn
    assert after._asn is MaxMindLookup(None, path)._asn
    assert (after.lookup("198.51.100.9").asn, after.lookup("198.51.100.9").asn_org) == (64501, "SECOND-ORG")
    # The old file was replaced, not overwritten in place, so its mapping stays valid.
    assert before.lookup("198.51.100.9").asn == 64500


# --- demo database -------------------------------------------------------------------------------------


def _sample_source_ips() -> set[str]:
    ips = set()
    for day in ("2018-05-06", "2018-05-07", "2018-05-08"):
        with open(SAMPLE_LOGS / f"cowrie.json.{day}", "rb") as log:
            for line in log:
                ip = canonical_ip(json.loads(line).get("src_ip"))
                if ip:
                    ips.add(ip)
    return ips


def test_demo_networks_are_every_third_sample_slash16() -> None:
    slash16s = sorted({ipaddress.ip_network(f"{ip}/16", strict=False) for ip in _sample_source_ips()})
    assert len(slash16s) == 49
    assert tuple(str(network) for network in slash16s[::3]) == DEMO_NETWORKS


def test_demo_database_covers_some_sample_ips_with_labelled_private_asns(tmp_path: Path) -> None:
    lookup = MaxMindLookup(None, write_demo_asn_database(tmp_path / "demo-asn.mmdb"))
    assert lookup.asn_info == DatabaseInfo(str(tmp_path / "demo-asn.mmdb"), "GeoLite2-ASN", DEMO_BUILD_EPOCH)
    records = lookup.lookup_many(sorted(_sample_source_ips()))
    covered = [r for r in records if r.asn is not None]
    assert (len(records), len(covered)) == (62, 25)
    assert {r.asn_org for r in covered} == {DEMO_ASN_ORG}
    assert all(64512 <= r.asn <= 64528 for r in covered)
    assert lookup.lookup("5.188.1.2").asn == 64512 and lookup.lookup("88.223.26.58").asn is None


def test_demo_database_has_the_same_bytes_every_run(tmp_path: Path) -> None:
    first = Path(write_demo_asn_database(tmp_path / "a.mmdb")).read_bytes()
    second = Path(write_demo_asn_database(tmp_path / "b.mmdb")).read_bytes()
    assert first == second and len(first) > 1000
