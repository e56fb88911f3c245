"""GreyNoiseClient against a loopback GreyNoise server: every status path, pacing measured on the server side,
budgets, give-up rules, the key kept secret; and the daily budget table on SQLite and PostgreSQL."""

from __future__ import annotations

import email.utils
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from enrichment_pipeline.core.eligibility import SKIP_IPV6, SKIP_NOT_GLOBAL, SKIP_NOT_IP
from enrichment_pipeline.core.frames import (
    GREYNOISE_COLUMNS,
    greynoise_enrichment,
    greynoise_frame,
    records,
    status_counts,
)
from enrichment_pipeline.core.greynoise import (
    BUDGET_EXHAUSTED,
    CONNECTION_ERROR,
    INVALID_JSON,
    OVERSIZED_REPLY,
    RATE_LIMITED,
    SKIP_REJECTED,
    TIMEOUT,
    UNAVAILABLE,
    UNEXPECTED_ANSWER,
    GreyNoiseAnswer,
    GreyNoiseAuthError,
    GreyNoiseLookupResult,
    budgeted_lookup,
    skip_reason,
)
from enrichment_pipeline.core.greynoise_client import GreyNoiseClient
from enrichment_pipeline.core.inventory import GreyNoiseDailyBudget
from enrichment_pipeline.core.merge import summarize_greynoise
from enrichment_pipeline_tests.support.greynoise_server import (
    NOT_OBSERVED_MESSAGE,
    FakeGreyNoise,
    not_observed,
    observed,
    slow,
    status,
)

KEY = "gn-secret-5be1c0ffee"
DAY = date(2026, 1, 2)


@pytest.fixture(scope="module")
def running_server() -> Iterator[FakeGreyNoise]:
    with FakeGreyNoise(KEY) as fake:
        yield fake


@pytest.fixture
def server(running_server: FakeGreyNoise) -> FakeGreyNoise:
    running_server.reset()
    return running_server


def client_for(server: FakeGreyNoise, **options: object) -> GreyNoiseClient:
    options.setdefault("rate_per_s", 1000.0)
    options.setdefault("timeout_s", 5.0)
    return GreyNoiseClient(server.url, KEY, **options)  # type: ignore[arg-type]


class RecordingSleep:
    """Records the waits asked for instead of sleeping (for 429 backoffs measured in seconds)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_200_404_and_400_become_answers_not_observed_and_skips_and_unaskable_ips_are_never_sent(server):
    server.script("45.33.32.156", observed("malicious", name="Shodan.io", riot=False))
    server.script(
        "1.1.1.1",
        status(
            200,
            {
                "ip": "1.1.1.1",
                "noise": False,
                "riot": True,
                "classification": "benign",
                "name": "Cloudflare",
                "link": "javascript:alert(1)",
                "last_seen": "2024-01-05",
                "message": "Success",
            },
        ),
    )
    server.script("93.184.216.34", not_observed())
    server.script("198.51.100.7", status(400, {"message": "Request is not a valid routable IPv4 address"}))
    ips = [
        "45.33.32.156",
        "1.1.1.1",
        "93.184.216.34",
        "198.51.100.7",
        "2606:4700::1111",
        "10.0.0.1",
        "127.0.0.1",
        "224.0.0.1",
        "not-an-ip",
        "45.33.32.156",
    ]

    with client_for(server) as client:
        result = client.lookup(ips)

    assert server.asked() == ["45.33.32.156", "1.1.1.1", "93.184.216.34"]  # 198.51.100.7 is TEST-NET: never sent
    assert {seen.key for seen in server.requests} == {KEY}
    assert result.requests_made == 3
    shodan = result.answers["45.33.32.156"]
    assert shodan == GreyNoiseAnswer(
        "45.33.32.156",
        True,
        True,
        False,
        "malicious",
        "Shodan.io",
        "https://viz.greynoise.io/ip/45.33.32.156",
        "2018-05-07",
        "Success",
    )
    cloudflare = result.answers["1.1.1.1"]
    assert (cloudflare.riot, cloudflare.classification, cloudflare.link) == (True, "benign", None)  # no js: link
    assert result.answers["93.184.216.34"] == GreyNoiseAnswer(
        "93.184.216.34", False, False, False, None, None, None, None, NOT_OBSERVED_MESSAGE
    )
    assert result.skipped == {
        "198.51.100.7": SKIP_NOT_GLOBAL,
        "2606:4700::1111": SKIP_IPV6,
        "10.0.0.1": SKIP_NOT_GLOBAL,
        "127.0.0.1": SKIP_NOT_GLOBAL,
        "224.0.0.1": SKIP_NOT_GLOBAL,
        "not-an-ip": SKIP_NOT_IP,
    }
    assert result.failed == {}


def test_a_400_from_greynoise_is_skipped_and_not_retried(server):
    server.script("8.8.4.4", status(400, {"message": "Request is not a valid routable IPv4 address"}))
    with client_for(server) as client:
        result = client.lookup(["8.8.4.4", "8.8.8.8"])
    assert result.skipped == {"8.8.4.4": SKIP_REJECTED}
    assert server.asked() == ["8.8.4.4", "8.8.8.8"] and "8.8.8.8" in result.answers


def test_a_401_stops_the_pass_with_a_clear_error_that_does_not_contain_the_key(server):
    with GreyNoiseClient(server.url, "gn-wrong-key-0000", rate_per_s=1000) as client:
        with pytest.raises(GreyNoiseAuthError) as raised:
            client.lookup(["8.8.8.8", "8.8.4.4", "1.1.1.1"])
        assert client.requests_sent == 1
    assert server.asked() == ["8.8.8.8"]
    message = str(raised.value)
    assert "401" in message and "GREYNOISE_API_KEY" in message
    assert "gn-wrong-key-0000" not in message + repr(raised.value)


def test_a_key_that_cannot_be_a_header_is_refused_without_quoting_it():
    for bad in ("", "   ", "gn-key\r\nX-Injected: 1", "gn key with spaces", "gn-\u00e9"):
        with pytest.raises(GreyNoiseAuthError) as raised:
            GreyNoiseClient("http://127.0.0.1:9", bad)
        assert bad.strip() == "" or bad not in str(raised.value)


def test_429_waits_for_retry_after_then_gets_the_answer(server):
    server.script("8.8.8.8", status(429, {"plan": "community", "rate-limit": "100-lookups/day"}, {"Retry-After": "3"}))
    sleep = RecordingSleep()
    with client_for(server, sleep=sleep) as client:
        result = client.lookup(["8.8.8.8"])
    assert server.asked() == ["8.8.8.8", "8.8.8.8"]
    assert "8.8.8.8" in result.answers and result.requests_made == 2
    assert 3.0 in sleep.waits


def test_429_retry_after_may_be_an_http_date_or_decimal_seconds(server):
    in_30_s = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    server.script("8.8.8.8", status(429, {"message": "slow down"}, {"Retry-After": in_30_s}))
    server.script("8.8.4.4", status(429, {"message": "slow down"}, {"Retry-After": "1.5"}))
    sleep = RecordingSleep()
    with client_for(server, sleep=sleep) as client:
        result = client.lookup(["8.8.8.8", "8.8.4.4"])
    assert set(result.answers) == {"8.8.8.8", "8.8.4.4"}
    waits = [wait for wait in sleep.waits if wait >= 1]  # the pacer's own gaps are milliseconds
    assert len(waits) == 2 and 25 <= waits[0] <= 31 and waits[1] == 1.5, sleep.waits


def test_a_429_storm_backs_off_then_gives_up_on_every_remaining_ip_as_rate_limited(server):
    server.default = status(429, {"message": "rate limited"})
    sleep = RecordingSleep()
    ips = ["8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "9.9.9.9", "1.1.1.1"]
    with client_for(server, sleep=sleep, max_retries=2) as client:
        result = client.lookup(ips)

    assert server.asked() == ["8.8.8.8"] * 3  # one IP, its retries, then nothing more: no hammering
    assert [wait for wait in sleep.waits if wait >= 1] == [2.0, 4.0]  # exponential without Retry-After
    assert result.failed == dict.fromkeys(["8.8.8.8", "8.8.4.4", "9.9.9.9", "1.1.1.1"], RATE_LIMITED)
    assert result.skipped == {"2001:4860:4860::8888": SKIP_IPV6}  # IPv6 is a skip, not a failure


def test_a_429_asking_for_more_than_a_minute_ends_the_pass_at_once(server):
    server.default = status(429, {"message": "quota"}, {"Retry-After": "86400"})
    sleep = RecordingSleep()
    with client_for(server, sleep=sleep) as client:
        result = client.lookup(["8.8.8.8", "8.8.4.4"])
    assert server.asked() == ["8.8.8.8"]
    assert max(sleep.waits, default=0) < 1
    assert set(result.failed.values()) == {RATE_LIMITED}


def test_5xx_is_retried_by_urllib3_at_the_client_rate(server):
    server.script("8.8.8.8", status(503), status(502))
    with client_for(server, rate_per_s=20, max_retries=3) as client:
        result = client.lookup(["8.8.8.8", "8.8.4.4"])
    assert server.asked() == ["8.8.8.8", "8.8.8.8", "8.8.8.8", "8.8.4.4"]
    assert set(result.answers) == {"8.8.8.8", "8.8.4.4"} and result.requests_made == 4
    arrivals = server.arrivals()
    # urllib3 alone would resend at once; paced, no two requests arrive much closer than 1/20 s.
    assert min(b - a for a, b in zip(arrivals, arrivals[1:], strict=False)) >= 0.6 / 20


def test_a_5xx_that_persists_fails_that_ip_only(server):
    server.script("8.8.8.8", status(500), status(500))
    with client_for(server, max_retries=1) as client:
        result = client.lookup(["8.8.8.8", "8.8.4.4"])
    assert result.failed == {"8.8.8.8": "HTTP 500"}
    assert "8.8.4.4" in result.answers
    assert server.asked() == ["8.8.8.8", "8.8.8.8", "8.8.4.4"]


@pytest.mark.parametrize("max_retries", [0, 1])
def test_a_reply_slower_than_the_timeout_fails_as_timeout_and_the_pass_goes_on(server, max_retries):
    server.script("8.8.8.8", *[slow(1.0, observed())] * (max_retries + 1))
    started = time.monotonic()
    with client_for(server, timeout_s=0.2, max_retries=max_retries) as client:
        result = client.lookup(["8.8.8.8", "8.8.4.4"])
    assert time.monotonic() - started < 0.9 * (max_retries + 1)
    assert result.failed == {"8.8.8.8": TIMEOUT}
    assert "8.8.4.4" in result.answers
    assert server.asked().count("8.8.8.8") == max_retries + 1


def test_an_unreachable_server_fails_five_ips_then_stops_asking():
    ips = [f"8.8.{i}.1" for i in range(8)]
    with GreyNoiseClient(f"http://127.0.0.1:{closed_port()}", KEY, rate_per_s=1000, max_retries=0) as client:
        result = client.lookup(ips)
    assert result.requests_made == 5
    assert [result.failed[ip] for ip in ips] == [CONNECTION_ERROR] * 5 + [UNAVAILABLE] * 3


def test_replies_that_are_not_greynoise_answers_fail_and_are_never_cached(server):
    server.script("8.8.8.8", status(200, "<html>not json</html>"))
    server.script("8.8.4.4", status(200, [1, 2, 3]))
    server.script("9.9.9.9", status(200, {"ip": "1.2.3.4", "noise": True, "riot": False}))
    server.script("1.1.1.1", status(200, {"ip": "1.1.1.1", "noise": "yes", "riot": False}))
    server.script("1.0.0.1", status(404, "<html>Not Found</html>"))
    server.script("1.0.0.2", status(404, {"detail": "Not Found"}))
    server.script("1.0.0.3", status(200, {"ip": "1.0.0.3", "message": "x" * 70_000}))
    server.script("1.0.0.4", status(403, {"message": "Forbidden"}))
    server.script("1.0.0.5", status(404, ""))  # an empty 404: a wrong URL as likely as GreyNoise
    server.script("1.0.0.6", status(200, {"message": "ok", "status": "up"}))  # JSON naming no IP and no flag
    server.script("1.0.0.7", status(200, "null"))
    expected = {
        "8.8.8.8": INVALID_JSON,
        "8.8.4.4": UNEXPECTED_ANSWER,
        "9.9.9.9": UNEXPECTED_ANSWER,
        "1.1.1.1": UNEXPECTED_ANSWER,
        "1.0.0.1": "HTTP 404 without a GreyNoise answer",
        "1.0.0.2": UNEXPECTED_ANSWER,
        "1.0.0.3": OVERSIZED_REPLY,
        "1.0.0.4": "HTTP 403",
        "1.0.0.5": "HTTP 404 without a GreyNoise answer",
        "1.0.0.6": UNEXPECTED_ANSWER,
        "1.0.0.7": UNEXPECTED_ANSWER,
    }
    with client_for(server, max_retries=0) as client:
        results = [client.lookup([ip]) for ip in expected]  # one pass each: five failures in a row stop a pass
    assert [result.answers for result in results] == [{}] * len(expected)
    assert {ip: reason for result in results for ip, reason in result.failed.items()} == expected


def test_answers_tolerate_missing_null_and_extra_fields_any_classification_and_any_content_type(server):
    server.script("8.8.8.8", status(200, {"ip": "8.8.8.8", "noise": True}))
    server.script(
        "8.8.4.4",
        status(
            200,
            {
                "ip": "8.8.4.4",
                "noise": True,
                "riot": None,
                "classification": None,
                "name": None,
                "link": None,
                "last_seen": None,
                "message": None,
                "tags": ["x"],
                "metadata": {"asn": "AS15169"},
            },
        ),
    )
    server.script("9.9.9.9", observed("Suspicious", last_seen="2024-01-05T23:30:00-05:00"))
    server.script("1.1.1.1", observed("benign", last_seen="2024-01-05T10:00:00Z"))
    server.script("1.0.0.1", observed("malicious", last_seen="2024-13-45"))
    server.script("1.0.0.2", status(200, {"noise": False, "riot": True, "name": "Cloudflare"}))  # no "ip"
    server.script("1.0.0.3", status(404, {"ip": "1.0.0.3", "message": NOT_OBSERVED_MESSAGE}))  # no flags
    server.script("1.0.0.4", status(404, {"noise": False, "riot": False, "message": NOT_OBSERVED_MESSAGE}))
    server.script("1.0.0.5", status(200, json.dumps({"ip": "1.0.0.5", "noise": True, "riot": False})))  # text/html
    ips = ["8.8.8.8", "8.8.4.4", "9.9.9.9", "1.1.1.1", "1.0.0.1", "1.0.0.2", "1.0.0.3", "1.0.0.4", "1.0.0.5"]
    with client_for(server) as client:
        result = client.lookup(ips)

    assert result.failed == {} and set(result.answers) == set(ips)
    answers = result.answers
    assert answers["8.8.8.8"] == GreyNoiseAnswer("8.8.8.8", True, True, False, None, None, None, None, None)
    assert answers["8.8.4.4"] == GreyNoiseAnswer("8.8.4.4", True, True, False, None, None, None, None, None)
    assert (answers["9.9.9.9"].classification, answers["9.9.9.9"].last_seen) == ("suspicious", "2024-01-06")  # UTC
    assert answers["1.1.1.1"].last_seen == "2024-01-05"
    assert (answers["1.0.0.1"].classification, answers["1.0.0.1"].last_seen) == ("malicious", None)
    assert (answers["1.0.0.2"].observed, answers["1.0.0.2"].riot, answers["1.0.0.2"].name) == (True, True, "Cloudflare")
    for ip in ("1.0.0.3", "1.0.0.4"):
        assert answers[ip] == GreyNoiseAnswer(ip, False, False, False, None, None, None, None, NOT_OBSERVED_MESSAGE)
    assert answers["1.0.0.5"].noise is True


def test_five_failed_ips_in_a_row_of_any_kind_stop_the_pass_and_an_answer_resets_the_count(server):
    ips = [f"8.8.{i}.1" for i in range(8)]
    with GreyNoiseClient(f"{server.url}/not/the/api", KEY, rate_per_s=1000, max_retries=0) as client:
        wrong_url = client.lookup(ips)  # every answer is the server's HTML 404 page
    assert len(server.requests) == 5
    assert [wrong_url.failed[ip] for ip in ips] == ["HTTP 404 without a GreyNoise answer"] * 5 + [UNAVAILABLE] * 3

    server.reset(default=status(403, {"message": "Forbidden"}))
    server.script(ips[2], observed())
    with client_for(server, max_retries=0) as client:
        forbidden = client.lookup([*ips, "9.9.9.9"])
    assert server.asked() == ips  # two 403s, an answer, then five 403s in a row stop the pass
    assert set(forbidden.answers) == {ips[2]}
    assert forbidden.failed == {**dict.fromkeys([*ips[:2], *ips[3:]], "HTTP 403"), "9.9.9.9": UNAVAILABLE}


def test_a_redirect_is_not_followed_so_the_key_never_reaches_another_host(server):
    with FakeGreyNoise(KEY) as elsewhere:
        target = elsewhere.url.replace("127.0.0.1", "localhost")
        server.script("8.8.8.8", status(302, "", {"Location": f"{target}/v3/community/8.8.8.8"}))
        server.script("8.8.4.4", status(301, "", {"Location": "/v3/community/8.8.4.4/"}))
        with client_for(server) as client:
            result = client.lookup(["8.8.8.8", "8.8.4.4"])
        assert elsewhere.requests == []
    assert result.failed == {"8.8.8.8": "HTTP 302", "8.8.4.4": "HTTP 301"}  # kept for the retry list
    assert server.asked() == ["8.8.8.8", "8.8.4.4"]


def test_a_wrong_base_url_path_fails_instead_of_caching_not_observed(server):
    with GreyNoiseClient(f"{server.url}/wrong/prefix/", KEY, rate_per_s=1000) as client:
        result = client.lookup(["8.8.8.8"])
    assert server.requests[0].path == "/wrong/prefix/v3/community/8.8.8.8"
    assert result.failed == {"8.8.8.8": "HTTP 404 without a GreyNoise answer"}


def test_requests_are_spaced_by_the_rate_limit_as_measured_by_the_server(server):
    ips = [f"8.8.{i}.8" for i in range(8)]
    with client_for(server, rate_per_s=10) as client:
        result = client.lookup(ips[:4])
        result_2 = client.lookup(ips[4:])  # the spacing holds across calls of one client
    assert len(result.answers) + len(result_2.answers) == 8
    arrivals = server.arrivals()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    # Arrival times jitter by a few ms (each request is a new connection); the span cannot.
    assert len(gaps) == 7 and arrivals[-1] - arrivals[0] >= 7 / 10 - 0.01, gaps
    assert min(gaps) >= 0.6 / 10, gaps  # no burst


def test_the_pacer_waits_exactly_the_gap_on_an_injected_clock(server):
    now = [100.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    with client_for(server, rate_per_s=4, clock=lambda: now[0], sleep=sleep) as client:
        client.lookup(["8.8.8.8", "8.8.4.4", "1.1.1.1"])
    assert waits == [0.25, 0.25]


def test_the_budget_caps_requests_and_the_rest_fail_as_budget_exhausted(server):
    ips = ["8.8.8.8", "8.8.4.4", "2001:db8::1", "1.1.1.1", "9.9.9.9"]
    with client_for(server) as client:
        result = client.lookup(ips, budget=2)
        nothing = client.lookup(ips, budget=0)
        unlimited = client.lookup(ips)
    assert set(result.answers) == {"8.8.8.8", "8.8.4.4"}
    assert result.failed == {"1.1.1.1": BUDGET_EXHAUSTED, "9.9.9.9": BUDGET_EXHAUSTED}
    assert result.skipped == {"2001:db8::1": SKIP_IPV6}
    assert nothing.requests_made == 0 and set(nothing.failed) == {"8.8.8.8", "8.8.4.4", "1.1.1.1", "9.9.9.9"}
    assert len(unlimited.answers) == 4
    assert len(server.requests) == 2 + 0 + 4


def test_transport_retries_count_against_the_budget(server):
    server.script("8.8.8.8", status(503), status(503), status(503))
    with client_for(server, max_retries=3) as client:
        result = client.lookup(["8.8.8.8", "8.8.4.4"], budget=2)
    assert server.asked() == ["8.8.8.8", "8.8.8.8"]  # urllib3 stopped retrying when the budget was spent
    assert result.failed == {"8.8.8.8": "HTTP 503", "8.8.4.4": BUDGET_EXHAUSTED}
    assert result.requests_made == 2


def test_the_key_is_sent_only_in_its_header_and_never_logged_raised_or_shown(server, caplog):
    caplog.set_level(logging.DEBUG)  # urllib3 and requests at their most verbose
    server.script("8.8.8.8", status(503), status(429, headers={"Retry-After": "0"}))
    server.script("8.8.4.4", not_observed())
    server.script("9.9.9.9", status(200, "garbage"))
    server.script("1.1.1.1", slow(0.5, observed()), slow(0.5, observed()))
    server.script("1.0.0.1", status(400))
    with client_for(server, timeout_s=0.2, max_retries=1) as client:
        result = client.lookup(["8.8.8.8", "8.8.4.4", "9.9.9.9", "1.1.1.1", "1.0.0.1", "2001:db8::1"])
        shown = [repr(client), str(client), repr(result)]
    with GreyNoiseClient(server.url, KEY + "-revoked", rate_per_s=1000) as client:
        with pytest.raises(GreyNoiseAuthError) as raised:
            client.lookup(["8.8.8.8"])
    shown += [str(raised.value), repr(raised.value)]

    assert set(result.answers) == {"8.8.8.8", "8.8.4.4"} and set(result.failed) == {"9.9.9.9", "1.1.1.1"}
    assert all(KEY not in text for text in [caplog.text, *shown, *result.failed.values(), *result.skipped.values()])
    assert "GET /v3/community/" in caplog.text  # the logs were really captured
    assert all(KEY not in seen.path + seen.query for seen in server.requests)
    assert {seen.key for seen in server.requests} == {KEY, KEY + "-revoked"}


def test_base_urls_must_be_http_without_query():
    for bad in ("ftp://api.greynoise.io", "api.greynoise.io", "https://api.greynoise.io/?x=1", "https://"):
        with pytest.raises(ValueError):
            GreyNoiseClient(bad, KEY)


def test_base_urls_with_credentials_bad_ports_or_hidden_characters_are_refused_without_quoting_them():
    bad_urls = (
        f"https://api.greynoise.io/?key={KEY}",
        f"https://api.greynoise.io/v3?#{KEY}",
        f"https://user:{KEY}@api.greynoise.io",
        f"https://{KEY}@api.greynoise.io",
        f"http://evil.example\\@api.greynoise.io/{KEY}",
        f"https://api.greynoise.io/{KEY}\nX-Injected: 1",  # urlsplit alone would silently drop the newline
        f"https://api.greynoise.io/ {KEY}",
        f"https://api.greynoise.io:{KEY}",
        "https://api.greynoise.io:99999",
        "http://:8080",
    )
    for bad in bad_urls:
        with pytest.raises(ValueError) as raised:
            GreyNoiseClient(bad, KEY)
        assert "GREYNOISE_API_URL" in str(raised.value) and KEY not in str(raised.value), bad
    assert GreyNoiseClient(" https://api.greynoise.io/ \n", KEY).base_url == "https://api.greynoise.io"
    assert GreyNoiseClient("http://[::1]:8080/prefix/", KEY).base_url == "http://[::1]:8080/prefix"


def test_skip_reason_accepts_only_canonical_global_ipv4():
    assert skip_reason("8.8.8.8") is None
    assert skip_reason("::ffff:8.8.8.8") == SKIP_NOT_IP  # callers pass canonical IPs; this is not one
    assert skip_reason("100.64.0.1") == SKIP_NOT_GLOBAL  # carrier-grade NAT
    assert skip_reason("2a00:1450:4001::1") == SKIP_IPV6
    assert skip_reason(None) == SKIP_NOT_IP  # type: ignore[arg-type]  # a missing value in a frame: no crash


def test_the_frame_has_one_typed_row_per_ip_and_answers_round_trip_to_the_inventory_object():
    answer = GreyNoiseAnswer("8.8.8.8", True, True, False, "malicious", "x", None, "2018-05-07", "Success")
    missing = GreyNoiseAnswer("8.8.4.4", False, False, False, None, None, None, None, NOT_OBSERVED_MESSAGE)
    result = GreyNoiseLookupResult(
        answers={"8.8.8.8": answer, "8.8.4.4": missing},
        skipped={"2001:db8::1": SKIP_IPV6},
        failed={"9.9.9.9": RATE_LIMITED},
    )
    ips = ["8.8.8.8", "8.8.4.4", "2001:db8::1", "9.9.9.9", "1.1.1.1", "1.0.0.1", "8.8.8.8"]
    frame = greynoise_frame(ips, result, fresh={"1.1.1.1"})

    assert dict(frame.dtypes.astype(str)) == GREYNOISE_COLUMNS
    assert frame["ip"].tolist() == ips[:-1]
    assert frame["status"].tolist() == ["observed", "not_observed", "skipped", "failed", "fresh", "failed"]
    assert frame["error"].tolist()[2:4] == [SKIP_IPV6, RATE_LIMITED] and frame["error"].iloc[5] == "not looked up"
    rows = records(frame)  # as the merge reads the frame
    assert greynoise_enrichment(rows[0]) == answer.as_dict()
    assert greynoise_enrichment(rows[1]) == missing.as_dict()
    assert [greynoise_enrichment(row) for row in rows[2:]] == [None] * 4
    assert summarize_greynoise({"greynoise": answer.as_dict()}) == (
        summarize_greynoise({"greynoise": greynoise_enrichment(rows[0])})
    )
    assert summarize_greynoise({"greynoise": answer.as_dict()}).classification == "malicious"
    assert status_counts(frame) == {
        "observed": 1,
        "not_observed": 1,
        "fresh": 1,
        "skipped": 1,
        "failed": 2,
        "disabled": 0,
    }
    disabled = greynoise_frame(ips, None)
    assert set(disabled["status"]) == {"disabled"} and len(disabled) == 6
    assert isinstance(greynoise_frame([], None), pd.DataFrame)


# --- The daily budget table ------------------------------------------------------------------------------


# `engine` (support.postgres): a SQLite file and PostgreSQL, each with a new, empty schema.


def test_reservations_are_granted_up_to_the_daily_limit_and_given_back(engine):
    budget = GreyNoiseDailyBudget(engine, daily_limit=10)
    assert budget.left(DAY) == 10
    assert budget.reserve(DAY, 4) == 4
    assert budget.reserve(DAY, 10) == 6
    assert budget.reserve(DAY, 1) == 0 and budget.left(DAY) == 0
    budget.give_back(DAY, 3)
    assert budget.used(DAY) == 7 and budget.left(DAY) == 3
    assert budget.left(date(2026, 1, 3)) == 10  # a new UTC day, a new budget
    # Another process opening the same database sees the same count.
    assert GreyNoiseDailyBudget(engine, daily_limit=10).used(DAY) == 7


def test_concurrent_reservations_never_exceed_the_limit(engine):
    budget = GreyNoiseDailyBudget(engine, daily_limit=100)
    granted: list[int] = []
    lock = threading.Lock()

    def reserve() -> None:
        for _ in range(5):
            amount = budget.reserve(DAY, 7)
            with lock:
                granted.append(amount)

    threads = [threading.Thread(target=reserve) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(granted) == 100 and budget.used(DAY) == 100


def test_a_budgeted_lookup_charges_only_the_requests_sent_even_after_a_401(server, engine):
    budget = GreyNoiseDailyBudget(engine, daily_limit=50)
    with client_for(server, max_retries=3) as client:
        result = budgeted_lookup(client, budget, ["8.8.8.8", "8.8.4.4", "10.0.0.1", "2001:db8::1"], day=DAY)
    assert len(result.answers) == 2 and budget.used(DAY) == 2

    with GreyNoiseClient(server.url, "gn-other-key", rate_per_s=1000) as client, pytest.raises(GreyNoiseAuthError):
        budgeted_lookup(client, budget, ["1.1.1.1", "9.9.9.9"], day=DAY)
    assert budget.used(DAY) == 3


def test_a_budgeted_lookup_stops_at_what_is_left_of_the_day(server, engine):
    budget = GreyNoiseDailyBudget(engine, daily_limit=3)
    with client_for(server) as client:
        first = budgeted_lookup(client, budget, ["8.8.8.8", "8.8.4.4"], day=DAY)
        second = budgeted_lookup(client, budget, ["1.1.1.1", "9.9.9.9", "1.0.0.1"], day=DAY)
    assert len(first.answers) == 2
    assert set(second.answers) == {"1.1.1.1"}
    assert second.failed == {"9.9.9.9": BUDGET_EXHAUSTED, "1.0.0.1": BUDGET_EXHAUSTED}
    assert len(server.requests) == 3 and budget.left(DAY) == 0


# Run in a fresh interpreter: this one has long since imported the client. The second half proves the probe
# sees requests once something does load it.
NO_HTTP_STACK_PROBE = """
import sys
import enrichment_pipeline.definitions
loaded = sorted({"requests", "urllib3"} & set(sys.modules))
assert not loaded, f"importing the definitions without a GreyNoise key loaded {loaded}"
import enrichment_pipeline.core.greynoise_client
assert "requests" in sys.modules and "urllib3" in sys.modules
"""


def test_a_run_without_a_key_never_imports_requests_or_urllib3():
    environment = {name: value for name, value in os.environ.items() if name != "GREYNOISE_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-c", NO_HTTP_STACK_PROBE],
        cwd=Path(__file__).resolve().parents[1],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
