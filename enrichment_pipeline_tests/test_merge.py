"""Tests for core.merge (pure functions, no database): per-source replacement of enrichment objects,
the MaxMind-first / Cymru-fallback ASN and country summary, the GreyNoise columns, and how the passes'
frames (core.frames) become source updates and retry-list entries."""

from __future__ import annotations

import copy
import time

from enrichment_pipeline.core.cymru import BulkLookupResult, CymruAnswer
from enrichment_pipeline.core.eligibility import needs_cymru
from enrichment_pipeline.core.frames import (
    cymru_frame,
    greynoise_frame,
    lookup_failures,
    maxmind_frame,
    source_updates,
)
from enrichment_pipeline.core.freshness import MaxMindBuilds
from enrichment_pipeline.core.greynoise import GreyNoiseAnswer, GreyNoiseLookupResult
from enrichment_pipeline.core.inventory import LookupFailure, SourceUpdate
from enrichment_pipeline.core.maxmind import MaxMindRecord
from enrichment_pipeline.core.merge import (
    GreyNoiseSummary,
    Summary,
    merge_enrichment,
    summarize,
    summarize_greynoise,
)

IP = "198.51.100.7"
MAXMIND = {"asn": 64500, "asn_org": "Example Transit", "country_code": "DE"}
CYMRU = {"status": "routed", "asn": 23028, "as_name": "TEAMCYMRU - SAUNET, US", "country_code": "US"}
UNROUTED = {"status": "unrouted", "asn": None, "as_name": None, "country_code": None}


def test_update_with_only_maxmind_replaces_maxmind_and_keeps_stored_cymru() -> None:
    stored = {"maxmind": {"asn": 1, "asn_org": "Old", "country_code": "FR", "city": "Paris"}, "cymru": CYMRU}

    merged = merge_enrichment(stored, SourceUpdate(IP, maxmind=MAXMIND))

    assert merged == {"maxmind": MAXMIND, "cymru": CYMRU}  # the old "city" key went with the old object


def test_update_without_any_source_returns_the_stored_enrichment_unchanged() -> None:
    stored = {"cymru": CYMRU, "greynoise": {"noise": True}}

    assert merge_enrichment(stored, SourceUpdate(IP)) == stored


def test_merge_never_mutates_stored_or_update_objects() -> None:
    stored = {"maxmind": {"asn": 1}, "cymru": dict(CYMRU)}
    update = SourceUpdate(IP, maxmind=dict(MAXMIND), greynoise={"noise": False})
    stored_before, update_before = copy.deepcopy(stored), copy.deepcopy(update)

    merged = merge_enrichment(stored, update)
    merged["maxmind"]["asn"] = 0  # editing the result must not reach back into the update

    assert stored == stored_before
    assert update == update_before


def test_merge_treats_missing_or_non_object_stored_enrichment_as_empty() -> None:
    update = SourceUpdate(IP, cymru=CYMRU)

    assert merge_enrichment(None, update) == {"cymru": CYMRU}
    assert merge_enrichment(["not", "an", "object"], update) == {"cymru": CYMRU}  # type: ignore[arg-type]


def test_summary_prefers_maxmind_asn_org_and_country_over_cymru() -> None:
    assert summarize({"maxmind": MAXMIND, "cymru": CYMRU}) == Summary(64500, "Example Transit", "DE")


def test_summary_falls_back_to_cymru_asn_with_cymru_org_when_maxmind_has_no_asn() -> None:
    maxmind = {"asn": None, "asn_org": "Orphan org without an ASN", "country_code": None}

    assert summarize({"maxmind": maxmind, "cymru": CYMRU}) == Summary(23028, "TEAMCYMRU - SAUNET, US", "US")


def test_summary_keeps_maxmind_country_when_asn_comes_from_cymru() -> None:
    maxmind = {"asn": None, "asn_org": None, "country_code": "nl"}

    assert summarize({"maxmind": maxmind, "cymru": CYMRU}) == Summary(23028, "TEAMCYMRU - SAUNET, US", "NL")


def test_unrouted_cymru_answer_gives_no_asn_even_if_it_carries_one() -> None:
    unrouted_with_number = {**UNROUTED, "asn": 4242, "as_name": "stale", "country_code": "BR"}

    assert summarize({"cymru": UNROUTED}) == Summary(None, None, None)
    assert summarize({"cymru": unrouted_with_number}) == Summary(None, None, "BR")


def test_summary_of_empty_enrichment_is_all_unknown() -> None:
    assert summarize({}) == Summary(None, None, None)


def test_country_codes_are_upper_cased_and_blank_or_malformed_ones_fall_through() -> None:
    def country(maxmind_cc: object, cymru_cc: object) -> str | None:
        cymru = {"status": "routed", "country_code": cymru_cc}
        return summarize({"maxmind": {"country_code": maxmind_cc}, "cymru": cymru}).country_code

    assert country("us", "DE") == "US"
    assert country("", "de") == "DE"
    assert country(None, "ZZ") == "ZZ"  # a two-letter placeholder is still kept verbatim
    assert country("USA", "');") is None
    assert country("1A", 7) is None
    assert country("ü1", None) is None


def test_asn_values_are_accepted_as_numbers_or_digit_strings_and_junk_is_unknown() -> None:
    def asn(value: object) -> int | None:
        return summarize({"maxmind": {"asn": value, "asn_org": "Org"}}).asn

    assert asn(13335) == 13335
    assert asn("AS13335") == 13335
    assert asn(" 13335 ") == 13335
    assert asn(4_294_967_295) == 4_294_967_295
    assert [asn(v) for v in (True, 0, -5, 4_294_967_296, "NA", "", "12a", 1.5, None)] == [None] * 9


def test_huge_digit_string_asn_is_rejected_quickly() -> None:
    started = time.perf_counter()

    assert summarize({"cymru": {"status": "routed", "asn": "9" * 100_000}}).asn is None
    assert time.perf_counter() - started < 0.5


def test_org_is_dropped_when_its_source_has_no_usable_asn() -> None:
    enrichment = {"maxmind": {"asn": "junk", "asn_org": "Maxmind Org"}, "cymru": {**CYMRU, "asn": "NA"}}

    assert summarize(enrichment) == Summary(None, None, "US")


def test_non_object_source_entries_are_ignored() -> None:
    assert summarize({"maxmind": "oops", "cymru": [1, 2]}) == Summary(None, None, None)


def test_greynoise_summary_reads_classification_and_boolean_flags_only() -> None:
    answer = {"classification": "malicious", "noise": True, "riot": False, "name": "unknown"}

    assert summarize_greynoise({"greynoise": answer}) == GreyNoiseSummary("malicious", True, False)
    assert summarize_greynoise({"greynoise": {"noise": "yes", "riot": 1}}) == GreyNoiseSummary(None, None, None)
    assert summarize_greynoise({}) == GreyNoiseSummary(None, None, None)


def test_cymru_is_needed_only_while_maxmind_has_no_usable_asn() -> None:
    assert needs_cymru({}) and needs_cymru({"maxmind": {"asn": None}}) and needs_cymru({"maxmind": {"asn": "junk"}})
    assert not needs_cymru({"maxmind": {"asn": 64500}, "cymru": CYMRU})


def test_frames_become_updates_only_for_new_answers_and_failures_for_the_retry_list() -> None:
    ips = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
    maxmind = maxmind_frame([MaxMindRecord(ip, True, country_code="DE") for ip in ips], MaxMindBuilds(1, None))
    cymru = cymru_frame(BulkLookupResult(answers={ips[1]: CymruAnswer(ips[1], ())}, failed={ips[2]: "reset"}))
    observed = GreyNoiseAnswer(ips[0], True, True, False, "malicious", None, None, "2018-05-07", None)
    greynoise = greynoise_frame(
        ips, GreyNoiseLookupResult(answers={ips[0]: observed}, failed={ips[1]: "HTTP 503"}), fresh={ips[2]}
    )

    updates = {u.ip: u for u in source_updates(maxmind, cymru, greynoise, maxmind_fresh={ips[0], ips[2]})}

    assert set(updates) == {ips[0], ips[1]}  # ips[2]: MaxMind fresh, Cymru failed, GreyNoise fresh: nothing new
    assert updates[ips[0]].maxmind is None and updates[ips[0]].greynoise["classification"] == "malicious"
    assert updates[ips[1]].maxmind["city_db_build_epoch"] == 1 and updates[ips[1]].cymru["status"] == "unrouted"
    assert updates[ips[1]].greynoise is None
    assert lookup_failures(cymru, greynoise) == [
        LookupFailure(ips[2], "cymru", "reset"),
        LookupFailure(ips[1], "greynoise", "HTTP 503"),
    ]
