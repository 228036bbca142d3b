"""Builds the code location's Definitions for a registry and a set of resources.

`sis_pipeline.definitions` calls this with the registry and resources from the environment; tests call it
with their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import Definitions, StaticPartitionsDefinition, define_asset_job, in_process_executor

from sis_pipeline.assets import ALL_ASSETS, build_import_assets
from sis_pipeline.registry import Registry
from sis_pipeline.schedules import build_schedule
from sis_pipeline.sensors import build_upload_sensor

JOB_NAME = "sis_import_job"


def build_definitions(registry: Registry, resources: Mapping[str, Any]) -> Definitions:
    """The whole code location for one registry; tests build their own with their own resources."""
    sis_import = build_import_assets(StaticPartitionsDefinition(list(registry)))
    job = define_asset_job(
        JOB_NAME,
        selection=list(ALL_ASSETS),
        description="Import one client's latest upload: read, validate, map, plan, apply.",
        # One step per run: the in-process executor avoids a subprocess per run (docs/ARCHITECTURE.md).
        executor_def=in_process_executor,
    )
    return Definitions(
        assets=[sis_import],
        jobs=[job],
        sensors=[build_upload_sensor(job)],
        schedules=[
            build_schedule("sis_weekly_schedule", "weekly", job),
            build_schedule("sis_daily_schedule", "daily", job),
        ],
        resources=dict(resources),
    )
