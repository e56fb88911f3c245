"""Offline MaxMind lookups: a City database (location) plus an optional ASN database, one shared reader each.
Owns opening and sanity-checking the mmdb files and flattening their records into `MaxMindRecord` values."""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import geoip2.database
import maxminddb
from geoip2.errors import AddressNotFoundError

from enrichment_pipeline.core.ips import canonical_ip

CITY_DB_ENV = "GEOIP_CITY_DB"
ASN_DB_ENV = "GEOIP_ASN_DB"


class MaxMindError(Exception):
    """A MaxMind database is misconfigured (missing, unreadable or of the wrong type)."""


@dataclass(frozen=True, slots=True)
class MaxMindRecord:
    """What the City and ASN databases say about one IP; `found` is about the City database only."""

    ip: str
    found: bool
    country_code: str | None = None
    country_name: str | None = None
    city: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    accuracy_radius: int | None = None
    asn: int | None = None
    asn_org: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready plain dict (the inventory's enrichment["maxmind"])."""
        return {
            "ip": self.ip,
            "found": self.found,
            "country_code": self.country_code,
            "country_name": self.country_name,
            "city": self.city,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "accuracy_radius": self.accuracy_radius,
            "asn": self.asn,
            "asn_org": self.asn_org,
        }


@dataclass(frozen=True)
class DatabaseInfo:
    """Identity of an opened mmdb file, from its metadata (freshness checks use `build_epoch`)."""

    path: str
    database_type: str
    build_epoch: int


def default_city_db_path() -> str:
    """The GeoLite2-City.mmdb shipped by the `maxminddb-geolite2` package."""
    try:
        packaged = importlib.import_module("geolite2")
    except ImportError as error:
        raise MaxMindError(
            f"maxminddb-geolite2 is not installed, so there is no bundled City database: set {CITY_DB_ENV}"
        ) from error
    return str(packaged.geolite2.filename)


def shared_reader(path: str) -> geoip2.database.Reader:
    """The process-wide reader of the mmdb file at `path`; a file replaced on disk gets a fresh reader."""
    resolved = os.path.realpath(path)
    stat = os.stat(resolved)
    return _open_reader(resolved, stat.st_mtime_ns, stat.st_size, stat.st_ino)


@functools.lru_cache(maxsize=16)
def _open_reader(path: str, mtime_ns: int, size: int, inode: int) -> geoip2.database.Reader:
    # The file's identity is part of the cache key only so that a rewritten database misses the cache.
    del mtime_ns, size, inode
    return geoip2.database.Reader(path, mode=maxminddb.MODE_MMAP_EXT)


def _open_database(path: str, env_var: str) -> tuple[geoip2.database.Reader, DatabaseInfo]:
    try:
        reader = shared_reader(path)
    except FileNotFoundError as error:
        raise MaxMindError(f"{env_var} points to missing file {path!r}") from error
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as error:
        raise MaxMindError(f"{env_var}={path!r} is not a readable MaxMind database: {error}") from error
    metadata = reader.metadata()
    info = DatabaseInfo(os.path.realpath(path), str(metadata.database_type), int(metadata.build_epoch))
    return reader, info


class MaxMindLookup:
    """Looks IPs up in a City database and, when one is configured, an ASN database.

    Readers are shared per process (see `shared_reader`), so building a lookup is cheap; a new lookup
    sees databases that were replaced on disk since the previous one.
    """

    city_info: DatabaseInfo
    asn_info: DatabaseInfo | None
    asn_warning: str | None

    def __init__(self, city_db: str | None = None, asn_db: str | None = None) -> None:
        self._city, self.city_info = _open_database(city_db or default_city_db_path(), CITY_DB_ENV)
        if "ASN" in self.city_info.database_type:
            raise MaxMindError(
                f"{CITY_DB_ENV}={self.city_info.path!r} is a {self.city_info.database_type} database, "
                "not a City database"
            )
        self._asn: geoip2.database.Reader | None = None
        self.asn_info = None
        self.asn_warning = None
        if not asn_db:
            self.asn_warning = f"No ASN database: {ASN_DB_ENV} is empty; every IP will lack a MaxMind ASN"
        elif not os.path.exists(asn_db):
            self.asn_warning = (
                f"No ASN database: {ASN_DB_ENV} points to missing file {asn_db!r}; every IP will lack a MaxMind ASN"
            )
        else:
            self._asn, self.asn_info = _open_database(asn_db, ASN_DB_ENV)
            if "ASN" not in self.asn_info.database_type:
                raise MaxMindError(
                    f"{ASN_DB_ENV}={self.asn_info.path!r} is a {self.asn_info.database_type} database, "
                    "not an ASN database (GeoLite2-ASN)"
                )

    def lookup(self, ip: str) -> MaxMindRecord:
        """Both databases' answer for one canonical IP; an IP the City database lacks has found=False."""
        if canonical_ip(ip) != ip:
            raise ValueError(f"not a canonical IP address: {ip!r}")
        asn_number = asn_org = None
        if self._asn is not None:
            try:
                asn = self._asn.asn(ip)
                asn_number, asn_org = asn.autonomous_system_number, asn.autonomous_system_organization
            except AddressNotFoundError:
                pass
        try:
            city = self._city.city(ip)
        except AddressNotFoundError:  # unknown, private or reserved: a normal outcome
            return MaxMindRecord(ip, False, asn=asn_number, asn_org=asn_org)
        location = city.location
        return MaxMindRecord(
            ip,
            True,
            country_code=city.country.iso_code,
            country_name=city.country.name,
            city=city.city.name,
            latitude=location.latitude,
            longitude=location.longitude,
            accuracy_radius=location.accuracy_radius,
            asn=asn_number,
            asn_org=asn_org,
        )

    def lookup_many(self, ips: Iterable[str]) -> list[MaxMindRecord]:
        """`lookup` for each IP, in input order."""
        lookup = self.lookup
        return [lookup(ip) for ip in ips]
