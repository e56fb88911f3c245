"""Precedence rules between enrichment sources: how a new answer merges into a stored row.
Pure functions: per-source replacement, then the ASN/org/country and GreyNoise summary columns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from enrichment_pipeline.core.records import SOURCES, SourceUpdate

# AS numbers are unsigned 32-bit (RFC 6793); anything else is not an ASN.
_MAX_ASN = 2**32 - 1
_ABSENT: Mapping[str, Any] = MappingProxyType({})  # what a missing source reads as (read-only: shared)


@dataclass(frozen=True)
class Summary:
    asn: int | None
    asn_org: str | None
    country_code: str | None


@dataclass(frozen=True)
class GreyNoiseSummary:
    classification: str | None
    noise: bool | None
    riot: bool | None


def merge_enrichment(stored: Mapping[str, Any] | None, update: SourceUpdate) -> dict[str, Any]:
    """Return the stored enrichment with each source present in `update` replaced by its new object.

    Sources the update leaves as None were not asked this run, so their stored objects are kept.
    Neither argument is mutated: the result is a new top-level dict with copied new objects.
    """
    merged: dict[str, Any] = dict(stored) if _is_mapping(stored) else {}
    for source in SOURCES:
        answer = getattr(update, source)
        if answer is not None:
            merged[source] = dict(answer)
    return merged


def summarize(enrichment: Mapping[str, Any]) -> Summary:
    """Derive ASN, its organisation and country: MaxMind first, Cymru as the fallback.

    The organisation always comes from the source that gave the ASN; an unrouted Cymru answer gives
    no ASN. Country is MaxMind's, else Cymru's, if it is two ASCII letters (kept upper case).
    """
    maxmind = _source(enrichment, "maxmind")
    cymru = _source(enrichment, "cymru")
    _, asn, asn_org = _asn_answer(maxmind, cymru)
    country = _as_country(maxmind.get("country_code")) or _as_country(cymru.get("country_code"))
    return Summary(asn=asn, asn_org=asn_org, country_code=country)


def asn_source(enrichment: Mapping[str, Any]) -> str | None:
    """Which source gave the ASN `summarize` reports: "maxmind", "cymru" (the fallback), None for no ASN."""
    return _asn_answer(_source(enrichment, "maxmind"), _source(enrichment, "cymru"))[0]


def _asn_answer(maxmind: Mapping[str, Any], cymru: Mapping[str, Any]) -> tuple[str | None, int | None, str | None]:
    """(source, ASN, organisation): MaxMind's valid ASN first, else a routed Cymru answer's."""
    asn = _as_asn(maxmind.get("asn"))
    if asn is not None:
        return "maxmind", asn, _as_text(maxmind.get("asn_org"))
    if cymru.get("status") == "routed":
        asn = _as_asn(cymru.get("asn"))
        if asn is not None:
            return "cymru", asn, _as_text(cymru.get("as_name"))
    return None, None, None


def maxmind_asn(enrichment: Mapping[str, Any]) -> int | None:
    """The valid ASN of the stored MaxMind answer, if any (what decides whether Cymru is needed)."""
    return _as_asn(_source(enrichment, "maxmind").get("asn"))


def summarize_greynoise(enrichment: Mapping[str, Any]) -> GreyNoiseSummary:
    """Derive the GreyNoise columns (classification, noise, riot) from the stored greynoise object."""
    greynoise = _source(enrichment, "greynoise")
    classification = _as_text(greynoise.get("classification"))
    noise, riot = greynoise.get("noise"), greynoise.get("riot")
    return GreyNoiseSummary(
        classification=classification,
        noise=noise if isinstance(noise, bool) else None,
        riot=riot if isinstance(riot, bool) else None,
    )


def _is_mapping(value: object) -> bool:
    # The exact-type test first: the merge runs per IP, and the ABC check costs several times more.
    return type(value) is dict or isinstance(value, Mapping)


def _source(enrichment: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    # A stored row may hold anything (older versions, hand edits): a non-object counts as absent.
    value = enrichment.get(name) if _is_mapping(enrichment) else None
    return value if _is_mapping(value) else _ABSENT


def _as_asn(value: object) -> int | None:
    if type(value) is int:  # the common case; bool (an int subclass) never takes this path
        return value if 0 < value <= _MAX_ASN else None
    if isinstance(value, bool):  # bool is an int subclass, never an ASN
        return None
    if isinstance(value, str):
        text = value.strip().upper().removeprefix("AS")
        # Length bound first: int() of a huge digit string is slow or raises.
        value = int(text) if len(text) <= 10 and text.isascii() and text.isdigit() else None
    if isinstance(value, int) and 0 < value <= _MAX_ASN:
        return value
    return None


def _as_text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _as_country(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    code = value.strip().upper()
    return code if len(code) == 2 and code.isascii() and code.isalpha() else None
