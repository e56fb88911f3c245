"""The earliest and latest of two optional moments, a missing one ignored as SQL's MIN and MAX ignore NULL:
how a first/last seen is combined wherever activity is summed (sensors of a day, days of an IP, IPs of an ASN)."""

from __future__ import annotations

from datetime import datetime


def earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)
