"""What the commands share: exit statuses, argument types (each a clear usage error, exit 2), escaping of
text that came from the network, JSON output and the inventory engine built from the same settings as the
pipeline (`resources.build_resources`)."""

from __future__ import annotations

import argparse
import re
from datetime import date, datetime
from typing import Any

import orjson
from sqlalchemy import Engine

from enrichment_pipeline.core.ips import canonical_ip
from enrichment_pipeline.resources import build_resources

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
_MAX_ASN = 2**32 - 1
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_ASN = re.compile(r"(?:AS)?(\d{1,10})", re.IGNORECASE)
_COUNTRY = re.compile(r"[A-Za-z]{2}")


def inventory_engine() -> Engine:
    """The inventory of ENRICHMENT_DB_URL, as the Dagster jobs and the `refresh` command open it."""
    return build_resources(resolved=True)["inventory"].engine()


# --- argument types ---------------------------------------------------------------------------------------


def address(text: str) -> str:
    """An IPv4/IPv6 address in canonical form (an IPv4-mapped IPv6 address becomes the IPv4 one)."""
    ip = canonical_ip(text.strip())
    if ip is None:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}")
    return ip


def day(text: str) -> date:
    """A UTC day written YYYY-MM-DD."""
    try:
        if _DAY.fullmatch(text.strip()):
            return date.fromisoformat(text.strip())
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}")


def asn(text: str) -> int:
    """An AS number, `64500` or `AS64500`."""
    match = _ASN.fullmatch(text.strip())
    number = int(match.group(1)) if match else 0
    if not 0 < number <= _MAX_ASN:
        raise argparse.ArgumentTypeError(f"not an AS number (an integer from 1 to {_MAX_ASN}): {text!r}")
    return number


def country(text: str) -> str:
    """A two-letter country code, upper-cased."""
    if not _COUNTRY.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"not a two-letter country code: {text!r}")
    return text.strip().upper()


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# --- output -----------------------------------------------------------------------------------------------


def printable(value: object, *, backslash: bool = True) -> str:
    """`value` as text for a terminal: names come from the network, so every control, format (bidi) or
    separator character is shown as an escape (`\\n`, `\\x1b`, `\\u202e`), and a backslash as `\\\\` (not for
    text that is JSON already, `backslash=False`: its backslashes are escapes themselves)."""
    text = "" if value is None else value.isoformat() if isinstance(value, datetime | date) else str(value)
    if text.isprintable() and (not backslash or "\\" not in text):
        return text
    return "".join(char if char == "\\" and not backslash else _escaped(char) for char in text)


_SHORT_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def json_text(value: Any, *, indent: bool = False) -> str:
    """JSON of plain values, datetimes as RFC 3339; control characters are escaped by JSON itself."""
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    return orjson.dumps(value, option=option).decode()
