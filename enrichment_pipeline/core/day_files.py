"""Per-IP frames stored as one Parquet file per asset and day: `<directory>/<YYYY-MM-DD>.parquet`.

A frame covering several days (a range run) carries a `day` column and is split on it; a range loads back
as one frame, in day order. Parquet keeps the column types (nullable integers, strings, UTC timestamps),
so a day's file reads back equal with plain `pandas.read_parquet`, whatever pandas version wrote it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

DAY_COLUMN = "day"
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # a partition key is a file name: nothing else may be one


def day_file(directory: Path, day: str) -> Path:
    if not _DAY.fullmatch(day):
        raise ValueError(f"not a day partition key: {day!r}")
    return directory / f"{day}.parquet"


def write_days(directory: Path, frame: pd.DataFrame, days: Sequence[str]) -> list[Path]:
    """Write the rows of each of `days` to its file (a day without rows gets an empty file of the same
    columns); each file replaces the old one atomically. Rows of any other day are an error."""
    if DAY_COLUMN not in frame.columns:
        raise ValueError(f"a per-day frame needs a {DAY_COLUMN!r} column; got {list(frame.columns)}")
    unexpected = set(frame[DAY_COLUMN].dropna().unique()) - set(days)
    if unexpected or frame[DAY_COLUMN].isna().any():
        raise ValueError(f"frame holds rows outside the days written ({sorted(map(str, unexpected))})")
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for day in days:
        path = day_file(directory, day)
        part = frame.loc[frame[DAY_COLUMN] == day].reset_index(drop=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        part.to_parquet(temporary, index=False)
        os.replace(temporary, path)  # a reader sees the old file or the new one, never half of one
        paths.append(path)
    return paths


def read_days(directory: Path, days: Sequence[str]) -> pd.DataFrame:
    """The rows of `days` as one frame, in day order; a day never written is a clear error."""
    frames = []
    for day in days:
        path = day_file(directory, day)
        if not path.exists():
            raise FileNotFoundError(f"no stored output for {day}: {path} does not exist (materialize that day first)")
        frames.append(pd.read_parquet(path))
    if len(frames) == 1:
        return frames[0]
    filled = [frame for frame in frames if len(frame)] or frames[:1]  # empty parts add no rows nor dtypes
    return pd.concat(filled, ignore_index=True)
