"""GreyNoise Community API HTTP client: the `requests` session, urllib3 retries paced with the pass, capped reply
bodies and the base URL check. The API key travels only in the `key` request header: never in a URL, a log
line, an exception or a repr."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.util.retry import Retry

from enrichment_pipeline.core.greynoise import (
    _MAX_REPLY_BYTES,
    BUDGET_EXHAUSTED,
    CONNECTION_ERROR,
    DEADLINE_PASSED,
    RATE_LIMITED,
    TIMEOUT,
    GreyNoiseAnswer,
    GreyNoiseAuthError,
    GreyNoiseLookupResult,
    _Failed,
    _interpret,
    _Pacer,
    _Reply,
    _retry_after_seconds,
    _Skipped,
    _stop_reason,
    skip_reason,
)

log = logging.getLogger(__name__)

COMMUNITY_PATH = "/v3/community/"
USER_AGENT = "enrichment-pipeline (cowrie honeypot enrichment)"

# 5xx answers urllib3 retries with backoff; 429 is handled by the client itself (Retry-After, give up).
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_TRANSPORT_BACKOFF_S = 0.5  # urllib3 backoff factor: 0, 1, 2, 4 s ... between transport retries
_TRANSPORT_BACKOFF_MAX_S = 8.0
_RATE_LIMIT_BACKOFF_S = 2.0  # 429 without Retry-After: wait 2, 4, 8 s ... before asking again
_MAX_RATE_LIMIT_WAIT_S = 60.0  # a longer Retry-After (a spent quota) ends the pass: the retry list waits instead
_MIN_REQUEST_TIMEOUT_S = 0.05  # a request sent just before the deadline still gets a usable timeout
_HEADER_SAFE_KEY = re.compile(r"[\x21-\x7e]{1,256}")  # visible ASCII: a valid header value, nothing to escape
_URL_UNSAFE = re.compile(r"[\x00-\x20\x7f\\@?#]")  # no spaces, backslash, credentials, query or fragment


class _PacedRetry(Retry):
    """urllib3 retries (connection errors, 5xx) that wait for the pacer like any request and stop at the budget."""

    pacer: _Pacer

    def new(self, **kw: Any) -> _PacedRetry:
        retry = super().new(**kw)
        retry.pacer = self.pacer  # urllib3 copies a Retry per attempt; keep the shared pacer
        return retry

    def is_exhausted(self) -> bool:
        return super().is_exhausted() or self.pacer.spent or self.pacer.time_left() <= 0

    def sleep(self, response: Any = None) -> None:
        self.pacer.pause(min(self.get_backoff_time(), self.pacer.time_left()))  # no backoff past the deadline
        self.pacer.take()


class GreyNoiseClient:
    """Looks IPv4 addresses up one at a time at a steady rate, within an optional request budget.

    Transport errors and 5xx are retried by urllib3 with backoff; 429 waits for Retry-After and, if the
    server keeps refusing, the pass gives up on the remaining IPs instead of hammering; so it does after five
    failed IPs in a row, whatever the failure, after `_MAX_TIMEOUTS_PER_PASS` timed-out lookups in total (a
    server hanging on some requests), and once `pass_deadline_s` seconds (on `clock`) have passed since the
    `lookup` call began; no request's timeout reaches past that deadline. Every failed IP stays on the retry
    list. Not thread-safe.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 10.0,
        rate_per_s: float = 1.0,
        max_retries: int = 3,
        pass_deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        key = api_key.strip()
        if not key:
            raise GreyNoiseAuthError("no GreyNoise API key: set GREYNOISE_API_KEY")
        if not _HEADER_SAFE_KEY.fullmatch(key):
            # requests would echo the offending header value in its exception: refuse it here, unquoted.
            raise GreyNoiseAuthError(
                "the GreyNoise API key has characters a header cannot carry: check GREYNOISE_API_KEY"
            )
        if not timeout_s > 0 or max_retries < 0:
            raise ValueError("timeout_s must be positive and max_retries not negative")
        if pass_deadline_s is not None and not pass_deadline_s > 0:
            raise ValueError(f"pass_deadline_s must be positive, got {pass_deadline_s!r}")
        self.base_url = _checked_base_url(base_url)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.pass_deadline_s = pass_deadline_s
        self._clock = clock
        self._pacer = _Pacer(rate_per_s, clock, sleep)
        self._session = _keyed_session(key, self._pacer, max_retries)

    def __repr__(self) -> str:
        return f"GreyNoiseClient({self.base_url!r}, rate_per_s={1 / self._pacer.interval:g})"

    def __enter__(self) -> GreyNoiseClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    @property
    def requests_sent(self) -> int:
        """HTTP requests this client has sent, retries included (a budget counts these)."""
        return self._pacer.sent

    def lookup(self, ips: Iterable[str], *, budget: int | None = None) -> GreyNoiseLookupResult:
        """Ask about each distinct IP; at most `budget` requests (None: no limit), within the pass deadline.
        Raises GreyNoiseAuthError on 401."""
        result = GreyNoiseLookupResult()
        started = self._pacer.sent
        self._pacer.limit = None if budget is None else started + max(budget, 0)
        self._pacer.deadline = None if self.pass_deadline_s is None else self._clock() + self.pass_deadline_s
        stop_reason: str | None = None
        failures_in_row = timeouts = 0
        try:
            for ip in dict.fromkeys(ips):
                if (reason := skip_reason(ip)) is not None:
                    result.skipped[ip] = reason
                    continue
                if stop_reason is None and self._pacer.spent:
                    stop_reason = BUDGET_EXHAUSTED
                if stop_reason is None and self._pacer.time_left() <= 0:
                    log.warning(
                        "GreyNoise pass deadline of %g s passed: not asking about the remaining IPs",
                        self.pass_deadline_s,
                    )
                    stop_reason = DEADLINE_PASSED
                if stop_reason is not None:
                    result.failed[ip] = stop_reason
                    result.not_reached += 1
                    result.stop_reason = result.stop_reason or stop_reason
                    continue
                outcome = self._lookup_one(ip)
                if isinstance(outcome, GreyNoiseAnswer):
                    result.answers[ip] = outcome
                elif isinstance(outcome, _Skipped):
                    result.skipped[ip] = outcome.reason
                else:
                    result.failed[ip] = outcome.reason
                failures_in_row = failures_in_row + 1 if isinstance(outcome, _Failed) else 0
                timeouts += isinstance(outcome, _Failed) and outcome.reason == TIMEOUT
                stop_reason = _stop_reason(outcome, failures_in_row, timeouts)
        finally:
            self._pacer.limit = self._pacer.deadline = None
            result.requests_made = self._pacer.sent - started
        return result

    def _lookup_one(self, ip: str) -> GreyNoiseAnswer | _Skipped | _Failed:
        for attempt in range(self.max_retries + 1):
            self._pacer.take()
            reply = self._get(ip)
            if isinstance(reply, _Failed):
                return reply
            if reply.status != 429:
                return _interpret(ip, reply)
            wait = _retry_after_seconds(reply.retry_after)
            wait = _RATE_LIMIT_BACKOFF_S * 2**attempt if wait is None else wait
            # A wait past the pass deadline ends the pass like a spent quota does: the retry list waits instead.
            if attempt == self.max_retries or wait > min(_MAX_RATE_LIMIT_WAIT_S, self._pacer.time_left()):
                break
            if self._pacer.spent:
                return _Failed(BUDGET_EXHAUSTED)
            log.info("GreyNoise answered 429: waiting %.1f s before asking again", wait)
            self._pacer.pause(wait)
        return _Failed(RATE_LIMITED)

    def _get(self, ip: str) -> _Reply | _Failed:
        # The IP is canonical IPv4 (skip_reason checked it): nothing in it needs quoting.
        url = f"{self.base_url}{COMMUNITY_PATH}{ip}"
        # Capped by the time left, so a hanging request cannot hold the pass much past its deadline.
        timeout = min(self.timeout_s, max(self._pacer.time_left(), _MIN_REQUEST_TIMEOUT_S))
        try:
            # No redirects: requests would forward the `key` header to wherever a redirect points.
            with self._session.get(url, timeout=timeout, allow_redirects=False, stream=True) as response:
                return _Reply(response.status_code, response.headers.get("Retry-After"), _capped_body(response))
        except requests.Timeout:
            return _Failed(TIMEOUT)
        except requests.RequestException as error:
            # Only fixed texts leave this client: exception messages can quote URLs, headers and peers.
            return _Failed(TIMEOUT if _timed_out(error) else CONNECTION_ERROR)


def _keyed_session(key: str, pacer: _Pacer, max_retries: int) -> requests.Session:
    retry = _PacedRetry(
        total=max_retries,
        status_forcelist=_RETRY_STATUSES,
        allowed_methods=frozenset({"GET"}),
        backoff_factor=_TRANSPORT_BACKOFF_S,
        backoff_max=_TRANSPORT_BACKOFF_MAX_S,
        respect_retry_after_header=False,  # keeps 429 out of urllib3: the client decides how long to wait
        raise_on_status=False,  # after the last retry, hand back the 5xx response itself
    )
    retry.pacer = pacer
    adapter = HTTPAdapter(max_retries=retry)
    session = requests.Session()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers.update({"key": key, "Accept": "application/json", "User-Agent": USER_AGENT})
    return session


def _checked_base_url(base_url: str) -> str:
    # The message never quotes the URL: someone may have pasted the key into it (?key=..., user:key@).
    problem = "GREYNOISE_API_URL must be an http(s) URL with a host and no credentials, query, spaces or backslashes"
    text = base_url.strip()
    parts = urlsplit(text)
    try:
        port_ok = parts.port != 0
    except ValueError:  # not a number, or out of range
        port_ok = False
    # Checked on the text: urlsplit silently drops tabs and newlines, and splits "?" and "#" away.
    if parts.scheme not in ("https", "http") or not parts.hostname or not port_ok or _URL_UNSAFE.search(text):
        raise ValueError(problem)
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _capped_body(response: requests.Response) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=8192):
        size += len(chunk)
        if size > _MAX_REPLY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _timed_out(error: requests.RequestException) -> bool:
    # After its retries urllib3 reports a timeout as MaxRetryError(reason=...Timeout...) inside ConnectionError.
    cause = error.args[0] if error.args else None
    reason = cause.reason if isinstance(cause, MaxRetryError) else cause
    # urllib3 makes a refused connection (NewConnectionError) a subclass of ConnectTimeoutError.
    refused = isinstance(reason, NewConnectionError)
    return isinstance(reason, ReadTimeoutError) or (isinstance(reason, ConnectTimeoutError) and not refused)
