"""Tests for the frame conversions: whole columns become plain Python values (None where missing) exactly as
the inventory stores them, whatever the pandas dtype."""

from __future__ import annotations

import datetime

import orjson
import pandas as pd

from enrichment_pipeline.core.activity import SourceIpActivity
from enrichment_pipeline.core.cymru import BulkLookupResult, CymruAnswer, CymruOrigin
from enrichment_pipeline.core.frames import (
    cymru_frame,
    day_activity,
    maxmind_frame,
    python_values,
    records,
    source_updates,
    sources_frame,
)
from enrichment_pipeline.core.freshness import MaxMindBuilds
from enrichment_pipeline.core.inventory import DayActivity
from enrichment_pipeline.core.maxmind import MaxMindRecord

UTC = datetime.UTC
NOON = datetime.datetime(2018, 5, 7, 12, 0, 0, 123456, tzinfo=UTC)


def test_python_values_of_every_dtype_are_plain_python_with_none_where_missing() -> None:
    frame = pd.DataFrame(
        {
            "text": ["a", None],
            "count": [7, None],
            "share": [0.5, None],
            "flag": [True, False],
            "moment": [NOON, None],
            "anything": [{"k": 1}, float("nan")],
        }
    ).astype({"text": "string", "count": "Int64", "share": "Float64", "flag": "bool", "moment": "datetime64[us, UTC]"})
    values = {name: python_values(frame[name]) for name in frame.columns}
    assert values == {
        "text": ["a", None],
        "count": [7, None],
        "share": [0.5, None],
        "flag": [True, False],
        "moment": [NOON, None],
        "anything": [{"k": 1}, None],
    }
    types = [type(value) for value in values["count"] + values["moment"]]
    assert types == [int, type(None), datetime.datetime, type(None)]
    # orjson stores exactly these types; a numpy scalar or pandas Timestamp would need a default hook.
    orjson.dumps(records(frame.drop(columns="moment")))


def test_day_activity_gives_python_datetimes_and_none_for_missing_moments() -> None:
    frame = sources_frame(
        [
            SourceIpActivity("192.0.2.1", 2, 5, NOON, NOON + datetime.timedelta(hours=1)),
            SourceIpActivity("192.0.2.2", 0, 1, None, None),
        ]
    )
    assert day_activity(frame) == [
        DayActivity("192.0.2.1", 2, 5, NOON, NOON + datetime.timedelta(hours=1)),
        DayActivity("192.0.2.2", 0, 1, None, None),
    ]
    assert type(day_activity(frame)[0].first_seen) is datetime.datetime


def test_source_updates_carry_plain_values_and_every_cymru_origin() -> None:
    builds = MaxMindBuilds(1_530_576_000, None)
    maxmind = maxmind_frame(
        [
            MaxMindRecord("192.0.2.1", True, "DE", "Germany", None, 51.3, 9.5, 100, None, None),
            MaxMindRecord("192.0.2.2", False),
        ],
        builds,
    )
    origins = (
        CymruOrigin(64500, "192.0.2.0/24", "US", "arin", None, "ONE | TWO"),
        CymruOrigin(64501, "192.0.2.0/24", "US", "arin", "2001-01-01", "THREE"),
    )
    cymru = cymru_frame(
        BulkLookupResult(
            answers={"192.0.2.1": CymruAnswer("192.0.2.1", origins)}, failed={"192.0.2.2": "batch 1/1: timed out"}
        )
    )
    first, second = source_updates(maxmind, cymru)
    assert first.maxmind == {
        "found": True,
        "country_code": "DE",
        "country_name": "Germany",
        "city": None,
        "latitude": 51.3,
        "longitude": 9.5,
        "accuracy_radius": 100,
        "asn": None,
        "asn_org": None,
        **builds.as_dict(),
    }
    assert first.cymru is not None and first.cymru["asn"] == 64500 and first.cymru["as_name"] == "ONE | TWO"
    assert [origin["asn"] for origin in first.cymru["origins"]] == [64500, 64501]
    assert second.cymru is None and second.maxmind is not None and second.maxmind["found"] is False
    orjson.dumps([first.maxmind, first.cymru, second.maxmind])
