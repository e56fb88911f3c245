"""Tabular shapes of the per-IP asset outputs (typed pandas DataFrames) and their conversions.

Each pass outputs one row per IP so it can be previewed in the UI or a notebook; the merge turns the rows
back into per-source enrichment objects for the inventory.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
import pandas as pd

from enrichment_pipeline.core.cowrie_log import SourceIpActivity
from enrichment_pipeline.core.cymru import BulkLookupResult, CymruAnswer, CymruOrigin
from enrichment_pipeline.core.day_files import DAY_COLUMN
from enrichment_pipeline.core.freshness import (
    ASN_BUILD_KEY,
    CITY_BUILD_KEY,
    MaxMindBuilds,
)
from enrichment_pipeline.core.gc_pause import cyclic_gc_paused
from enrichment_pipeline.core.greynoise import (
    DISABLED,
    FAILED,
    FRESH,
    NOT_OBSERVED,
    OBSERVED,
    SKIPPED,
    STATUSES,
    GreyNoiseLookupResult,
)
from enrichment_pipeline.core.maxmind import MaxMindRecord
from enrichment_pipeline.core.records import DayActivity, LookupFailure, SensorActivity, SourceUpdate

SOURCE_COLUMNS = {
    "ip": "string",
    "session_count": "int64",
    "event_count": "int64",
    "first_seen": "datetime64[us, UTC]",
    "last_seen": "datetime64[us, UTC]",
}
SENSOR_ACTIVITY_COLUMNS = {"sensor": "string", **SOURCE_COLUMNS}
MAXMIND_COLUMNS = {
    "ip": "string",
    "found": "bool",
    "country_code": "string",
    "country_name": "string",
    "city": "string",
    "latitude": "Float64",
    "longitude": "Float64",
    "accuracy_radius": "Int64",
    "asn": "Int64",
    "asn_org": "string",
    CITY_BUILD_KEY: "Int64",  # which database builds answered: a new build makes stored answers stale
    ASN_BUILD_KEY: "Int64",
}
CYMRU_COLUMNS = {
    "ip": "string",
    "status": "string",  # routed | unrouted | failed
    "asn": "Int64",
    "as_name": "string",
    "prefix": "string",
    "country_code": "string",
    "registry": "string",
    "allocated": "string",
    "origins": "string",  # JSON list of every origin (several for multi-origin prefixes)
    "error": "string",
}
CYMRU_ROUTED, CYMRU_UNROUTED, CYMRU_FAILED = "routed", "unrouted", "failed"


def with_day(frame: pd.DataFrame, day: str) -> pd.DataFrame:
    """`frame` with a leading `day` column: the rows of one day of a (possibly multi-day) asset output."""
    return pd.concat([pd.DataFrame({DAY_COLUMN: pd.array([day] * len(frame), dtype="string")}), frame], axis=1)


def for_days(per_ip: pd.DataFrame, days_of_ips: pd.DataFrame) -> pd.DataFrame:
    """The answers of a pass over distinct IPs, repeated for each (day, ip) of `days_of_ips`: a range run
    asks once per IP, and each day still gets its own rows."""
    pairs = days_of_ips[[DAY_COLUMN, "ip"]]
    return pairs.merge(per_ip, on="ip", how="inner", validate="many_to_one").reset_index(drop=True)


def split_days(frame: pd.DataFrame, days: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The rows of each of `days` in a per-day frame (a range run's output holds several), split in one
    pass: comparing the day column once per day costs a range run ~30x more. A day without rows gets an
    empty frame of the same columns."""
    parts = {str(day): part.reset_index(drop=True) for day, part in frame.groupby(DAY_COLUMN, sort=False)}
    return {day: parts.get(day, frame.iloc[0:0]) for day in days}


def distinct_ips(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per IP of a per-day frame, without its `day` column (the answers are the same every day)."""
    per_ip = frame.drop(columns=[DAY_COLUMN]) if DAY_COLUMN in frame.columns else frame
    return per_ip.drop_duplicates("ip").reset_index(drop=True)


def typed_frame(rows: Iterable[Mapping[str, Any]], columns: Mapping[str, str]) -> pd.DataFrame:
    """A frame of exactly `columns` (name -> dtype) from `rows`; a key a row lacks is a missing value.

    Built a column at a time: `from_records` then `astype` costs 2-4x more, which adds up over the small
    tables made for every day of a range run."""
    rows = rows if isinstance(rows, list) else list(rows)
    columns_of_rows = {name: pd.array([row.get(name) for row in rows], dtype=dtype) for name, dtype in columns.items()}
    return pd.DataFrame(columns_of_rows)


def sources_frame(sources: Sequence[SourceIpActivity]) -> pd.DataFrame:
    return typed_frame(
        (
            {
                "ip": s.ip,
                "session_count": s.session_count,
                "event_count": s.event_count,
                "first_seen": s.first_seen,
                "last_seen": s.last_seen,
            }
            for s in sources
        ),
        SOURCE_COLUMNS,
    )


def sensor_activity_frame(by_sensor: Mapping[str, Sequence[SourceIpActivity]]) -> pd.DataFrame:
    """One row per sensor and IP: what each honeypot saw of the day."""
    rows = (
        {
            "sensor": sensor,
            "ip": s.ip,
            "session_count": s.session_count,
            "event_count": s.event_count,
            "first_seen": s.first_seen,
            "last_seen": s.last_seen,
        }
        for sensor, sources in by_sensor.items()
        for s in sources
    )
    return typed_frame(rows, SENSOR_ACTIVITY_COLUMNS)


def maxmind_frame(records: Sequence[MaxMindRecord], builds: MaxMindBuilds) -> pd.DataFrame:
    stamp = builds.as_dict()
    return typed_frame(({**r.as_dict(), **stamp} for r in records), MAXMIND_COLUMNS)


def _origin_dict(origin: CymruOrigin) -> dict:
    return {
        "asn": origin.asn,
        "prefix": origin.prefix,
        "country_code": origin.country_code,
        "registry": origin.registry,
        "allocated": origin.allocated,
        "as_name": origin.as_name,
    }


def _answer_row(answer: CymruAnswer) -> dict:
    primary = answer.primary
    row = {"ip": answer.ip, "status": CYMRU_UNROUTED if answer.unrouted else CYMRU_ROUTED}
    row.update(_origin_dict(primary) if primary else {})
    row["origins"] = orjson.dumps([_origin_dict(o) for o in answer.origins]).decode()
    return row


def cymru_frame(result: BulkLookupResult) -> pd.DataFrame:
    rows = [_answer_row(a) for a in result.answers.values()]
    rows += [{"ip": ip, "status": CYMRU_FAILED, "error": reason} for ip, reason in result.failed.items()]
    return typed_frame(sorted(rows, key=lambda r: r["ip"]), CYMRU_COLUMNS)


def _clean(value: object) -> object:
    """pandas NA/NaN/NaT -> None and numpy scalars -> Python, so values are JSON-ready."""
    if value is None or (not isinstance(value, (list, dict, str)) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def python_values(column: pd.Series) -> list:
    """A column's values as plain Python objects (datetimes as `datetime`), None where missing.

    Converted a column at a time: per-cell conversion (`to_dict`, `itertuples`, `pd.isna`) takes seconds at
    100k rows, a whole column some milliseconds.
    """
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        missing = column.isna().to_numpy()
        values = column.dt.to_pydatetime()
        values[missing] = None
        return values.tolist()
    return column.to_numpy(dtype=object, na_value=None).tolist()


def records(frame: pd.DataFrame) -> list[dict]:
    """The rows of a frame as dicts of `python_values`."""
    names = list(frame.columns)
    columns = [python_values(frame[name]) for name in names]
    return [dict(zip(names, values, strict=False)) for values in zip(*columns, strict=False)]


def day_activity(sources: pd.DataFrame) -> list[DayActivity]:
    """The activity rows of one day's `sources` frame."""
    return _as_records(sources, SOURCE_COLUMNS, DayActivity)


def activity_by_day(sources: pd.DataFrame, days: Sequence[str]) -> dict[str, list[DayActivity]]:
    """The activity rows of each of `days` in a per-day `sources` frame."""
    return _by_day(sources, days, _as_records(sources, SOURCE_COLUMNS, DayActivity))


def sensor_activity_by_day(rows: pd.DataFrame, days: Sequence[str]) -> dict[str, list[SensorActivity]]:
    """The per-sensor activity rows of each of `days` in a per-day sensor frame."""
    return _by_day(rows, days, _as_records(rows, SENSOR_ACTIVITY_COLUMNS, SensorActivity))


_Record = TypeVar("_Record", DayActivity, SensorActivity)


@cyclic_gc_paused()  # 100k rows of new objects: see core.gc_pause
def _as_records(frame: pd.DataFrame, columns: Mapping[str, str], record: type[_Record]) -> list[_Record]:
    """`record(*row)` of each row's `columns`, in order. The frame is converted once, a column at a time
    (`python_values`): one conversion per day of a range costs ~20 ms a day whatever the day's size."""
    return [record(*row) for row in zip(*(python_values(frame[name]) for name in columns), strict=True)]


def _by_day(frame: pd.DataFrame, days: Sequence[str], rows: list[_Record]) -> dict[str, list[_Record]]:
    """`rows` (one per row of `frame`) by the frame's day column; a row of a day not in `days` is an error."""
    by_day: dict[str, list[_Record]] = {day: [] for day in days}
    for day, row in zip(python_values(frame[DAY_COLUMN]), rows, strict=True):
        if day not in by_day:
            raise ValueError(f"a row of {day!r} in a frame of the days {list(days)}")
        by_day[day].append(row)
    return by_day


# Both take a row of `records`: its values are plain Python already.
def maxmind_enrichment(row: dict) -> dict:
    return {column: row[column] for column in MAXMIND_COLUMNS if column != "ip"}


def cymru_enrichment(row: dict) -> dict | None:
    """The inventory's `enrichment.cymru` object, or None for a failed lookup (keep what is stored)."""
    if row["status"] == CYMRU_FAILED:
        return None
    enrichment = {column: row[column] for column in CYMRU_COLUMNS if column not in ("ip", "origins", "error")}
    enrichment["origins"] = orjson.loads(row["origins"])
    return enrichment


@cyclic_gc_paused()
def source_updates(
    maxmind: pd.DataFrame,
    cymru: pd.DataFrame,
    greynoise: pd.DataFrame | None = None,
    *,
    maxmind_fresh: Collection[str] = frozenset(),
) -> list[SourceUpdate]:
    """The new answers per IP: MaxMind unless its stored answer is still fresh, Cymru and GreyNoise where
    they answered. IPs with nothing new get no update."""
    cymru_by_ip = {row["ip"]: cymru_enrichment(row) for row in records(cymru)}
    greynoise_rows = [] if greynoise is None else records(greynoise)
    greynoise_by_ip = {row["ip"]: greynoise_enrichment(row) for row in greynoise_rows}
    updates = []
    for row in records(maxmind):
        ip = row["ip"]
        update = SourceUpdate(
            ip=ip,
            maxmind=None if ip in maxmind_fresh else maxmind_enrichment(row),
            cymru=cymru_by_ip.get(ip),
            greynoise=greynoise_by_ip.get(ip),
        )
        if update != SourceUpdate(ip):
            updates.append(update)
    return updates


def lookup_failures(cymru: pd.DataFrame, greynoise: pd.DataFrame | None = None) -> list[LookupFailure]:
    """The retry list entries of this run: every failed Cymru row and every failed GreyNoise row."""
    failed = [LookupFailure(row["ip"], "cymru", _error_text(row)) for row in _rows(cymru, CYMRU_FAILED)]
    if greynoise is not None:
        failed += [LookupFailure(row["ip"], "greynoise", _error_text(row)) for row in _rows(greynoise, FAILED)]
    return failed


def _rows(frame: pd.DataFrame, status: str) -> list[dict]:
    return records(frame.loc[frame["status"] == status])


def _error_text(row: dict) -> str:
    error = row.get("error")
    return str(error) if error else "lookup failed"


GREYNOISE_COLUMNS = {
    "ip": "string",
    "status": "string",  # observed | not_observed | fresh | skipped | failed | disabled
    "noise": "boolean",
    "riot": "boolean",
    "classification": "string",
    "name": "string",
    "link": "string",
    "last_seen": "string",
    "message": "string",
    "error": "string",  # why a skipped or failed IP has no answer
}
_ANSWER_FIELDS = ("observed", "noise", "riot", "classification", "name", "link", "last_seen", "message")


def greynoise_frame(
    ips: Iterable[str], result: GreyNoiseLookupResult | None, *, fresh: Collection[str] = frozenset()
) -> pd.DataFrame:
    """One row per IP of the day. `result` None means GreyNoise is disabled: every row is "disabled"."""
    rows = []
    for ip in dict.fromkeys(ips):
        row: dict[str, Any] = {"ip": ip}
        if result is None:
            row["status"] = DISABLED
        elif ip in fresh:
            row["status"] = FRESH
        elif (answer := result.answers.get(ip)) is not None:
            row.update(answer.as_dict(), status=OBSERVED if answer.observed else NOT_OBSERVED)
        elif ip in result.skipped:
            row.update(status=SKIPPED, error=result.skipped[ip])
        else:  # an IP nobody accounted for is kept for the retry list, never dropped
            row.update(status=FAILED, error=result.failed.get(ip, "not looked up"))
        rows.append(row)
    return typed_frame(rows, GREYNOISE_COLUMNS)


def greynoise_enrichment(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """A frame row (of `frames.records`: plain Python values, None where missing) as the inventory's
    `enrichment["greynoise"]`; None when there is no new answer to store."""
    if row["status"] not in (OBSERVED, NOT_OBSERVED):
        return None
    return {"observed": row["status"] == OBSERVED} | {name: row.get(name) for name in _ANSWER_FIELDS[1:]}


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    counts = frame["status"].value_counts()
    return {status: int(counts.get(status, 0)) for status in STATUSES}


def frame_builds(maxmind: pd.DataFrame) -> MaxMindBuilds | None:
    """The database builds a `maxmind_results` frame was looked up with (None for an empty frame)."""
    if maxmind.empty:
        return None
    city, asn = maxmind[CITY_BUILD_KEY].iloc[0], maxmind[ASN_BUILD_KEY].iloc[0]
    return MaxMindBuilds(int(city), None if pd.isna(asn) else int(asn))


def markdown_table(frame: pd.DataFrame, limit: int = 10) -> str:
    """A small markdown preview; cell text is escaped because it can be attacker- or peer-controlled."""
    head = frame.head(limit)

    def cell(value: object) -> str:
        value = _clean(value)
        text = "" if value is None else str(value)
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")[:80]

    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in head.itertuples(index=False)]
    if len(frame) > limit:
        lines.append(f"\n… {len(frame) - limit} more rows")
    return "\n".join(lines)
