"""The IO manager of the per-IP DataFrames: one Parquet file per asset and day (see `core.day_files`), so a
range run stores each day's rows and a downstream step loads a whole range as one frame."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from dagster import ConfigurableIOManager, DagsterInstance, InputContext, MetadataValue, OutputContext
from pydantic import Field

from enrichment_pipeline.core.day_files import read_days, write_days


class DailyParquetIOManager(ConfigurableIOManager):
    """`<base_dir>/<asset key path>/<YYYY-MM-DD>.parquet`; read one in a notebook with `pandas.read_parquet`."""

    base_dir: str = Field(
        default="",
        description="Directory of the Parquet files (ENRICHMENT_STORAGE_DIR); empty: `parquet/` under the "
        "Dagster instance's storage directory.",
    )

    def handle_output(self, context: OutputContext, obj: pd.DataFrame | None) -> None:
        if obj is None:  # an asset without a stored value (e.g. merged_inventory writes to the database)
            return
        directory = self._directory(context, context.step_context.instance)
        write_days(directory, obj, context.asset_partition_keys)
        context.add_output_metadata({"parquet_dir": MetadataValue.path(str(directory))})

    def load_input(self, context: InputContext) -> pd.DataFrame:
        return read_days(self._directory(context, context.instance), context.asset_partition_keys)

    def _directory(self, context: OutputContext | InputContext, instance: DagsterInstance) -> Path:
        root = Path(self.base_dir) if self.base_dir else Path(instance.storage_directory()) / "parquet"
        return root.joinpath(*context.asset_key.path)
