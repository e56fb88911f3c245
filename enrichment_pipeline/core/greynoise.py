"""GreyNoise Community API: a paced, budgeted HTTP client (the budget itself is kept in the inventory).
The API key travels only in the `key` request header: never in a URL, a log line, an exception or a repr."""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.util.retry import Retry

from enrichment_pipeline.core.eligibility import greynoise_skip_reason as skip_reason
from enrichment_pipeline.core.ips import canonical_ip

log = logging.getLogger(__name__)

COMMUNITY_PATH = "/v3/community/"
USER_AGENT = "enrichment-pipeline (cowrie honeypot enrichment)"

# Outcomes of one IP, the `status` column of the frame.
OBSERVED, NOT_OBSERVED, FRESH, SKIPPED, FAILED, DISABLED = (
    "observed",
    "not_observed",
    "fresh",
    "skipped",
    "failed",
    "disabled",
)
STATUSES: tuple[str, ...] = (OBSERVED, NOT_OBSERVED, FRESH, SKIPPED, FAILED, DISABLED)

# Reasons an IP was skipped (never asked again) or failed (kept for the retry list).
SKIP_REJECTED = "rejected by GreyNoise (HTTP 400)"
BUDGET_EXHAUSTED = "daily budget exhausted"
RATE_LIMITED = "rate limited"
UNAVAILABLE = "not asked: GreyNoise unavailable"
DEADLINE_PASSED = "not asked: GreyNoise pass deadline passed"
TOO_MANY_TIMEOUTS = "not asked: GreyNoise timed out too often"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection error"
INVALID_JSON = "invalid JSON"
UNEXPECTED_ANSWER = "unexpected answer"
OVERSIZED_REPLY = "oversized reply"
AUTH_MESSAGE = "GreyNoise rejected the API key (HTTP 401 Unauthorized): check GREYNOISE_API_KEY"

# 5xx answers urllib3 retries with backoff; 429 is handled by the client itself (Retry-After, give up).
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_TRANSPORT_BACKOFF_S = 0.5  # urllib3 backoff factor: 0, 1, 2, 4 s ... between transport retries
_TRANSPORT_BACKOFF_MAX_S = 8.0
_RATE_LIMIT_BACKOFF_S = 2.0  # 429 without Retry-After: wait 2, 4, 8 s ... before asking again
_MAX_RATE_LIMIT_WAIT_S = 60.0  # a longer Retry-After (a spent quota) ends the pass: the retry list waits instead
# Failed IPs in a row (transport errors, 5xx, 403, redirects, bodies that are not answers) that mean GreyNoise
# is down or the base URL is wrong: stop asking instead of spending the day's budget on failures.
_MAX_FAILURES_IN_ROW = 5
# Lookups ending in a timeout, in total: an endpoint that hangs on some requests and answers the others never
# fails five in a row, yet each hang costs the full timeout (and its retries).
_MAX_TIMEOUTS_PER_PASS = 3
_MIN_REQUEST_TIMEOUT_S = 0.05  # a request sent just before the deadline still gets a usable timeout
_MAX_REPLY_BYTES = 64 * 1024  # a community answer is a few hundred bytes
_HEADER_SAFE_KEY = re.compile(r"[\x21-\x7e]{1,256}")  # visible ASCII: a valid header value, nothing to escape
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DATE_PREFIX = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_URL_UNSAFE = re.compile(r"[\x00-\x20\x7f\\@?#]")  # no spaces, backslash, credentials, query or fragment
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,6})?")
_MAX_TEXT = 256


class GreyNoiseAuthError(Exception):
    """The API key is missing, malformed or rejected (401): the whole pass stops. Never carries the key."""


@dataclass(frozen=True)
class GreyNoiseAnswer:
    """What GreyNoise said about one IP; `observed` is False for a 404 "not observed" (a cacheable answer)."""

    ip: str
    observed: bool
    noise: bool
    riot: bool
    classification: str | None
    name: str | None
    link: str | None
    last_seen: str | None
    message: str | None

    def as_dict(self) -> dict[str, Any]:
        """The inventory's `enrichment["greynoise"]` object (core.merge.summarize_greynoise reads it)."""
        answer = asdict(self)
        del answer["ip"]
        return answer

    @classmethod
    def from_json(cls, ip: str, payload: object, *, observed: bool) -> GreyNoiseAnswer | None:
        """Validate a 200 (observed) or 404 (not observed) body; None if it is not a GreyNoise answer for `ip`.

        Both documented bodies name the IP and carry the noise/riot flags. An object naming another IP, or
        naming none and carrying neither flag (a proxy's or web framework's JSON error), is not an answer.
        Every other field is optional: missing or null is None, and null flags are False.
        """
        if not isinstance(payload, Mapping):
            return None
        noise, riot = payload.get("noise"), payload.get("riot")
        named = payload.get("ip")
        if named is None and not isinstance(noise, bool) and not isinstance(riot, bool):
            return None
        if named is not None and canonical_ip(named) != ip:
            return None
        noise, riot = False if noise is None else noise, False if riot is None else riot
        if not isinstance(noise, bool) or not isinstance(riot, bool):
            return None
        classification = _text(payload.get("classification"), 32)
        link = _text(payload.get("link"), 512)
        return cls(
            ip=ip,
            observed=observed,
            noise=noise,
            riot=riot,
            classification=classification.lower() if classification else None,
            name=_text(payload.get("name"), _MAX_TEXT),
            # Shown as a link in the UI: only web links, never javascript: or data: URLs.
            link=link if link and link.startswith(("https://", "http://")) else None,
            last_seen=_utc_date(payload.get("last_seen")),
            message=_text(payload.get("message"), _MAX_TEXT),
        )


@dataclass
class GreyNoiseLookupResult:
    """Every IP asked about ends in exactly one of `answers`, `skipped` (never retried) or `failed` (retry later)."""

    answers: dict[str, GreyNoiseAnswer] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    requests_made: int = 0
    stop_reason: str | None = None  # why the pass stopped before asking about every IP, if it did
    not_reached: int = 0  # IPs put in `failed` without being asked (budget, deadline, give-up rules)


@dataclass(frozen=True)
class _Reply:
    status: int
    retry_after: str | None
    body: bytes | None  # None: longer than _MAX_REPLY_BYTES


@dataclass(frozen=True)
class _Skipped:
    reason: str


@dataclass(frozen=True)
class _Failed:
    reason: str


class _Pacer:
    """Spaces requests at least 1/rate_per_s apart and counts them against an optional budget."""

    def __init__(self, rate_per_s: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be positive, got {rate_per_s!r}")
        self.interval = 1.0 / rate_per_s
        self._clock = clock
        self._sleep = sleep
        self._next_slot: float | None = None
        self.sent = 0
        self.limit: int | None = None  # the value of `sent` at which the budget is spent
        self.deadline: float | None = None  # clock reading at which the pass stops asking

    @property
    def spent(self) -> bool:
        return self.limit is not None and self.sent >= self.limit

    def time_left(self) -> float:
        """Seconds until the pass deadline (infinite without one; negative once passed)."""
        return float("inf") if self.deadline is None else self.deadline - self._clock()

    def take(self) -> None:
        """Wait for the next free slot, then count one request."""
        now = self._clock()
        if self._next_slot is not None and now < self._next_slot:
            self._sleep(self._next_slot - now)
            # Re-read the clock: a late wake-up must not shrink the gap before the next request.
            now = max(self._clock(), self._next_slot)
        self._next_slot = now + self.interval
        self.sent += 1

    def pause(self, seconds: float) -> None:
        if seconds > 0:
            self._sleep(seconds)


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


def _stop_reason(outcome: GreyNoiseAnswer | _Skipped | _Failed, failures_in_row: int, timeouts: int) -> str | None:
    """Why the pass should not ask about any further IP, if it should stop."""
    if isinstance(outcome, _Failed) and outcome.reason == RATE_LIMITED:
        log.warning("GreyNoise keeps answering 429: the remaining IPs wait for the retry list")
        return RATE_LIMITED
    if failures_in_row >= _MAX_FAILURES_IN_ROW:
        log.warning("GreyNoise failed %d times in a row: not asking about the remaining IPs", failures_in_row)
        return UNAVAILABLE
    if timeouts >= _MAX_TIMEOUTS_PER_PASS:
        log.warning("GreyNoise timed out %d times in this pass: not asking about the remaining IPs", timeouts)
        return TOO_MANY_TIMEOUTS
    return None


def _interpret(ip: str, reply: _Reply) -> GreyNoiseAnswer | _Skipped | _Failed:
    if reply.status == 401:
        raise GreyNoiseAuthError(AUTH_MESSAGE)
    if reply.status == 400:
        return _Skipped(SKIP_REJECTED)
    if reply.status in (200, 404):
        if reply.body is None:
            return _Failed(OVERSIZED_REPLY)
        try:  # whatever the Content-Type says: only the body decides
            payload = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            # A 404 that is not JSON (an HTML page, an empty body) comes from a wrong base URL or a proxy, not
            # from GreyNoise, whose 404 always names the IP: caching it as "not observed" would hide the IP
            # for the whole TTL, while a failure is retried later and, five in a row, stops the pass.
            return _Failed(INVALID_JSON if reply.status == 200 else "HTTP 404 without a GreyNoise answer")
        answer = GreyNoiseAnswer.from_json(ip, payload, observed=reply.status == 200)
        return answer if answer is not None else _Failed(UNEXPECTED_ANSWER)
    # 403, redirects (never followed: the key must not travel to another host), 5xx after urllib3's retries...
    return _Failed(f"HTTP {reply.status}")


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


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (a number or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):  # delay-seconds (an integer by the RFC; a decimal is read too)
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _utc_date(value: object) -> str | None:
    """`last_seen` as the documented YYYY-MM-DD: a date, or a datetime taken as UTC; None when unreadable."""
    text = _text(value, 64)
    if text is None or not _DATE_PREFIX.match(text):
        return None
    try:
        moment = datetime.fromisoformat(text)
        return (moment.astimezone(UTC) if moment.tzinfo else moment).date().isoformat()
    except (ValueError, OverflowError):
        pass
    try:  # "2018-05-07 10:00:00 UTC" and the like: the date part is enough
        return date.fromisoformat(text[:10]).isoformat()
    except ValueError:
        return None


def _text(value: object, limit: int) -> str | None:
    if not isinstance(value, str):
        return None
    cleaned = _CONTROL.sub(" ", value).strip()[:limit]
    return cleaned or None


class RequestBudget(Protocol):
    """Requests granted per day, shared by every run (`inventory.greynoise_budget.GreyNoiseDailyBudget`)."""

    def reserve(self, day: date, wanted: int) -> int: ...

    def give_back(self, day: date, unused: int) -> None: ...


def budgeted_lookup(
    client: GreyNoiseClient, budget: RequestBudget, ips: Iterable[str], *, day: date
) -> GreyNoiseLookupResult:
    """`client.lookup` within what is left of `day`'s budget; only the requests actually sent are charged."""
    ips = list(dict.fromkeys(ips))
    askable = sum(skip_reason(ip) is None for ip in ips)
    granted = budget.reserve(day, askable * (1 + client.max_retries))  # the worst case this pass could send
    sent_before = client.requests_sent
    try:
        return client.lookup(ips, budget=granted)
    finally:  # also after a 401: what was sent is charged, the rest goes back
        budget.give_back(day, granted - (client.requests_sent - sent_before))
