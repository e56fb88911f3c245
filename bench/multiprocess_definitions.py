"""The project's assets, checks and resources under Dagster's multiprocess executor (a process per step),
so the benchmark can compare it with the in-process executor the project's Definitions use."""

from dagster import Definitions, multiprocess_executor

from enrichment_pipeline import (
    definitions as project,  # a module: one Definitions object at this scope
)

defs = Definitions(
    assets=project.defs.assets,
    asset_checks=project.defs.asset_checks,
    resources=project.defs.resources,
    executor=multiprocess_executor,
)
