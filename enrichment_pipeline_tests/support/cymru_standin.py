"""Pytest plugin: the loopback Team Cymru stand-in. Fixture: `standin`, a fresh server per test.
Helper: `sent`, the IPs it was asked for."""

from __future__ import annotations

import pytest

from enrichment_pipeline.standins.cymru_server import CymruStandinServer


@pytest.fixture
def standin():
    with CymruStandinServer() as server:
        yield server


def sent(server: CymruStandinServer, since: int = 0) -> list[str]:
    """Every IP sent to the stand-in in its requests from number `since` on, sorted."""
    return sorted(ip for request in server.requests[since:] for ip in request)
