"""Several honeypots, one inventory: three sensor directories made from the real sample days (one shifted by a
day), materialized through the real graph; per-sensor activity sums to the daily activity, an IP seen by two
sensors is one inventory row, the flat layout gives today's result, and a late sensor file converges."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from dagster import DagsterInstance, materialize
from sqlalchemy import func, select

from enrichment_pipeline.assets import enrichment_assets
from enrichment_pipeline.core.inventory import DAILY_ACTIVITY, SENSOR_ACTIVITY, fetch_inventory, make_engine
from enrichment_pipeline_tests.support.expected_ips import distinct_valid_ips
from enrichment_pipeline_tests.support.graph_run import graph_resources

STAMPS = ("enrichment_updated_at", "maxmind_updated_at", "cymru_updated_at", "greynoise_updated_at")


def resources(log_dir: Path, db_url: str, cymru_port: int, storage: Path) -> dict:
    return graph_resources(log_dir, db_url, cymru_port, storage, batch_size=50)


def run(day: str, log_dir: Path, db_url: str, cymru_port: int, storage: Path):
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            enrichment_assets,
            partition_key=day,
            instance=instance,
            resources=resources(log_dir, db_url, cymru_port, storage),
        )
    assert result.success
    return result


def shifted(source: Path, target: Path, days: int) -> None:
    """A copy of a real day's log as if it had happened `days` days later (its events' dates moved)."""
    lines = []
    for line in source.read_text().splitlines():
        record = json.loads(line)
        stamp = record.get("timestamp", "")
        if isinstance(stamp, str) and len(stamp) >= 10:
            year, month, day = (int(part) for part in stamp[:10].split("-"))
            record["timestamp"] = f"{year:04d}-{month:02d}-{day + days:02d}{stamp[10:]}"
        lines.append(json.dumps(record))
    target.write_text("\n".join(lines) + "\n")


def sensors_layout(root: Path, sample_log_dir: Path) -> Path:
    """alpha and beta hold 05-07 and 05-08; gamma holds 05-07 shifted to 05-08 (so 05-08 has three sensors)."""
    for sensor in ("alpha", "beta", "gamma"):
        (root / sensor).mkdir(parents=True)
    for day in ("2018-05-07", "2018-05-08"):
        for sensor in ("alpha", "beta"):
            shutil.copy(sample_log_dir / f"cowrie.json.{day}", root / sensor)
    shifted(sample_log_dir / "cowrie.json.2018-05-07", root / "gamma" / "cowrie.json.2018-05-08", 1)
    return root


def table_rows(db_url: str, table) -> list[tuple]:
    with make_engine(db_url).connect() as conn:
        return sorted(tuple(row) for row in conn.execute(select(table)))


def test_three_sensors_make_one_inventory_whose_activity_sums_over_sensors(tmp_path, sample_log_dir, standin):
    log_dir = sensors_layout(tmp_path / "logs", sample_log_dir)
    db_url = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    result = run("2018-05-08", log_dir, db_url, standin.address[1], tmp_path / "storage")

    day_ips = distinct_valid_ips(sample_log_dir / "cowrie.json.2018-05-08") | distinct_valid_ips(
        sample_log_dir / "cowrie.json.2018-05-07"
    )
    rows = {row["ip_address"]: row for row in fetch_inventory(make_engine(db_url))}
    assert set(rows) == day_ips  # an IP seen by two or three sensors is one row
    engine = make_engine(db_url)
    with engine.connect() as conn:
        per_sensor = dict(
            conn.execute(
                select(SENSOR_ACTIVITY.c.ip_address, func.sum(SENSOR_ACTIVITY.c.session_count)).group_by(
                    SENSOR_ACTIVITY.c.ip_address
                )
            ).all()
        )
        daily = dict(conn.execute(select(DAILY_ACTIVITY.c.ip_address, DAILY_ACTIVITY.c.session_count)).all())
        sensors = set(conn.scalars(select(SENSOR_ACTIVITY.c.sensor).distinct()))
    assert sensors == {"alpha", "beta", "gamma"}
    assert per_sensor == daily  # no double counts, nothing lost
    assert all(rows[ip]["session_count"] == daily[ip] for ip in rows)
    (ingest,) = [
        m
        for m in result.asset_materializations_for_node("cowrie_logs_ingest")
        if m.asset_key.path == ["cowrie_source_ips"]
    ]
    assert ingest.metadata["sensors_read"].value == "alpha, beta, gamma"
    assert ingest.metadata["sensors_missing"].value == ""

    # The report's per-sensor table: alpha and beta hold the same two days, so only gamma has IPs of its own
    # (those of 05-07 that 05-08 lacks); every sensor's IPs and sessions match ip_sensor_activity.
    (report,) = result.asset_materializations_for_node("daily_report")
    assert report.metadata["sensors"].value == 3
    table = report.metadata["per_sensor"].value
    only_gamma = distinct_valid_ips(sample_log_dir / "cowrie.json.2018-05-07") - distinct_valid_ips(
        sample_log_dir / "cowrie.json.2018-05-08"
    )
    gamma_line = next(line for line in table.splitlines() if line.startswith("| gamma |"))
    assert gamma_line.split("|")[4].strip() == str(len(only_gamma))
    assert next(line for line in table.splitlines() if line.startswith("| alpha |")).split("|")[4].strip() == "0"


def test_a_sensor_without_the_day_is_reported_and_the_flat_layout_gives_todays_result(
    tmp_path, sample_log_dir, standin
):
    log_dir = sensors_layout(tmp_path / "logs", sample_log_dir)
    result = run("2018-05-07", log_dir, f"sqlite:///{tmp_path / 'a.sqlite'}", standin.address[1], tmp_path / "s1")
    (ingest,) = [
        m
        for m in result.asset_materializations_for_node("cowrie_logs_ingest")
        if m.asset_key.path == ["cowrie_source_ips"]
    ]
    assert ingest.metadata["sensors_missing"].value == "gamma"

    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(sample_log_dir / "cowrie.json.2018-05-07", flat)
    flat_url = f"sqlite:///{tmp_path / 'flat.sqlite'}"
    run("2018-05-07", flat, flat_url, standin.address[1], tmp_path / "s2")
    rows = fetch_inventory(make_engine(flat_url))
    assert {row["ip_address"] for row in rows} == distinct_valid_ips(sample_log_dir / "cowrie.json.2018-05-07")
    # The flat layout's sensor is the events' own `sensor` field (the sample days' honeypot id).
    assert {row[2] for row in table_rows(flat_url, SENSOR_ACTIVITY)} == {"920497a79896"}


def test_a_late_sensor_file_rerun_converges_to_the_all_at_once_result(tmp_path, sample_log_dir, standin):
    all_at_once = sensors_layout(tmp_path / "all", sample_log_dir)
    all_url = f"sqlite:///{tmp_path / 'all.sqlite'}"
    run("2018-05-08", all_at_once, all_url, standin.address[1], tmp_path / "s1")

    late = sensors_layout(tmp_path / "late", sample_log_dir)
    gamma_file = late / "gamma" / "cowrie.json.2018-05-08"
    held_back = gamma_file.read_bytes()
    gamma_file.unlink()
    late_url = f"sqlite:///{tmp_path / 'late.sqlite'}"
    run("2018-05-08", late, late_url, standin.address[1], tmp_path / "s2")
    gamma_file.write_bytes(held_back)  # gamma's file arrives after the day was enriched
    run("2018-05-08", late, late_url, standin.address[1], tmp_path / "s2")

    def without_stamps(url: str) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in STAMPS} for row in fetch_inventory(make_engine(url))]

    assert without_stamps(late_url) == without_stamps(all_url)
    assert table_rows(late_url, SENSOR_ACTIVITY) == table_rows(all_url, SENSOR_ACTIVITY)
    assert table_rows(late_url, DAILY_ACTIVITY) == table_rows(all_url, DAILY_ACTIVITY)
