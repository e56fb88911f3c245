"""GreyNoise Community API vocabulary: what a lookup can end in, how a reply is read, the pacing and give-up
rules of a pass, and `budgeted_lookup` (the budget itself is kept in the inventory). The HTTP client lives in
`core.greynoise_client`, so a run without an API key never loads `requests`."""

from __future__ import annotations

import email.utils
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol

import orjson

from enrichment_pipeline.core.eligibility import greynoise_skip_reason as skip_reason
from enrichment_pipeline.core.ips import canonical_ip

log = logging.getLogger(__name__)

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

# Failed IPs in a row (transport errors, 5xx, 403, redirects, bodies that are not answers) that mean GreyNoise
# is down or the base URL is wrong: stop asking instead of spending the day's budget on failures.
_MAX_FAILURES_IN_ROW = 5
# Lookups ending in a timeout, in total: an endpoint that hangs on some requests and answers the others never
# fails five in a row, yet each hang costs the full timeout (and its retries).
_MAX_TIMEOUTS_PER_PASS = 3
_MAX_REPLY_BYTES = 64 * 1024  # a community answer is a few hundred bytes
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DATE_PREFIX = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
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


class GreyNoiseLookups(Protocol):
    """What `budgeted_lookup` needs of a client (`core.greynoise_client.GreyNoiseClient`)."""

    max_retries: int

    @property
    def requests_sent(self) -> int: ...

    def lookup(self, ips: Iterable[str], *, budget: int | None = None) -> GreyNoiseLookupResult: ...


def budgeted_lookup(
    client: GreyNoiseLookups, budget: RequestBudget, ips: Iterable[str], *, day: date
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
