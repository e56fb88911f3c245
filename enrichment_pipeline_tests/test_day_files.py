"""The per-day Parquet files: a range is written one file per day and read back as one frame, equal to what
plain `pandas.read_parquet` gives for each day, also when days were written with different column types."""

from datetime import UTC, datetime

import pandas as pd
import pytest

from enrichment_pipeline.core.day_files import day_file, read_days, write_days

DAYS = ["2019-01-01", "2019-01-02", "2019-01-03"]


def range_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "day": ["2019-01-01", "2019-01-01", "2019-01-03"],
            "ip": pd.array(["192.0.2.1", "192.0.2.2", "192.0.2.1"], dtype="string"),
            "asn": pd.array([64500, None, 64501], dtype="Int64"),
            "first_seen": pd.to_datetime([datetime(2019, 1, 1, 3, tzinfo=UTC)] * 2 + [None], utc=True),
        },
        index=[7, 8, 9],  # the index is not stored
    )


def test_a_range_is_one_file_per_day_and_reads_back_as_the_frame(tmp_path):
    frame = range_frame()
    paths = write_days(tmp_path, frame, DAYS)

    assert paths == [day_file(tmp_path, day) for day in DAYS]
    for day in DAYS:  # each file alone, as a notebook reads it
        expected = frame.loc[frame["day"] == day].reset_index(drop=True)
        pd.testing.assert_frame_equal(pd.read_parquet(day_file(tmp_path, day)), expected)
    assert len(pd.read_parquet(day_file(tmp_path, "2019-01-02"))) == 0  # a day without rows: an empty file
    pd.testing.assert_frame_equal(read_days(tmp_path, DAYS), frame.reset_index(drop=True))
    pd.testing.assert_frame_equal(read_days(tmp_path, DAYS[2:]), frame.iloc[2:].reset_index(drop=True))


def test_days_written_with_different_types_read_back_as_pandas_would_concatenate_them(tmp_path):
    # Day 1's column held no value (no type), day 2's strings; day 3's count is an integer, day 4's a float.
    parts = {
        "2019-01-01": pd.DataFrame({"day": ["2019-01-01"], "error": [None], "count": [1]}),
        "2019-01-02": pd.DataFrame({"day": ["2019-01-02"], "error": ["timed out"], "count": [2]}),
        "2019-01-03": pd.DataFrame({"day": ["2019-01-03"], "error": ["refused"], "count": [3]}),
        "2019-01-04": pd.DataFrame({"day": ["2019-01-04"], "error": ["reset"], "count": [4.5]}),
    }
    for day, part in parts.items():
        write_days(tmp_path, part, [day])
    days = list(parts)
    expected = pd.concat([pd.read_parquet(day_file(tmp_path, day)) for day in days], ignore_index=True)

    pd.testing.assert_frame_equal(read_days(tmp_path, days), expected)
    assert read_days(tmp_path, days[:2])["error"].tolist() == [None, "timed out"]


def test_a_missing_day_names_its_file_and_rows_of_other_days_are_refused(tmp_path):
    write_days(tmp_path, range_frame(), DAYS)
    with pytest.raises(FileNotFoundError, match="2019-01-04.parquet"):
        read_days(tmp_path, [*DAYS, "2019-01-04"])
    with pytest.raises(ValueError, match="outside the days written"):
        write_days(tmp_path, range_frame(), DAYS[:1])
    with pytest.raises(ValueError, match="not a day partition key"):
        day_file(tmp_path, "../2019-01-01")
