"""Team Cymru bulk reply parsing and query framing, on literal reply texts shaped like real replies."""

from __future__ import annotations

import pytest

from enrichment_pipeline.core.cymru import (
    CymruAnswer,
    CymruOrigin,
    build_bulk_query,
    parse_bulk_reply,
)

NEW_BANNER = "Bulk mode; whois.cymru.com [2025-11-06 12:00:00 +0000]"
OLD_BANNER = "Bulk mode; one IP per line. [2005-08-02 18:54:55 GMT]"
HEADER = "AS      | IP               | BGP Prefix          | CC | Registry | Allocated  | AS Name"
SAUNET = "23028   | 216.90.108.31    | 216.90.108.0/24     | US | arin     | 1998-09-25 | TEAMCYMRU - SAUNET, US"
PRIVATE = "NA      | 10.0.0.1         | NA                  |    | other    |            | NA"
SAUNET_ORIGIN = CymruOrigin(23028, "216.90.108.0/24", "US", "arin", "1998-09-25", "TEAMCYMRU - SAUNET, US")


def reply(*lines: str, newline: str = "\n") -> str:
    return newline.join(lines) + newline


@pytest.mark.parametrize("banner", [NEW_BANNER, OLD_BANNER])
@pytest.mark.parametrize("with_header", [True, False])
def test_data_line_becomes_answer_with_every_column_for_both_banners_with_or_without_header(
    banner: str, with_header: bool
) -> None:
    lines = [banner, HEADER, SAUNET] if with_header else [banner, SAUNET]
    parsed = parse_bulk_reply(reply(*lines), ["216.90.108.31"])
    assert parsed.answers == {"216.90.108.31": CymruAnswer("216.90.108.31", (SAUNET_ORIGIN,))}
    assert parsed.answers["216.90.108.31"].asn == 23028
    assert parsed.unanswered == []
    assert (parsed.error_lines, parsed.garbled_lines) == (0, 0)


def test_crlf_line_ends_and_trailing_spaces_are_ignored() -> None:
    text = reply(NEW_BANNER, HEADER + "   ", SAUNET + "  \t", PRIVATE, newline="\r\n")
    parsed = parse_bulk_reply(text, ["216.90.108.31", "10.0.0.1"])
    assert parsed.answers["216.90.108.31"].primary == SAUNET_ORIGIN
    assert parsed.answers["10.0.0.1"].unrouted is True
    assert parsed.garbled_lines == 0


def test_unpadded_columns_parse_like_padded_ones() -> None:
    parsed = parse_bulk_reply(
        "23028|216.90.108.31|216.90.108.0/24|US|arin|1998-09-25|TEAMCYMRU - SAUNET, US", ["216.90.108.31"]
    )
    assert parsed.answers["216.90.108.31"].primary == SAUNET_ORIGIN


def test_na_row_is_an_unrouted_answer_not_a_failure() -> None:
    parsed = parse_bulk_reply(reply(NEW_BANNER, HEADER, PRIVATE), ["10.0.0.1"])
    answer = parsed.answers["10.0.0.1"]
    assert answer.origins == ()
    assert answer.unrouted is True
    assert answer.asn is None
    assert answer.primary is None
    assert parsed.unanswered == []


def test_ipv6_reply_in_expanded_form_answers_the_compressed_request() -> None:
    line = "15169 | 2001:4860:4860:0000:0000:0000:0000:8888 | 2001:4860::/32 | US | arin | 2005-03-14 | GOOGLE, US"
    parsed = parse_bulk_reply(reply(NEW_BANNER, line), ["2001:4860:4860::8888"])
    answer = parsed.answers["2001:4860:4860::8888"]
    assert answer.ip == "2001:4860:4860::8888"
    assert answer.asn == 15169
    assert answer.primary is not None and answer.primary.prefix == "2001:4860::/32"


def test_ipv6_prefix_is_stored_compressed_whatever_form_the_server_uses() -> None:
    line = "15169 | 2001:4860:4860::8888 | 2001:4860:0000:0000::/32 | US | arin | 2005-03-14 | GOOGLE, US"
    parsed = parse_bulk_reply(line, ["2001:4860:4860::8888"])
    assert parsed.answers["2001:4860:4860::8888"].origins[0].prefix == "2001:4860::/32"


MOAS_LINES = [
    "64500   | 192.0.2.77       | 192.0.2.0/24        | NL | ripencc  | 2010-01-01 | LATER-AS, NL",
    "13335   | 192.0.2.77       | 192.0.2.0/24        | US | arin     | 2010-07-14 | CLOUDFLARENET, US",
    "20940   | 192.0.2.77       | 192.0.2.0/24        | EU | ripencc  | 2001-02-15 | AKAMAI-ASN1, EU",
]


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_moas_keeps_every_origin_and_picks_the_lowest_asn_whatever_the_line_order(order: tuple[int, int, int]) -> None:
    parsed = parse_bulk_reply(reply(NEW_BANNER, HEADER, *(MOAS_LINES[i] for i in order)), ["192.0.2.77"])
    answer = parsed.answers["192.0.2.77"]
    assert [origin.asn for origin in answer.origins] == [13335, 20940, 64500]
    assert answer.asn == 13335
    assert answer.primary is not None and answer.primary.as_name == "CLOUDFLARENET, US"


def test_duplicate_identical_lines_give_one_origin() -> None:
    parsed = parse_bulk_reply(reply(NEW_BANNER, SAUNET, SAUNET), ["216.90.108.31"])
    assert parsed.answers["216.90.108.31"].origins == (SAUNET_ORIGIN,)


def test_error_lines_are_counted_and_their_ips_stay_unanswered() -> None:
    text = reply(NEW_BANNER, HEADER, "Error: no ASN or IP match on line 4.", SAUNET)
    parsed = parse_bulk_reply(text, ["216.90.108.31", "198.51.100.9"])
    assert list(parsed.answers) == ["216.90.108.31"]
    assert parsed.unanswered == ["198.51.100.9"]
    assert parsed.error_lines == 1
    assert parsed.garbled_lines == 0


def test_reply_that_ends_early_leaves_the_rest_unanswered_in_request_order() -> None:
    requested = ["216.90.108.31", "203.0.113.5", "10.0.0.1", "198.51.100.9"]
    parsed = parse_bulk_reply(reply(OLD_BANNER, HEADER, SAUNET), requested)
    assert list(parsed.answers) == ["216.90.108.31"]
    assert parsed.unanswered == ["203.0.113.5", "10.0.0.1", "198.51.100.9"]


def test_line_cut_mid_way_is_garbled_and_its_ip_unanswered() -> None:
    cut = "23028   | 216.90.108.31    | 216.90.10"
    parsed = parse_bulk_reply(NEW_BANNER + "\n" + PRIVATE + "\n" + cut, ["216.90.108.31", "10.0.0.1"])
    assert parsed.unanswered == ["216.90.108.31"]
    assert parsed.answers["10.0.0.1"].unrouted
    assert parsed.garbled_lines == 1


def test_empty_reply_answers_nothing() -> None:
    parsed = parse_bulk_reply("", ["216.90.108.31"])
    assert parsed.answers == {}
    assert parsed.unanswered == ["216.90.108.31"]


@pytest.mark.parametrize(
    "garbled",
    [
        "2302x   | 216.90.108.31    | 216.90.108.0/24     | US | arin     | 1998-09-25 | TEAMCYMRU - SAUNET, US",
        "2302    | 216.90.108.31    | 216.90.108.0/24",
        "23028   | 216.90.108.31    | 216.90.108.0/24     | US | arin     | 1998-09-25",
        "23028   | 216.90.108.31    | 216.90.1?8.0/24     | US | arin     | 1998-09-25 | TEAMCYMRU - SAUNET, US",
        "23028   | 216.90.108.31    | 10.0.0.0/8          | US | arin     | 1998-09-25 | TEAMCYMRU - SAUNET, US",
        "23028   | 216.90.108.31    | 216.90.108.0/24     | U$ | arin     | 1998-09-25 | TEAMCYMRU - SAUNET, US",
        "23028   | 216.90.108.31    | 216.90.108.0/24     | US | ar in    | 1998-09-25 | TEAMCYMRU - SAUNET, US",
        "23028   | 216.90.108.31    | 216.90.108.0/24     | US | arin     | 1998/09/25 | TEAMCYMRU - SAUNET, US",
        "23028   | 216.90.108.31    | 216.90.108.0/24     | US | arin     | 1998-09-25 | TEAM\x00CYMRU",
        "99999999999 | 216.90.108.31 | 216.90.108.0/24    | US | arin     | 1998-09-25 | TEAMCYMRU - SAUNET, US",
        "23028   | 216.90.108.31    | 216.90.108.0/24     | US | arin     | 1998-09-25 | TEAMCYMRU | EX\x07TRA",
    ],
)
def test_ip_with_any_garbled_line_is_unanswered_even_if_another_line_is_clean(garbled: str) -> None:
    for lines in ([SAUNET, garbled], [garbled, SAUNET]):
        parsed = parse_bulk_reply(reply(NEW_BANNER, HEADER, *lines), ["216.90.108.31"])
        assert parsed.answers == {}
        assert parsed.unanswered == ["216.90.108.31"]
        assert parsed.garbled_lines == 1


def test_a_pipe_in_the_as_name_belongs_to_the_name() -> None:
    line = "23028 | 216.90.108.31 | 216.90.108.0/24 | US | arin | 1998-09-25 | ACME | SUB|NET, US"
    parsed = parse_bulk_reply(reply(NEW_BANNER, HEADER, line), ["216.90.108.31"])
    assert parsed.answers["216.90.108.31"].origins == (
        CymruOrigin(23028, "216.90.108.0/24", "US", "arin", "1998-09-25", "ACME | SUB|NET, US"),
    )
    assert parsed.garbled_lines == 0


def test_lower_case_na_is_unknown_in_every_column() -> None:
    routed = "23028 | 216.90.108.31 | na | US | na | na | na"
    unrouted = "na | 10.0.0.1 | na | | other | | na"
    parsed = parse_bulk_reply(reply(NEW_BANNER, routed, unrouted), ["216.90.108.31", "10.0.0.1"])
    assert parsed.answers["216.90.108.31"].origins == (CymruOrigin(23028, None, "US", None, None, None),)
    assert parsed.answers["10.0.0.1"].unrouted
    assert parsed.garbled_lines == 0


def test_a_header_naming_its_as_column_asn_is_still_a_header() -> None:
    header = "ASN | IP | BGP Prefix | CC | Registry | Allocated | AS Name"
    parsed = parse_bulk_reply(reply(NEW_BANNER, header, SAUNET), ["216.90.108.31"])
    assert parsed.answers["216.90.108.31"].asn == 23028
    assert parsed.garbled_lines == 0


def test_tabs_and_mixed_padding_parse_like_spaces() -> None:
    line = "\t23028\t|\t216.90.108.31 \t| 216.90.108.0/24\t|US|\tarin | 1998-09-25\t|\tTEAMCYMRU - SAUNET, US\t"
    parsed = parse_bulk_reply(reply(NEW_BANNER, line, newline="\r\n"), ["216.90.108.31"])
    assert parsed.answers["216.90.108.31"].origins == (SAUNET_ORIGIN,)


CLOUDFLARE_CUT = "13335   | 192.0.2.77       | 192.0.2.0/24        | US | arin     | 2010-07-14 | CLOUDFL"


def test_unterminated_last_line_is_accepted_at_a_clean_end_but_dropped_from_a_cut_reply() -> None:
    text = reply(NEW_BANNER, HEADER, PRIVATE, SAUNET) + CLOUDFLARE_CUT
    requested = ["10.0.0.1", "216.90.108.31", "192.0.2.77"]
    clean = parse_bulk_reply(text, requested)
    assert set(clean.answers) == set(requested)
    assert clean.answers["192.0.2.77"].primary.as_name == "CLOUDFL"  # the server's choice
    cut = parse_bulk_reply(text, requested, cut=True)
    assert "192.0.2.77" in cut.unanswered
    assert cut.garbled_lines == 0


def test_a_cut_reply_answers_ips_with_complete_lines_but_not_the_ip_of_the_last_one() -> None:
    # The last complete line may be followed by a lost MOAS line for the same IP: a pick from it could differ.
    requested = ["10.0.0.1", "216.90.108.31", "192.0.2.77", "198.51.100.9"]
    for ending in (MOAS_LINES[1][:40], ""):  # cut inside a line, or exactly at a line end
        text = reply(NEW_BANNER, HEADER, PRIVATE, SAUNET, MOAS_LINES[0]) + ending
        parsed = parse_bulk_reply(text, requested, cut=True)
        assert parsed.answers == {
            "10.0.0.1": CymruAnswer("10.0.0.1", ()),
            "216.90.108.31": CymruAnswer("216.90.108.31", (SAUNET_ORIGIN,)),
        }
        assert parsed.unanswered == ["192.0.2.77", "198.51.100.9"]


def test_a_reply_cut_before_any_complete_data_line_answers_nothing() -> None:
    parsed = parse_bulk_reply(NEW_BANNER + "\n" + HEADER + "\n" + SAUNET[:30], ["216.90.108.31"], cut=True)
    assert parsed.answers == {}
    assert parsed.unanswered == ["216.90.108.31"]


def test_non_utf8_bytes_in_an_as_name_keep_the_answer() -> None:
    raw = SAUNET.encode().replace(b"SAUNET", b"SA\xd3NET\xff")
    parsed = parse_bulk_reply(raw.decode("utf-8", errors="replace"), ["216.90.108.31"])
    origin = parsed.answers["216.90.108.31"].primary
    assert origin is not None and origin.asn == 23028 and origin.as_name == "TEAMCYMRU - SA\ufffdNET\ufffd, US"


def test_lines_fitting_nothing_are_counted_as_garbled_and_do_not_disturb_answers() -> None:
    text = reply(NEW_BANNER, HEADER, SAUNET, "<<trailing garbage>>", "\ufffd\ufffd | not-an-ip | x", "begin", "| |")
    parsed = parse_bulk_reply(text, ["216.90.108.31"])
    assert parsed.answers["216.90.108.31"].asn == 23028
    assert parsed.garbled_lines == 4


def test_unrequested_ips_in_the_reply_are_ignored() -> None:
    parsed = parse_bulk_reply(reply(NEW_BANNER, HEADER, SAUNET, PRIVATE), ["10.0.0.1"])
    assert list(parsed.answers) == ["10.0.0.1"]
    assert parsed.garbled_lines == 0


def test_na_and_as_rows_for_one_ip_contradict_so_it_stays_unanswered() -> None:
    na_for_saunet = "NA | 216.90.108.31 | NA | | other | | NA"
    parsed = parse_bulk_reply(reply(NEW_BANNER, SAUNET, na_for_saunet), ["216.90.108.31"])
    assert parsed.answers == {}
    assert parsed.unanswered == ["216.90.108.31"]


def test_empty_and_na_columns_become_none_and_namibia_stays_a_country() -> None:
    line = "37009 | 41.182.0.1 | NA | NA | | NA | NA"
    parsed = parse_bulk_reply(line, ["41.182.0.1"])
    assert parsed.answers["41.182.0.1"].origins == (CymruOrigin(37009, None, "NA", None, None, None),)


def test_requested_ips_are_matched_in_canonical_form() -> None:
    parsed = parse_bulk_reply(reply(NEW_BANNER, SAUNET), ["::ffff:216.90.108.31"])
    assert list(parsed.answers) == ["216.90.108.31"]


def test_build_bulk_query_frames_verbose_query_with_one_ip_per_line() -> None:
    assert build_bulk_query(["216.90.108.31", "2001:db8::1"]) == (b"begin\nverbose\n216.90.108.31\n2001:db8::1\nend\n")


@pytest.mark.parametrize(
    "bad", ["1.2.3.4\nend", "1.2.3.4\r", " 1.2.3.4", "fe80::1%eth0", "2001:DB8::1", "::ffff:1.2.3.4", "", "x"]
)
def test_build_bulk_query_rejects_anything_not_canonical(bad: str) -> None:
    with pytest.raises(ValueError, match="not a canonical IP"):
        build_bulk_query(["8.8.8.8", bad])
