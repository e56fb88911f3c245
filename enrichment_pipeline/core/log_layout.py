"""Where a day's rotated Cowrie logs are under COWRIE_LOG_DIR, in either layout, detected per directory:
flat (`<dir>/cowrie.json.YYYY-MM-DD[.gz]`, the sensor named by each event's own `sensor` field) and one
subdirectory per sensor (`<dir>/<sensor>/cowrie.json.YYYY-MM-DD[.gz]`, the sensor named by the directory),
at most one level deep. Owns the file-naming rule and which names may be sensors."""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

LOG_DIR_ENV_VAR = "COWRIE_LOG_DIR"
# Only Cowrie's rotation names; the live `cowrie.json`, temp files and anything else never match.
ROTATED_NAME = re.compile(r"cowrie\.json\.(\d{4}-\d{2}-\d{2})(\.gz)?", re.ASCII)
# A sensor directory's name becomes data (a table column, metadata): short, visible ASCII, never hidden.
SENSOR_DIRECTORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
MAX_SENSOR_CHARS = 64
DEFAULT_SENSOR = "default"  # the flat layout's events that name no sensor
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class CowrieLogError(Exception):
    """The whole day's log is unreadable."""


class CowrieLogNotFound(CowrieLogError):
    """No log file exists for the requested day."""


@dataclass(frozen=True)
class SensorLog:
    """One rotated log of a day: its file, and its sensor (None in the flat layout: the events say)."""

    path: Path
    sensor: str | None


@dataclass
class DayFiles:
    logs: list[SensorLog]
    missing_sensors: list[str]  # sensor directories without this day: reported, not an error
    rejected_names: list[str] = field(default_factory=list)  # entries never read (hostile or odd names)


def sensor_name(value: object) -> str:
    """A sensor named by an event's `sensor` field, as stored: text, unprintables replaced, bounded."""
    if not isinstance(value, str) or not value.strip():
        return DEFAULT_SENSOR
    return _UNPRINTABLE.sub("?", value.strip())[:MAX_SENSOR_CHARS]


def rotated_day(name: str) -> tuple[datetime.date, bool] | None:
    """(day, gzipped) for a rotated log's file name; None for any other name or an impossible date."""
    match = ROTATED_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        return datetime.date.fromisoformat(match[1]), match[2] is not None
    except ValueError:  # e.g. 2018-02-30
        return None


def sensor_directories(log_dir: str | os.PathLike[str]) -> tuple[list[tuple[str, Path]], list[str]]:
    """The sensor subdirectories of `log_dir` (name, path), sorted, and the entries refused as sensors.

    A sensor is a directory with a plain name (see SENSOR_DIRECTORY: no dot first, so no hidden directory,
    no `..`); a symlink counts only if it resolves to a directory inside `log_dir`.
    """
    root = Path(log_dir).resolve()
    sensors: list[tuple[str, Path]] = []
    rejected: list[str] = []
    with os.scandir(root) as entries:
        for entry in entries:
            try:
                is_directory = entry.is_dir()
                outside = entry.is_symlink() and not _inside(Path(entry.path).resolve(strict=True), root)
            except (OSError, RuntimeError):  # a symlink loop or a dangling link: never a sensor
                rejected.append(_shown(entry.name))
                continue
            if rotated_day(entry.name) is not None or not is_directory:
                continue  # a flat-layout log, or a file
            if not SENSOR_DIRECTORY.fullmatch(entry.name):
                rejected.append(_shown(entry.name))
                continue
            path = Path(entry.path)
            if outside:
                rejected.append(_shown(entry.name))
                continue
            sensors.append((entry.name, path))
    return sorted(sensors), sorted(rejected)


def day_log_path(log_dir: str | os.PathLike[str], day: datetime.date) -> Path:
    """The flat layout's log of `day`: the plain file Cowrie wrote if present, else its gzipped copy."""
    found = _day_file(Path(log_dir), day)
    if found is None:
        plain = Path(log_dir) / f"cowrie.json.{day.isoformat()}"
        raise CowrieLogNotFound(
            f"no Cowrie log for {day.isoformat()}: neither {plain} nor {plain}.gz exists"
            f" (the directory comes from the {LOG_DIR_ENV_VAR} environment variable)"
        )
    return found


def day_files(log_dir: str | os.PathLike[str], day: datetime.date) -> DayFiles:
    """Every rotated log of `day`: the flat one and one per sensor directory that has it (the plain file
    when both it and `.gz` exist). Raises CowrieLogNotFound, naming the directory, when none has the day."""
    root = Path(log_dir)
    logs: list[SensorLog] = []
    flat = _day_file(root, day)
    if flat is not None:
        logs.append(SensorLog(flat, None))
    sensors, rejected = sensor_directories(root)
    missing: list[str] = []
    for name, directory in sensors:
        found = _day_file(directory, day)
        if found is None:
            missing.append(name)
        elif _inside(found.resolve(), root.resolve()):
            logs.append(SensorLog(found, name))
        else:  # a symlinked log file pointing out of COWRIE_LOG_DIR is never read
            rejected.append(f"{name}/{found.name}")
    if not logs:
        plain = root / f"cowrie.json.{day.isoformat()}"
        raise CowrieLogNotFound(
            f"no Cowrie log for {day.isoformat()}: neither {plain} nor {plain}.gz exists, nor the same name in"
            f" any of the {len(sensors)} sensor directories of {root} (the directory comes from the"
            f" {LOG_DIR_ENV_VAR} environment variable)"
        )
    return DayFiles(logs, missing, rejected)


def _day_file(directory: Path, day: datetime.date) -> Path | None:
    plain = directory / f"cowrie.json.{day.isoformat()}"
    for candidate in (plain, plain.with_name(plain.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _shown(name: str) -> str:
    """A refused name as it may appear in metadata and logs: escaped, bounded."""
    return _UNPRINTABLE.sub("?", name)[:MAX_SENSOR_CHARS] + ("…" if len(name) > MAX_SENSOR_CHARS else "")
