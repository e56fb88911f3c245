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
    import pyarrow as pa  # here, not at import: only a run that stores or loads frames needs pyarrow
    import pyarrow.parquet as pq

    if DAY_COLUMN not in frame.columns:
        raise ValueError(f"a per-day frame needs a {DAY_COLUMN!r} column; got {list(frame.columns)}")
    unexpected = set(frame[DAY_COLUMN].dropna().unique()) - set(days)
    if unexpected or frame[DAY_COLUMN].isna().any():
        raise ValueError(f"frame holds rows outside the days written ({sorted(map(str, unexpected))})")
    directory.mkdir(parents=True, exist_ok=True)
    # Converted to Arrow once for the whole range, then cut per day (a conversion per day costs ~10x more).
    table = pa.Table.from_pandas(frame, preserve_index=False)
    day_of_row = frame[DAY_COLUMN].to_numpy()
    paths = []
    for day in days:
        path = day_file(directory, day)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(table.filter(day_of_row == day), temporary)
        os.replace(temporary, path)  # a reader sees the old file or the new one, never half of one
        paths.append(path)
    return paths


def read_days(directory: Path, days: Sequence[str]) -> pd.DataFrame:
    """The rows of `days` as one frame, in day order; a day never written is a clear error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for day in days:
        path = day_file(directory, day)
        if not path.exists():
            raise FileNotFoundError(f"no stored output for {day}: {path} does not exist (materialize that day first)")
        tables.append(pq.read_table(path))
    filled = [table for table in tables if table.num_rows] or tables[:1]  # empty parts add no rows nor types
    if all(table.schema.equals(filled[0].schema, check_metadata=True) for table in filled):
        # The usual case (a range run writes all its days from one table): one conversion for the range.
        return pa.concat_tables(filled).to_pandas()
    # Days written by different runs with different types (a column without any value...): pandas decides.
    return pd.concat([table.to_pandas() for table in filled], ignore_index=True)
