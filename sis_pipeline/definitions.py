"""The code location: assembles assets, checks, jobs, the sensor, the schedules and resources — nothing else.

Partitions are static, one per client in the registry: the registry is reviewed configuration that ships
with the code location, so the partition set changes exactly when the registry does (reload the code
location after editing clients.yaml). See docs/ARCHITECTURE.md for why not dynamic partitions.
"""

from sis_pipeline import settings
from sis_pipeline.location import build_definitions
from sis_pipeline.resources import default_resources, registry_at

registry = registry_at(settings.clients_file())  # the same parse the registry resource then reuses
defs = build_definitions(registry, default_resources())
