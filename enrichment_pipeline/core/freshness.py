"""When a stored answer is still good: per-source TTLs, the MaxMind database builds, and the retry backoff.
Each rule in both its Python and its SQL form; assets and the re-enrichment path read the clock here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, ColumnElement, and_, cast

from enrichment_pipeline.core.records import SOURCES

if TYPE_CHECKING:
    from enrichment_pipeline.core.maxmind import MaxMindLookup

# Keys of enrichment["maxmind"] recording which database builds gave the answer.
CITY_BUILD_KEY = "city_db_build_epoch"
ASN_BUILD_KEY = "asn_db_build_epoch"

# Backoff of a failed lookup: 15 min after the first failure, doubling per attempt, at most a day.
RETRY_FIRST_DELAY = timedelta(minutes=15)
RETRY_MAX_DELAY = timedelta(days=1)


def utc_now() -> datetime:
    """The pipeline's clock; tests replace this one function to move time."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class MaxMindBuilds:
    """The `build_epoch` of the City database and of the ASN database (None: no ASN database)."""

    city: int
    asn: int | None

    @classmethod
    def of(cls, lookup: MaxMindLookup) -> MaxMindBuilds:
        return cls(lookup.city_info.build_epoch, lookup.asn_info.build_epoch if lookup.asn_info else None)

    def as_dict(self) -> dict[str, int | None]:
        """The keys stored with each MaxMind answer."""
        return {CITY_BUILD_KEY: self.city, ASN_BUILD_KEY: self.asn}

    def gave(self, maxmind_answer: Mapping[str, Any]) -> bool:
        """True when a stored MaxMind answer came from exactly these database builds."""
        return maxmind_answer.get(CITY_BUILD_KEY) == self.city and maxmind_answer.get(ASN_BUILD_KEY) == self.asn

    def gave_sql(self, enrichment: Any) -> ColumnElement[bool]:
        """`gave` for the stored `ip_inventory.enrichment` JSON column."""

        def build(key: str) -> ColumnElement[Any]:
            # A BIGINT cast keeps the comparison numeric on both backends (epochs outgrow INTEGER in 2038).
            return cast(enrichment[("maxmind", key)].as_string(), BigInteger)

        return and_(
            build(CITY_BUILD_KEY).is_not_distinct_from(self.city), build(ASN_BUILD_KEY).is_not_distinct_from(self.asn)
        )


@dataclass(frozen=True)
class FreshnessPolicy:
    """How long each source's answer stays fresh; a MaxMind answer also goes stale with a new database."""

    maxmind_ttl: timedelta
    cymru_ttl: timedelta
    greynoise_ttl: timedelta
    maxmind_builds: MaxMindBuilds | None = None  # None: judge MaxMind answers by age alone

    @classmethod
    def from_days(
        cls, maxmind: float, cymru: float, greynoise: float, maxmind_builds: MaxMindBuilds | None = None
    ) -> FreshnessPolicy:
        for name, days in (("maxmind", maxmind), ("cymru", cymru), ("greynoise", greynoise)):
            if not days >= 0:  # also rejects NaN
                raise ValueError(f"{name} TTL must be a non-negative number of days, got {days!r}")
        return cls(timedelta(days=maxmind), timedelta(days=cymru), timedelta(days=greynoise), maxmind_builds)

    def ttl(self, source: str) -> timedelta:
        ttls = {"maxmind": self.maxmind_ttl, "cymru": self.cymru_ttl, "greynoise": self.greynoise_ttl}
        if source not in ttls:
            raise ValueError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")
        return ttls[source]

    def with_builds(self, maxmind_builds: MaxMindBuilds | None) -> FreshnessPolicy:
        return FreshnessPolicy(self.maxmind_ttl, self.cymru_ttl, self.greynoise_ttl, maxmind_builds)


def is_fresh(updated_at: datetime | None, ttl: timedelta, now: datetime) -> bool:
    """An answer is fresh while it is younger than `ttl`; exactly `ttl` old is stale, never asked is stale."""
    return updated_at is not None and updated_at > now - ttl


def fresh_sql(updated_at: Any, ttl: timedelta, now: datetime) -> ColumnElement[bool]:
    """`is_fresh` for a timestamp column; never NULL, so its negation is safe too."""
    return and_(updated_at.is_not(None), updated_at > now - ttl)


def expires_at(updated_at: datetime | None, ttl: timedelta) -> datetime:
    """When an answer goes stale; a source never asked expired at the beginning of time."""
    return datetime.min.replace(tzinfo=UTC) if updated_at is None else updated_at + ttl


def retry_delay(attempts: int) -> timedelta:
    """Wait before retrying a lookup that has failed `attempts` times in a row (1, 2, ...)."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    # Capping the exponent first keeps 2**n small for IPs that fail for months.
    return min(RETRY_FIRST_DELAY * 2 ** min(attempts - 1, 16), RETRY_MAX_DELAY)
