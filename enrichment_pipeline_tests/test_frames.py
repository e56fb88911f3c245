"""Tests for the frame conversions: whole columns become plain Python values (None where missing) exactly as
the inventory stores them, whatever the pandas dtype."""

from __future__ import annotations

import datetime

import orjson
import pandas as pd
import pytest

from enrichment_pipeline.core.activity import SourceIpActivity
from enrichment_pipeline.core.cymru import BulkLookupResult, CymruAnswer, CymruOrigin
from enrichment_pipeline.core.frames import (
    activity_by_day,
    cymru_frame,
    day_activity,
    maxmind_frame,
    python_values,
    records,
    sensor_activity_by_day,
    sensor_activity_frame,
    source_updates,
    sources_frame,
    split_days,
    typed_frame,
    with_day,
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


def test_typed_frame_has_exactly_the_declared_columns_and_types_with_or_without_rows() -> None:
    columns = {
        "text": "string",
        "count": "Int64",
        "share": "float64",
        "flag": "boolean",
        "moment": "datetime64[us, UTC]",
    }
    rows = [{"text": "a", "count": 7, "share": 0.5, "flag": True, "moment": NOON, "ignored": 1}, {"count": None}]
    frame = typed_frame(iter(rows), columns)  # any iterable of rows
    assert list(frame.columns) == list(columns) and frame.index.tolist() == [0, 1]
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == columns
    # A key a row lacks, or None, is a missing value of the column's type.
    assert frame.iloc[1].isna().all()
    assert frame.equals(pd.DataFrame.from_records(rows, columns=list(columns)).astype(columns))
    empty = typed_frame([], columns)
    assert empty.empty and {name: str(dtype) for name, dtype in empty.dtypes.items()} == columns


def _range_frame() -> pd.DataFrame:
    """Two days of one range run's sources, the second day's rows first (frames are not sorted by day)."""
    first = sources_frame([SourceIpActivity("192.0.2.1", 1, 2, NOON, NOON)])
    second = sources_frame(
        [SourceIpActivity("192.0.2.2", 3, 4, None, None), SourceIpActivity("192.0.2.1", 5, 6, NOON, NOON)]
    )
    return pd.concat([with_day(second, "2018-05-02"), with_day(first, "2018-05-01")], ignore_index=True)


def test_split_days_gives_each_day_its_rows_and_a_day_without_rows_an_empty_frame() -> None:
    frame = _range_frame()
    parts = split_days(frame, ["2018-05-01", "2018-05-02", "2018-05-03"])
    assert list(parts) == ["2018-05-01", "2018-05-02", "2018-05-03"]
    assert parts["2018-05-01"]["ip"].tolist() == ["192.0.2.1"]
    assert parts["2018-05-02"]["ip"].tolist() == ["192.0.2.2", "192.0.2.1"]
    assert parts["2018-05-02"].index.tolist() == [0, 1]
    assert parts["2018-05-03"].empty and list(parts["2018-05-03"].columns) == list(frame.columns)
    assert parts["2018-05-03"].dtypes.equals(frame.dtypes)


def test_activity_by_day_converts_the_range_once_into_each_days_rows() -> None:
    frame = _range_frame()
    by_day = activity_by_day(frame, ["2018-05-01", "2018-05-02", "2018-05-03"])
    assert by_day == {
        "2018-05-01": [DayActivity("192.0.2.1", 1, 2, NOON, NOON)],
        "2018-05-02": [DayActivity("192.0.2.2", 3, 4, None, None), DayActivity("192.0.2.1", 5, 6, NOON, NOON)],
        "2018-05-03": [],
    }
    # Each day's rows equal the one-day conversion of that day's frame.
    assert by_day["2018-05-02"] == day_activity(split_days(frame, ["2018-05-02"])["2018-05-02"])
    # A row of a day outside the run is a bug upstream: it is not silently dropped.
    with pytest.raises(ValueError, match="2018-05-02"):
        activity_by_day(frame, ["2018-05-01"])


def test_sensor_activity_by_day_keeps_the_sensor_of_each_row() -> None:
    one = [SourceIpActivity("192.0.2.1", 1, 2, NOON, NOON)]
    frame = with_day(sensor_activity_frame({"alpha": one, "beta": one}), "2018-05-01")
    rows = sensor_activity_by_day(frame, ["2018-05-01"])["2018-05-01"]
    assert [(row.sensor, row.ip, row.session_count, row.first_seen) for row in rows] == [
        ("alpha", "192.0.2.1", 1, NOON),
        ("beta", "192.0.2.1", 1, NOON),
    ]


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
