"""A loopback GreyNoise Community API for tests: pytest-httpserver on 127.0.0.1 (threaded), scripted replies
per IP, and a log of what arrived with server-side timestamps, so tests judge the client by what the server saw."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

Reply = Callable[[str], Response]  # builds the response for the IP in the path

_CLASSIFICATIONS = ("malicious", "benign", "unknown")
NOT_OBSERVED_MESSAGE = "IP not observed scanning the internet or contained in RIOT data set."


@dataclass(frozen=True)
class SeenRequest:
    path: str
    query: str
    key: str | None
    arrived: float  # time.monotonic() when the server started handling it


def observed(classification: str | None = None, **fields: object) -> Reply:
    """200: a noise answer; the classification defaults to one derived from the IP (stable, all three kinds)."""

    def reply(ip: str) -> Response:
        kind = classification or _CLASSIFICATIONS[hashlib.sha256(ip.encode()).digest()[0] % 3]
        body = {
            "ip": ip,
            "noise": True,
            "riot": False,
            "classification": kind,
            "name": "unknown",
            "link": f"https://viz.greynoise.io/ip/{ip}",
            "last_seen": "2018-05-07",
            "message": "Success",
            **fields,
        }
        return json_reply(200, body)

    return reply


def not_observed() -> Reply:
    return lambda ip: json_reply(404, {"ip": ip, "noise": False, "riot": False, "message": NOT_OBSERVED_MESSAGE})


def status(code: int, body: object = None, headers: dict[str, str] | None = None) -> Reply:
    """Any status with a JSON body (a str or bytes body is sent as is)."""
    return lambda ip: json_reply(code, body, headers)


def slow(seconds: float, then: Reply) -> Reply:
    def reply(ip: str) -> Response:
        time.sleep(seconds)
        return then(ip)

    return reply


def json_reply(code: int, body: object, headers: dict[str, str] | None = None) -> Response:
    if isinstance(body, (str, bytes)):
        return Response(body, status=code, headers=headers, content_type="text/html")
    payload = json.dumps(body if body is not None else {"message": f"status {code}"})
    return Response(payload, status=code, headers=headers, content_type="application/json")


class FakeGreyNoise:
    """`GET /v3/community/<ip>` with header `key`: a wrong key gets 401; other IPs get their scripted replies
    in order, then `default` (observed). Anything else is an HTML 404, like a wrong base URL would get.

    `stall_every=n`: every n-th keyed community request is read and logged but never answered; its handler
    holds the socket until the server shuts down, like an endpoint that accepts connections and then hangs."""

    def __init__(self, api_key: str, default: Reply | None = None, *, stall_every: int = 0) -> None:
        self.api_key = api_key
        self.default = default or observed()
        self.stall_every = stall_every
        self._keyed_requests = 0
        self._shutting_down = threading.Event()  # releases stalled handlers, so stop() is not held up
        self.requests: list[SeenRequest] = []
        self._scripts: dict[str, deque[Reply]] = {}
        self._lock = threading.Lock()
        self._server = HTTPServer(host="127.0.0.1", port=0, threaded=True)

    def __enter__(self) -> FakeGreyNoise:
        self._server.expect_request(re.compile(r".*")).respond_with_handler(self._handle)
        self._server.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._shutting_down.set()
        self._server.clear()
        self._server.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    def reset(self, default: Reply | None = None, *, stall_every: int = 0) -> None:
        """Forget scripts and logged requests, so one running server can serve many tests."""
        with self._lock:
            self.default = default or observed()
            self.stall_every = stall_every
            self._keyed_requests = 0
            self._scripts.clear()
            self.requests.clear()

    def script(self, ip: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts.setdefault(ip, deque()).extend(replies)

    def asked(self) -> list[str]:
        """The IPs of every community request, in arrival order (retries repeat an IP)."""
        with self._lock:
            return [seen.path.removeprefix("/v3/community/") for seen in self.requests]

    def arrivals(self) -> list[float]:
        with self._lock:
            return [seen.arrived for seen in self.requests]

    def _handle(self, request: Request) -> Response:
        arrived = time.monotonic()
        with self._lock:
            self.requests.append(
                SeenRequest(request.path, request.query_string.decode(), request.headers.get("key"), arrived)
            )
            ip = request.path.removeprefix("/v3/community/")
            if not request.path.startswith("/v3/community/") or request.method != "GET":
                return Response("<html><body>Not Found</body></html>", status=404, content_type="text/html")
            if request.headers.get("key") != self.api_key:
                return json_reply(401, {"message": "Unauthorized"})
            self._keyed_requests += 1
            stall = self.stall_every > 0 and self._keyed_requests % self.stall_every == 0
            script = None if stall else self._scripts.get(ip)
            reply = script.popleft() if script else self.default
        if stall:
            self._shutting_down.wait()  # outside the lock: other requests are served meanwhile
            return json_reply(503, {"message": "stalled request released at shutdown"})
        return reply(ip)
